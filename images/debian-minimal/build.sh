#!/bin/bash
# Build the vmplane guest image "debian-minimal" from Debian packages only.
#
#   images/debian-minimal/build.sh OUTDIR
#
# Writes OUTDIR/{vmlinuz,initrd.img,rootfs.ext4,manifest.json}.  Needs root
# (it installs its own apt dependencies and the root filesystem must hold
# root-owned files).  No loop mounts: packages are unpacked with dpkg-deb -x,
# the initramfs is packed with cpio and the root filesystem is written with
# mke2fs -d.  Skips the build when OUTDIR/manifest.json already describes
# this version of the image (same VERSION and same source hash).
#
# Environment:
#   VMPLANE_DEB_CACHE  where downloaded .deb files are kept
#                      (default /var/cache/vmplane/debs)
#   VMPLANE_ROOTFS_SIZE  size of rootfs.ext4 (default 256M)
#   VMPLANE_FORCE=1    rebuild even when the manifest matches
set -euo pipefail

VERSION=5
NAME=debian-minimal
CMDLINE="console=ttyS0 root=/dev/vda rw quiet"
ROOTFS_SIZE=${VMPLANE_ROOTFS_SIZE:-256M}
# modules loaded at boot (dependencies are added, in load order, from
# modules.dep): virtio transport + disks + net + serial ports + rng,
# the ACPI power button and evdev (for acpid), and the filesystems a
# NoCloud seed may use (vfat, iso9660).  ext4, pciehp and acpiphp are
# built into Debian's cloud kernel.
MODULES="virtio_pci virtio_blk virtio_net virtio_console virtio_rng button evdev vfat isofs nls_cp437 nls_ascii nls_utf8"
ROOT_PKGS="busybox-static dropbear-bin e2fsprogs"
KERNEL_META=linux-image-cloud-amd64

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Hash of everything that goes into the image, so edits to the guest
# scripts invalidate an existing build even without a VERSION bump.
SRC_HASH=$(cd "$HERE" && { echo "$VERSION $CMDLINE $MODULES $ROOT_PKGS $ROOTFS_SIZE"; cat build.sh; find guest -type f | LC_ALL=C sort | while read -r f; do echo "$f"; cat "$f"; done; } | sha256sum | cut -c1-16)

# one build per OUTDIR at a time; the loser of a race re-checks and skips
if : 2>/dev/null 9>>"$OUT/.build.lock"; then
	exec 9>>"$OUT/.build.lock"
	flock 9
fi

if [ -z "${VMPLANE_FORCE:-}" ] && [ -f "$OUT/manifest.json" ] &&
	grep -q "\"version\": *$VERSION," "$OUT/manifest.json" &&
	grep -q "\"source_hash\": *\"$SRC_HASH\"" "$OUT/manifest.json" &&
	[ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ -s "$OUT/rootfs.ext4" ]; then
	log "$OUT is up to date ($NAME version $VERSION)"
	exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (installs apt packages, creates root-owned files)"

