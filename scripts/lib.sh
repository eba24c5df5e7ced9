# Shared by scripts/up and scripts/test: install what vmplane needs on a
# Debian machine, as root (or through sudo), only when it is missing.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

# apt_install [APT OPTION|PACKAGE]...: install, updating the package lists if needed.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  as_root apt-get update -qq >/dev/null
  as_root apt-get install -y -qq --no-install-recommends "$@"
}

# ensure_release PACKAGE...: each package at the version of this Debian
# release itself (bookworm: QEMU 7.2), replacing a missing one or one from
# backports, so that what runs here is what a fresh machine runs.
ensure_release() {
  local codename have pkg want=()
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  for pkg in "$@"; do
    have=$(dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null || true)
    case "$have" in "" | *bpo* | *~bpo*) want+=("$pkg/$codename") ;; esac
  done
  [ ${#want[@]} -eq 0 ] && return 0
  echo "installing ${want[*]} (this Debian release's own versions)..." >&2
  apt_install --allow-downgrades "${want[@]}"
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
  ensure_package make make   # builds jemalloc, vmplane's allocator (tikv-jemalloc-sys)
}

# What the qemu driver needs: the emulator and qemu-img of this Debian
# release, passt (guest networking that cannot reach the host) with nftables
# (the rule that keeps it off the host's addresses), mke2fs and debugfs for
# seed disks and imports, and the tools the guest image build uses (it
# installs the rest itself).
ensure_qemu() {
  ensure_release qemu-system-x86 qemu-utils
  ensure_package passt passt
  ensure_package nft nftables
  ensure_package ss iproute2
  ensure_package mke2fs e2fsprogs
}

# What tests/compose.rs needs: Debian's container engine and compose tool
# (a `docker` client alone is not enough: the engine is dockerd), and the
# engine running. Where dockerd cannot start, the test that brings the stack
# up says so and skips; the one validating docker-compose.yml still runs.
ensure_docker() {
  ensure_package dockerd docker.io
  ensure_package docker-compose docker-compose
  docker info >/dev/null 2>&1 && return 0
  # A dockerd that died uncleanly leaves its pid file, and refuses to start
  # while that pid names any live process (pids are reused): drop a pid
  # file that does not name a running dockerd.
  as_root sh -c 'p=/var/run/docker.pid; [ -f "$p" ] && [ "$(cat /proc/"$(cat "$p")"/comm 2>/dev/null)" != dockerd ] && rm -f "$p"; true'
  echo "starting dockerd (log: /tmp/vmplane-dockerd.log)..." >&2
  as_root sh -c 'nohup dockerd >/tmp/vmplane-dockerd.log 2>&1 &'
  for _ in $(seq 1 30); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "dockerd did not start (see /tmp/vmplane-dockerd.log): tests/compose.rs will skip bringing the stack up" >&2
}

# ensure_pip_tool PACKAGE VERSION COMMAND VAR: PACKAGE at a pinned VERSION,
# from PyPI, in a virtual environment of its own under the build directory;
# exports VAR naming that environment's COMMAND.
ensure_pip_tool() {
  local package="$1" version="$2" command="$3" var="$4"
  ensure_package python3 python3
  local venv="${CARGO_TARGET_DIR:-target}/$package-$version"
  if [ ! -x "$venv/bin/$command" ]; then
    ensure_package_module venv python3-venv
    echo "installing $package $version into $venv..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "$package==$version"
  fi
  export "$var=$(cd "$venv/bin" && pwd)/$command"
}

# The OpenAPI fuzzer of the contract tests (tests/contract.rs): exports
# VMPLANE_SCHEMATHESIS, the `st` they run.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
  ensure_pip_tool schemathesis "$SCHEMATHESIS_VERSION" st VMPLANE_SCHEMATHESIS
}

# The client generator of tests/client.rs: exports VMPLANE_OPENAPI_CLIENT.
# Its own dependencies (httpx, attrs) are what the generated package
# imports, so the environment's python runs that package.
OPENAPI_CLIENT_VERSION=0.29.1
ensure_openapi_client() {
  ensure_pip_tool openapi-python-client "$OPENAPI_CLIENT_VERSION" openapi-python-client VMPLANE_OPENAPI_CLIENT
}

# ensure_package_module MODULE PACKAGE: install PACKAGE unless python3 can
# import MODULE (Debian splits venv out of python3).
ensure_package_module() {
  python3 -c "import $1" 2>/dev/null && return 0
  echo "installing $2 (for python3 -m $1)..." >&2
  apt_install "$2"
}
