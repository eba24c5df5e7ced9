# Shared by scripts/up and scripts/test: install what vmplane needs on a
# Debian machine, as root (or through sudo), only when it is missing.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

# apt_install PACKAGE...: install, updating the package lists if needed. A
# machine whose qemu-utils comes from <codename>-backports (its qemu-utils
# "Breaks" the older qemu-system-common) gets the qemu packages from there too.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  as_root apt-get update -qq >/dev/null
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  local qv codename
  qv=$(dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null || true)
  case "$qv" in
  *bpo*)
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    if ! grep -rqs "$codename-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "adding $codename-backports to apt sources (qemu-utils $qv is from there)" >&2
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$codename" | as_root tee /etc/apt/sources.list.d/vmplane-backports.sources >/dev/null
      as_root apt-get update -qq >/dev/null
    fi
    as_root apt-get install -y -qq --no-install-recommends -t "$codename-backports" "$@"
    ;;
  *) as_root apt-get install -y --no-install-recommends "$@" ;;
  esac
}

# ensure_package COMMAND PACKAGE: install PACKAGE unless COMMAND exists.
ensure_package() {
  local cmd=$1 pkg=$2
  if command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ]; then return 0; fi
  echo "installing $pkg (for $cmd)..." >&2
  apt_install "$pkg"
}

ensure_base() {
  export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
  command -v cargo >/dev/null || { echo "cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
  ensure_package nats-server nats-server
  # The Debian package enables a system service on port 4222; vmplane runs its own.
}

# What the qemu driver needs: the emulator, qemu-img, mke2fs for seed disks,
# and the tools the guest image build uses (it installs the rest itself).
ensure_qemu() {
  ensure_package qemu-system-x86_64 qemu-system-x86
  ensure_package qemu-img qemu-utils
  ensure_package mke2fs e2fsprogs
}