# ------------------------------------------------------------ dependencies
APT_UPDATED=0
apt_update_once() {
	if [ $APT_UPDATED -eq 0 ]; then
		log "apt-get update"
		apt-get update -qq >&2 || true
		APT_UPDATED=1
	fi
}
ensure_tools() {
	local missing=() pair cmd pkg
	for pair in dpkg-deb:dpkg mke2fs:e2fsprogs cpio:cpio depmod:kmod modprobe:kmod gzip:gzip xz:xz-utils zstd:zstd sha256sum:coreutils; do
		cmd=${pair%%:*}; pkg=${pair#*:}
		command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
		apt_update_once
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	fi
}
ensure_tools

CACHE=${VMPLANE_DEB_CACHE:-/var/cache/vmplane/debs}
mkdir -p "$CACHE"
APT_OPTS=(-o APT::Sandbox::User=root -qq)

# candidates PKG... -> "pkg version" lines (one apt-cache call: it is slow)
candidates() {
	apt-cache policy "$@" 2>/dev/null | awk '/^[^ ].*:$/ { p = substr($0, 1, length($0) - 1); sub(/:amd64$/, "", p) }
		/^  Candidate:/ && $2 != "(none)" { print p, $2 }'
}
# fetch PKG... -> downloads into $CACHE (apt-get download skips files that
# are already there with the right hash); prints the .deb paths
fetch() {
	local p v f cands
	cands=$(candidates "$@")
	if [ "$(echo "$cands" | grep -c .)" -ne $# ]; then
		apt_update_once
		cands=$(candidates "$@")
	fi
	if ! (cd "$CACHE" && flock .lock apt-get download "${APT_OPTS[@]}" "$@" >&2); then
		apt_update_once
		cands=$(candidates "$@")
		(cd "$CACHE" && flock .lock apt-get download "${APT_OPTS[@]}" "$@" >&2) || die "apt-get download $* failed"
	fi
	for p in "$@"; do
		v=$(echo "$cands" | awk -v p="$p" '$1 == p { print $2; exit }')
		v=${v//:/%3a}
		f=$(ls "$CACHE/${p}_${v}_"*.deb 2>/dev/null | head -n 1 || true)
		[ -n "$v" ] && [ -n "$f" ] || die "downloaded $p but cannot find ${p}_${v}_*.deb in $CACHE"
		echo "$f"
	done
}

WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
KROOT=$WORK/kernel POOL=$WORK/pool INITRD=$WORK/initrd ROOT=$WORK/rootfs
mkdir -p "$KROOT" "$POOL" "$INITRD" "$ROOT"

# ------------------------------------------------------------ packages
log "fetching $KERNEL_META"
meta_deb=$(fetch "$KERNEL_META")
kpkg=$(dpkg-deb -f "$meta_deb" Depends | tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep '^linux-image-' | head -n 1)
[ -n "$kpkg" ] || die "cannot find the kernel package that $KERNEL_META depends on"
log "fetching $kpkg"
kdeb=$(fetch "$kpkg")
dpkg-deb -x "$kdeb" "$KROOT"

# the userland packages and every package they (recursively) depend on
deps_of() {
	# shellcheck disable=SC2086
	apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances $ROOT_PKGS 2>/dev/null |
		awk -v roots=" $ROOT_PKGS " '/^[a-z0-9]/ && index(roots, " " $1 " ") == 0' | sort -u | tr '\n' ' '
}
dep_pkgs=$(deps_of)
[ -n "$dep_pkgs" ] || { apt_update_once; dep_pkgs=$(deps_of); }
log "fetching $ROOT_PKGS $dep_pkgs"
# shellcheck disable=SC2086
for deb in $(fetch $ROOT_PKGS $dep_pkgs); do
	dpkg-deb -x "$deb" "$POOL"
done

# ------------------------------------------------------------ kernel modules
KVER=$(ls "$KROOT/lib/modules" | head -n 1)
[ -n "$KVER" ] && [ -f "$KROOT/boot/vmlinuz-$KVER" ] || die "no kernel in $kdeb"
depmod -b "$KROOT" "$KVER"
mod_list=$WORK/modules.list
: >"$mod_list"
for m in $MODULES; do
	if ! deps=$(modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" 2>/dev/null); then
		log "warning: module $m not found in $KVER, skipped"
		continue
	fi
	# "insmod /path/x.ko" lines in load order; "builtin x" lines are skipped
	echo "$deps" | awk '$1 == "insmod" { print $2 }' | sed "s|^$KROOT/lib/modules/$KVER/||" >>"$mod_list"
done
# dedupe, keep first occurrence (load order), store uncompressed .ko names
awk '!seen[$0]++' "$mod_list" >"$mod_list.u"
: >"$WORK/vmplane-modules"
while read -r rel; do
	case "$rel" in
	*.ko) dst=$rel ;;
	*.ko.xz) dst=${rel%.xz} ;;
	*.ko.zst) dst=${rel%.zst} ;;
	*.ko.gz) dst=${rel%.gz} ;;
	*) die "unexpected module file $rel" ;;
	esac
	for tree in "$INITRD" "$ROOT"; do
		mkdir -p "$tree/lib/modules/$KVER/$(dirname "$dst")"
		case "$rel" in
		*.xz) xz -dc "$KROOT/lib/modules/$KVER/$rel" >"$tree/lib/modules/$KVER/$dst" ;;
		*.zst) zstd -qdc "$KROOT/lib/modules/$KVER/$rel" >"$tree/lib/modules/$KVER/$dst" ;;
		*.gz) gzip -dc "$KROOT/lib/modules/$KVER/$rel" >"$tree/lib/modules/$KVER/$dst" ;;
		*) cp "$KROOT/lib/modules/$KVER/$rel" "$tree/lib/modules/$KVER/$dst" ;;
		esac
	done
	echo "$dst" >>"$WORK/vmplane-modules"
