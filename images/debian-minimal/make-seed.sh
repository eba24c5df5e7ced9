#!/bin/sh
# Build a NoCloud seed disk for vmplane guests (no root needed).
#
#   make-seed.sh OUT.img META-DATA USER-DATA [NAME=FILE | FILE]...
#
# OUT.img is a raw ext4 image (no journal) labelled "cidata" holding
# meta-data, user-data and any extra files.  Extra files are given as
# NAME=FILE (stored as NAME) or FILE (stored under its basename); the names
# the debian-minimal guest understands are vendor-data, network-config,
# env, authorized_keys and volumes (see README.md).  USER-DATA may be an
# empty file.  Attach the image with
#   -drive if=none,id=seed,file=OUT.img,format=raw,readonly=on
#   -device virtio-blk-pci,drive=seed,serial=cidata
set -eu

usage() { echo "usage: $0 OUT.img META-DATA USER-DATA [NAME=FILE | FILE]..." >&2; exit 2; }
[ $# -ge 3 ] || usage
out=$1 meta=$2 user=$3
shift 3

MKE2FS=""
for c in mke2fs /sbin/mke2fs /usr/sbin/mke2fs; do
	if command -v "$c" >/dev/null 2>&1; then MKE2FS=$(command -v "$c"); break; fi
done
if [ -z "$MKE2FS" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends e2fsprogs >&2 ||
		{ apt-get update -qq >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends e2fsprogs >&2; }
	MKE2FS=/sbin/mke2fs
fi
[ -n "$MKE2FS" ] || { echo "make-seed.sh: mke2fs not found (install e2fsprogs)" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/vmplane-seed.XXXXXX")
trap 'rm -rf "$dir"' EXIT INT TERM
mkdir "$dir/root"

add() { # NAME FILE
	case "$1" in
	''|*/*|.|..) echo "make-seed.sh: bad seed file name '$1'" >&2; exit 2 ;;
	esac
	[ -f "$2" ] || { echo "make-seed.sh: $2: no such file" >&2; exit 1; }
	cp "$2" "$dir/root/$1"
	chmod 0644 "$dir/root/$1"
}
add meta-data "$meta"
add user-data "$user"
for a in "$@"; do
	case "$a" in
	*=*) add "${a%%=*}" "${a#*=}" ;;
	*) add "$(basename "$a")" "$a" ;;
	esac
done

# size: twice the content plus 2 MiB of slack, at least 4 MiB (KiB units)
used=$(du -sk "$dir/root" | cut -f1)
size=$((used * 2 + 2048))
[ "$size" -ge 4096 ] || size=4096

rm -f "$out"
"$MKE2FS" -q -F -t ext4 -O ^has_journal -b 1024 -m 0 -L cidata -E root_owner=0:0 \
	-d "$dir/root" "$out" "${size}k" >/dev/null
