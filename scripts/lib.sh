# Shared by scripts/up and scripts/test: install what vmplane needs on a
# Debian machine, as root (or through sudo), only when it is missing.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

# ensure_package COMMAND PACKAGE: apt-get install PACKAGE unless COMMAND exists.
ensure_package() {
  local cmd=$1 pkg=$2
  if command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ]; then return 0; fi
  echo "installing $pkg (for $cmd)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y --no-install-recommends "$pkg" >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root apt-get install -y --no-install-recommends "$pkg"
  fi
}

ensure_base() {
  export PATH="$PATH:/usr/sbin:$HOME/.cargo/bin"
  command -v cargo >/dev/null || { echo "cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
  ensure_package nats-server nats-server
  # The Debian package enables a system service on port 4222; vmplane runs its own.
}