done <"$mod_list.u"
grep -q 'virtio_blk.ko$' "$WORK/vmplane-modules" || die "virtio_blk module missing"

# ------------------------------------------------------------ busybox
BUSYBOX=$POOL/bin/busybox
[ -x "$BUSYBOX" ] || BUSYBOX=$POOL/usr/bin/busybox
[ -x "$BUSYBOX" ] || die "busybox not found in busybox-static"
install_busybox() { # TREE
	local t=$1 a
	mkdir -p "$t/bin" "$t/sbin" "$t/usr/bin" "$t/usr/sbin"
	cp "$BUSYBOX" "$t/bin/busybox"
	"$BUSYBOX" --list-full | while read -r a; do
		[ "$a" = bin/busybox ] && continue
		[ "$a" = linuxrc ] && continue
		mkdir -p "$t/$(dirname "$a")"
		[ -e "$t/$a" ] || ln -s /bin/busybox "$t/$a"
	done
}

# ------------------------------------------------------------ initrd
log "building initrd.img"
install_busybox "$INITRD"
mkdir -p "$INITRD/dev" "$INITRD/proc" "$INITRD/sys" "$INITRD/newroot" "$INITRD/etc" "$INITRD/run" "$INITRD/tmp"
mknod -m 600 "$INITRD/dev/console" c 5 1
mknod -m 666 "$INITRD/dev/null" c 1 3
install -m 755 "$HERE/guest/initrd/init" "$INITRD/init"
cp "$WORK/vmplane-modules" "$INITRD/etc/vmplane-modules"
find "$INITRD" -exec touch -h -d @0 {} +
cpio_opts=(-o -H newc -R 0:0 --quiet)
cpio --help 2>/dev/null | grep -q -- --reproducible && cpio_opts+=(--reproducible)
(cd "$INITRD" && find . | LC_ALL=C sort | cpio "${cpio_opts[@]}") | gzip -9n >"$WORK/initrd.img"

# ------------------------------------------------------------ rootfs
log "building rootfs.ext4"
for d in bin sbin usr/bin usr/sbin usr/lib lib etc dev proc sys run tmp root mnt home media srv opt \
	var/lib/cloud var/log var/tmp var/spool etc/dropbear; do
	mkdir -p "$ROOT/$d"
done
ln -s /run "$ROOT/var/run"
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"
chmod 700 "$ROOT/root" "$ROOT/var/lib/cloud"
install_busybox "$ROOT"

# dynamically linked programs from the packages + their libraries
LDSO=$(find "$POOL" -name 'ld-linux-x86-64.so.2' -type f | head -n 1)
[ -n "$LDSO" ] || die "ld-linux-x86-64.so.2 not found in libc6"
LIBPATH=$(find "$POOL" -type d \( -path '*/lib/x86_64-linux-gnu' -o -path '*/usr/lib/x86_64-linux-gnu' \) | tr '\n' ':')
install_bin() { # SRC (relative to pool) DST (absolute in the rootfs)
	local src=$POOL/$1 dst=$ROOT$2 lib path
	[ -f "$src" ] || die "$1 not found in the unpacked packages"
	mkdir -p "$(dirname "$dst")"
	rm -f "$dst"
	cp "$src" "$dst"
	# ldd, but with the unpacked libc6's loader and library path
	"$LDSO" --library-path "$LIBPATH" --list "$src" >"$WORK/ldd.out" 2>&1 || die "cannot list libraries of $1: $(cat "$WORK/ldd.out")"
	if grep -q 'not found' "$WORK/ldd.out"; then die "missing libraries for $1: $(grep 'not found' "$WORK/ldd.out")"; fi
	awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' "$WORK/ldd.out" | while read -r lib path; do
		case "$lib" in */*) continue ;; esac
		case "$path" in "$POOL"/*) ;; *) die "$1: $lib resolved outside the packages: $path" ;; esac
		mkdir -p "$ROOT/lib/x86_64-linux-gnu"
		[ -e "$ROOT/lib/x86_64-linux-gnu/$lib" ] || cp -L "$path" "$ROOT/lib/x86_64-linux-gnu/$lib"
	done
}
install_bin usr/sbin/dropbear /usr/sbin/dropbear
install_bin usr/bin/dropbearkey /usr/bin/dropbearkey
for b in mke2fs resize2fs e2fsck tune2fs; do
	src=sbin/$b
	[ -f "$POOL/$src" ] || src=usr/sbin/$b
	install_bin "$src" "/sbin/$b"
done
for l in mkfs.ext4 mkfs.ext3 mkfs.ext2; do rm -f "$ROOT/sbin/$l"; ln -s mke2fs "$ROOT/sbin/$l"; done
for l in fsck.ext4 fsck.ext3 fsck.ext2; do rm -f "$ROOT/sbin/$l"; ln -s e2fsck "$ROOT/sbin/$l"; done
mkdir -p "$ROOT/lib64"
cp -L "$LDSO" "$ROOT/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$ROOT/lib64/ld-linux-x86-64.so.2"
[ -f "$POOL/etc/mke2fs.conf" ] && cp "$POOL/etc/mke2fs.conf" "$ROOT/etc/mke2fs.conf"

# kernel modules (same set as the initrd) with their own modules.dep so
# modprobe works in the guest
for f in modules.builtin modules.builtin.modinfo modules.order; do
	[ -f "$KROOT/lib/modules/$KVER/$f" ] && cp "$KROOT/lib/modules/$KVER/$f" "$ROOT/lib/modules/$KVER/$f"
done
depmod -b "$ROOT" "$KVER"
cp "$WORK/vmplane-modules" "$ROOT/etc/vmplane-modules"

# guest scripts and configuration
cp -a "$HERE/guest/rootfs/." "$ROOT/"
chmod 755 "$ROOT"/usr/lib/vmplane/boot "$ROOT"/usr/lib/vmplane/agent "$ROOT"/usr/lib/vmplane/shutdown \
	"$ROOT"/usr/share/udhcpc/default.script "$ROOT"/etc/acpi/PWRF/00000080
chmod 644 "$ROOT"/usr/lib/vmplane/lib.sh "$ROOT"/usr/lib/vmplane/cloudinit "$ROOT"/usr/lib/vmplane/cloud-config.awk
chmod 640 "$ROOT/etc/shadow"
cat >"$ROOT/etc/vmplane-release" <<EOF
NAME=$NAME
VERSION=$VERSION
KERNEL=$KVER
SOURCE_HASH=$SRC_HASH
EOF
chown -R 0:0 "$ROOT"

rm -f "$WORK/rootfs.ext4"
mke2fs -q -F -t ext4 -T default -b 4096 -L vmplane-root -m 1 -d "$ROOT" "$WORK/rootfs.ext4" "$ROOTFS_SIZE" >/dev/null

cp "$KROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"

# ------------------------------------------------------------ publish
cat >"$WORK/manifest.json" <<EOF
{
  "name": "$NAME",
  "version": $VERSION,
  "os": "debian",
  "arch": "x86_64",
  "kernel_version": "$KVER",
  "boot": "kernel+initrd",
  "root_device": "/dev/vda",
  "cmdline": "$CMDLINE",
  "files": {
    "kernel": "vmlinuz",
    "initrd": "initrd.img",
    "rootfs": "rootfs.ext4"
  },
  "source_hash": "$SRC_HASH"
}
EOF
rm -f "$OUT/manifest.json"
for f in vmlinuz initrd.img rootfs.ext4; do
	mv -f "$WORK/$f" "$OUT/$f"
done
mv -f "$WORK/manifest.json" "$OUT/manifest.json"
log "built $NAME version $VERSION (kernel $KVER) in $OUT: initrd $(du -k "$OUT/initrd.img" | cut -f1) KiB, rootfs $(du -k "$OUT/rootfs.ext4" | cut -f1) KiB used"
