#!/bin/bash
# End-to-end smoke test of the debian-minimal guest image under QEMU (TCG).
#
#   images/debian-minimal/smoke.sh [IMAGEDIR]
#
# Builds the image into IMAGEDIR (default: a temporary directory; an
# up-to-date build is reused), boots it with the qemu command line the
# vmplane QEMU driver uses, and checks: user-data script output and the
# VMPLANE-READY line on the serial console, ssh login with a seed key, a
# volume listed in the seed mounted at boot, the agent channel (ping, run,
# mount/umount of a disk hot-plugged over QMP), the serial root shell, and
# that QMP system_powerdown makes qemu exit.  Needs root to install
# qemu-system-x86, qemu-utils, openssh-client and python3 when missing.
# Env: SMOKE_TIMEOUT (seconds to wait for readiness, default 120),
#      SMOKE_KEEP=1 (keep the work directory).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TIMEOUT=${SMOKE_TIMEOUT:-120}
PASS=0 FAIL=0
ok() { echo "PASS: $*"; PASS=$((PASS + 1)); }
bad() { echo "FAIL: $*"; FAIL=$((FAIL + 1)); }
log() { echo "smoke: $*"; }
since() { awk -v now="$(date +%s.%N)" -v t="$1" 'BEGIN { printf "%.1f", now - t }'; }

# ------------------------------------------------------------ host tools
install_pkgs() {
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends "$@" >/dev/null && return 0
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "$@" >/dev/null && return 0
	# Machines whose qemu-utils comes from <codename>-backports (qemu-utils
	# "Breaks" an older qemu-system-common) need qemu-system-x86 from there too.
	local qv codename
	qv=$(dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null || true)
	case "$qv" in
	*bpo*)
		codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
		if ! grep -rqs "$codename-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
			log "adding $codename-backports to apt sources (qemu-utils $qv is from backports)"
			printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
				"$codename" >/etc/apt/sources.list.d/vmplane-backports.sources
			apt-get update -qq >/dev/null
		fi
		apt-get install -y -qq --no-install-recommends -t "$codename-backports" "$@" >/dev/null
		;;
	*) return 1 ;;
	esac
}
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	install_pkgs "${need[@]}" || { echo "smoke: cannot install ${need[*]}" >&2; exit 1; }
fi

# ------------------------------------------------------------ image
W=$(mktemp -d /tmp/vmplane-smoke.XXXXXX)
IMG=${1:-$W/image}
QPID=""
cleanup() {
	[ -n "$QPID" ] && kill "$QPID" 2>/dev/null && wait "$QPID" 2>/dev/null
	if [ -n "${SMOKE_KEEP:-}" ]; then log "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

t0=$(date +%s.%N)
"$HERE/build.sh" "$IMG" || { echo "smoke: build failed" >&2; exit 1; }
log "build took $(since "$t0") s"
CMDLINE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cmdline"])' "$IMG/manifest.json")

# ------------------------------------------------------------ disks, seed
ssh-keygen -q -t ed25519 -N '' -C smoke -f "$W/key"
qemu-img create -q -f qcow2 -b "$IMG/rootfs.ext4" -F raw "$W/root.qcow2" 1G
qemu-img create -q -f qcow2 "$W/bootvol.qcow2" 64M
qemu-img create -q -f qcow2 "$W/vol1.qcow2" 64M
IID=smoke-$$-$RANDOM
cat >"$W/meta-data" <<EOF
instance-id: $IID
local-hostname: smoke-guest
EOF
cat >"$W/user-data" <<'EOF'
#!/bin/sh
echo hello-from-guest
echo "smoke-env GREETING=[$GREETING]"
EOF
printf 'GREETING=hi there $HOME "quoted"\n' >"$W/env"
printf 'bootvol /mnt/bootvol rw\n' >"$W/volumes"
"$HERE/make-seed.sh" "$W/seed.img" "$W/meta-data" "$W/user-data" \
	authorized_keys="$W/key.pub" env="$W/env" volumes="$W/volumes" || { echo "smoke: make-seed failed" >&2; exit 1; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# ------------------------------------------------------------ socket helper
cat >"$W/sock.py" <<'EOF'
import json, socket, sys, time

def connect(path, timeout=30):
    end = time.time() + timeout
    while True:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            return s
        except OSError:
            if time.time() > end:
                raise
            time.sleep(0.2)

def lines(s):
    buf = b""
    while True:
        while b"\n" in buf:
            l, buf = buf.split(b"\n", 1)
            yield l.decode(errors="replace").rstrip("\r")
        d = s.recv(4096)
        if not d:
            return
        buf += d

def qmp(path, cmds):
    s = connect(path)
    s.settimeout(30)
    it = lines(s)
    json.loads(next(it))  # greeting
    for c in [{"execute": "qmp_capabilities"}] + cmds:
        s.sendall((json.dumps(c) + "\n").encode())
        while True:
            r = json.loads(next(it))
            if "event" in r:
                continue
            print(json.dumps(r))
            if "error" in r:
                sys.exit(1)
            break

def agent(path, cmd, timeout):
    s = connect(path)
    s.settimeout(timeout)
    it = lines(s)
    if cmd == "ping-until-pong":
        end = time.time() + timeout
        s.settimeout(1)
        while time.time() < end:
            s.sendall(b"ping\n")
            try:
                for l in it:
                    if l == "pong":
                        print("pong")
                        return
            except socket.timeout:
                it = lines(s)
        sys.exit(1)
    s.sendall((cmd + "\n").encode())
    for l in it:
        print(l)
        if not cmd.startswith("run ") or l.startswith("exit "):
            return
    sys.exit(1)

def serial(path, text, want, timeout):
    s = connect(path)
    s.settimeout(1)
    end = time.time() + timeout
    got = b""
    s.sendall(b"\n")
    time.sleep(0.5)
    s.sendall(text.encode() + b"\n")
    while time.time() < end:
        try:
            d = s.recv(4096)
            if not d:
                break
            got += d
            if want.encode() in got:
                print("found", want)
                return
        except socket.timeout:
            pass
    print(got.decode(errors="replace"))
    sys.exit(1)

if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "qmp":
        qmp(path, [json.loads(a) for a in sys.argv[3:]])
    elif kind == "agent":
        agent(path, sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 30)
    elif kind == "serial":
        serial(path, sys.argv[3], sys.argv[4], 30)
EOF
py() { timeout 60 python3 "$W/sock.py" "$@"; }

# ------------------------------------------------------------ boot
# start_vm SEED -> starts qemu in the background (QPID); the serial output
# is appended to $W/serial.log
start_vm() {
	QEMU=(qemu-system-x86_64
		-machine q35,accel=tcg -cpu max -m 256 -smp 1
		-nodefaults -no-user-config -nographic
		-chardev "socket,id=ser0,path=$W/serial.sock,server=on,wait=off,logfile=$W/serial.log,logappend=on"
		-serial chardev:ser0
		-kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" -append "$CMDLINE"
		-drive "if=none,id=root,file=$W/root.qcow2,format=qcow2" -device virtio-blk-pci,drive=root,serial=root
		-drive "if=none,id=seed,file=$1,format=raw,readonly=on" -device virtio-blk-pci,drive=seed,serial=cidata
		-drive "if=none,id=bootvol,file=$W/bootvol.qcow2,format=qcow2" -device virtio-blk-pci,drive=bootvol,serial=bootvol
		-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:22" -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56
		-device virtio-serial-pci
		-chardev "socket,id=agent,path=$W/agent.sock,server=on,wait=off"
		-device virtserialport,chardev=agent,name=org.vmplane.agent
		-device pcie-root-port,id=hp0,bus=pcie.0,chassis=1
		-device pcie-root-port,id=hp1,bus=pcie.0,chassis=2
		-device pcie-root-port,id=hp2,bus=pcie.0,chassis=3
		-qmp "unix:$W/qmp.sock,server=on,wait=off"
	)
	log "booting: ${QEMU[*]}"
	"${QEMU[@]}" </dev/null >>"$W/qemu.out" 2>&1 &
	QPID=$!
}

# wait_ready N -> waits until the serial log holds N readiness lines;
# sets boot_s to the seconds waited
wait_ready() {
	local start ready=""
	start=$(date +%s.%N)
	while :; do
		if [ "$(grep -ac '^VMPLANE-READY instance-id=' "$W/serial.log")" -ge "$1" ]; then ready=1; break; fi
		kill -0 "$QPID" 2>/dev/null || break
		awk -v e="$(since "$start")" -v m="$TIMEOUT" 'BEGIN { exit !(e > m) }' && break
		sleep 0.2
	done
	boot_s=$(since "$start")
	if [ -n "$ready" ]; then
		ok "VMPLANE-READY #$1 after ${boot_s}s"
		return 0
	fi
	bad "no VMPLANE-READY #$1 within ${TIMEOUT}s"
	echo "---- qemu output"; cat "$W/qemu.out"; echo "---- serial log"; cat -v "$W/serial.log"
	echo "$PASS passed, $FAIL failed"
	exit 1
}

# powerdown -> QMP system_powerdown; qemu must exit within 30 s
powerdown() {
	local t
	py qmp "$W/qmp.sock" '{"execute":"system_powerdown"}' >/dev/null
	t=$(date +%s.%N)
	for _ in $(seq 1 300); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$QPID" 2>/dev/null; then
		bad "qemu still running 30 s after system_powerdown"
		tail -n 20 "$W/serial.log" | cat -v
		kill "$QPID"
	else
		ok "system_powerdown: qemu exited after $(since "$t")s"
	fi
	wait "$QPID" 2>/dev/null
	QPID=""
}

SSH=(ssh -p "$PORT" -i "$W/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
	-o BatchMode=yes -o ConnectTimeout=20 -o LogLevel=ERROR root@127.0.0.1)
serial_has() { tr -d '\r' <"$W/serial.log" | grep "$@"; }

# ============================================================ phase 1
log "phase 1: #! user-data, seed env, authorized_keys, volumes, agent, hot-plug"
: >"$W/serial.log"
start_vm "$W/seed.img"
wait_ready 1
boot1_s=$boot_s
ready_line=$(grep -a '^VMPLANE-READY' "$W/serial.log" | tr -d '\r')
[ "$ready_line" = "VMPLANE-READY instance-id=$IID" ] && ok "readiness line: $ready_line" || bad "readiness line is '$ready_line'"
serial_has -qx 'hello-from-guest' && ok "user-data output on the serial console" || bad "no hello-from-guest on the serial console"
serial_has -qxF 'smoke-env GREETING=[hi there $HOME "quoted"]' && ok "seed env passed to user-data" || bad "seed env not passed to user-data"

# ssh
out=$(timeout 60 "${SSH[@]}" echo ok 2>&1)
[ "$out" = ok ] && ok "ssh root@127.0.0.1:$PORT echo ok" || bad "ssh: $out"
out=$(timeout 60 "${SSH[@]}" 'hostname; awk "\$2 == \"/mnt/bootvol\" { print \$1, \$3, \$4 }" /proc/mounts; df -k / | tail -n 1' 2>&1)
echo "$out" | sed 's/^/  guest: /'
[ "$(echo "$out" | sed -n 1p)" = smoke-guest ] && ok "hostname from meta-data" || bad "hostname not set"
echo "$out" | sed -n 2p | grep -q '^/dev/vd[a-z]* ext4 rw' && ok "seed volume bootvol formatted and mounted at boot" || bad "bootvol not mounted"
rootkb=$(echo "$out" | sed -n 3p | awk '{ print $2 }')
[ "${rootkb:-0}" -gt 600000 ] && ok "root filesystem grown to the 1G overlay (${rootkb} KiB)" || bad "root filesystem not grown (${rootkb:-?} KiB)"
out=$(timeout 60 "${SSH[@]}" -o PasswordAuthentication=yes -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive true 2>&1)
[ $? -ne 0 ] && ok "password login refused" || bad "password login accepted: $out"

# agent
out=$(py agent "$W/agent.sock" ping-until-pong 30)
[ "$out" = pong ] && ok "agent ping -> pong" || bad "agent ping: $out"
out=$(py agent "$W/agent.sock" 'run echo one; echo two >&2; exit 3' 30)
[ "$out" = "$(printf 'out one\nout two\nexit 3')" ] && ok "agent run" || bad "agent run: $out"
out=$(py agent "$W/agent.sock" 'winsize 132 43' 30)
[ "$out" = ok ] && ok "agent winsize 132 43 -> ok" || bad "agent winsize: $out"
out=$(py agent "$W/agent.sock" 'run stty -F /dev/ttyS0 size' 30)
[ "$out" = "$(printf 'out 43 132\nexit 0')" ] && ok "the console took the window size" || bad "console size: $out"
out=$(py agent "$W/agent.sock" 'winsize 0 43' 30)
case $out in "err usage: winsize"*) ok "agent winsize refuses 0" ;; *) bad "agent winsize 0: $out" ;; esac
out=$(py qmp "$W/qmp.sock" \
	"{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"qcow2\",\"node-name\":\"vol1\",\"file\":{\"driver\":\"file\",\"filename\":\"$W/vol1.qcow2\"}}}" \
	'{"execute":"device_add","arguments":{"driver":"virtio-blk-pci","id":"vol1dev","drive":"vol1","serial":"vol1","bus":"hp0"}}' 2>&1)
[ $? -eq 0 ] && ok "QMP hot-plug of vol1 on hp0" || bad "QMP hot-plug: $out"
t=$(date +%s.%N)
out=$(py agent "$W/agent.sock" 'mount vol1 /mnt/vol1 rw' 30)
[ "$out" = ok ] && ok "agent mount vol1 /mnt/vol1 rw -> ok ($(since "$t")s after device_add)" || bad "agent mount: $out"
out=$(py agent "$W/agent.sock" 'run echo data >/mnt/vol1/f && cat /mnt/vol1/f && awk "\$2 == \"/mnt/vol1\" { print \$3, \$4 }" /proc/mounts' 30)
echo "$out" | grep -qx 'out data' && echo "$out" | grep -q '^out ext4 rw' && ok "vol1 is a writable ext4 mount" || bad "vol1 mount check: $out"
out=$(py agent "$W/agent.sock" 'mount vol1 /mnt/vol1 rw' 30)
[ "$out" = ok ] && ok "agent mount is idempotent" || bad "agent mount again: $out"
out=$(py agent "$W/agent.sock" 'umount /mnt/vol1' 30)
[ "$out" = ok ] && ok "agent umount /mnt/vol1 -> ok" || bad "agent umount: $out"
out=$(py agent "$W/agent.sock" 'mount vol1 /mnt/vol1ro ro' 30)
[ "$out" = ok ] && ok "agent re-mount read-only -> ok" || bad "agent mount ro: $out"
out=$(py agent "$W/agent.sock" 'run cat /mnt/vol1ro/f; touch /mnt/vol1ro/g' 30)
case "$out" in "out data"*"exit 1") ok "data persisted on vol1, ro mount not writable" ;; *) bad "vol1 ro: $out" ;; esac
out=$(py agent "$W/agent.sock" 'umount /mnt/vol1ro' 30)
[ "$out" = ok ] && ok "agent umount /mnt/vol1ro" || bad "agent umount ro: $out"
out=$(py qmp "$W/qmp.sock" '{"execute":"device_del","arguments":{"id":"vol1dev"}}' 2>&1)
[ $? -eq 0 ] && ok "QMP device_del vol1dev" || bad "QMP device_del: $out"
out=$(py agent "$W/agent.sock" 'mount nosuchdisk /mnt/x rw' 30)
case "$out" in "err "*) ok "agent mount of a missing disk -> $out" ;; *) bad "agent missing disk: $out" ;; esac
out=$(py agent "$W/agent.sock" 'frobnicate' 30)
case "$out" in "err "*) ok "agent unknown command -> err" ;; *) bad "agent unknown command: $out" ;; esac

# serial console shell
out=$(py serial "$W/serial.sock" 'echo serial-$((6*7))' 'serial-42' 2>&1)
[ $? -eq 0 ] && ok "root shell on the serial console" || bad "serial shell: $out"

powerdown

# ============================================================ phase 2
log "phase 2: new instance-id with #cloud-config on the same root disk, then a guest reboot"
ssh-keygen -q -t ed25519 -N '' -C smoke2 -f "$W/key2"
IID2=smoke2-$$-$RANDOM
cat >"$W/meta-data2" <<EOF
instance-id: $IID2
local-hostname: not-used
vmplane-env: GREETING=from-meta
EOF
b64=$(printf 'decoded ok\n' | base64)
cat >"$W/user-data2" <<EOF
#cloud-config
hostname: cc-host
ssh_authorized_keys:
  - $(cat "$W/key2.pub")
write_files:
  - path: /etc/smoke/plain.txt
    permissions: '0600'
    content: |
      line one
        line two
  - path: /etc/smoke/b64.txt
    encoding: b64
    content: $b64
packages:
  - curl
  - [git, latest]
runcmd:
  - echo runcmd-string-\$((40+2))
  - [sh, -c, 'echo "runcmd-list \$GREETING"']
users:
  - default
EOF
"$HERE/make-seed.sh" "$W/seed2.img" "$W/meta-data2" "$W/user-data2" || { echo "smoke: make-seed failed" >&2; exit 1; }
start_vm "$W/seed2.img"
wait_ready 2
boot2_s=$boot_s
serial_has -qx "VMPLANE-READY instance-id=$IID2" && ok "readiness line with the new instance-id" || bad "no readiness line for $IID2"
serial_has -qx 'runcmd-string-42' && ok "cloud-config runcmd (string)" || bad "runcmd string"
serial_has -qx 'runcmd-list from-meta' && ok "cloud-config runcmd (list) with vmplane-env from meta-data" || bad "runcmd list / env"
serial_has -q 'packages cannot be installed' && ok "packages reported as not installable" || bad "no packages line"
serial_has -q "unsupported cloud-config keys: users" && ok "unsupported keys reported" || bad "unsupported keys not reported"
[ "$(serial_has -cx 'hello-from-guest')" = 1 ] && ok "phase-1 user-data not re-run" || bad "phase-1 user-data re-run"
SSH2=(ssh -p "$PORT" -i "$W/key2" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
	-o BatchMode=yes -o ConnectTimeout=20 -o LogLevel=ERROR root@127.0.0.1)
out=$(timeout 60 "${SSH2[@]}" 'hostname; cat /etc/smoke/plain.txt; stat -c %a /etc/smoke/plain.txt; cat /etc/smoke/b64.txt; cat /var/lib/cloud/packages-requested' 2>&1)
echo "$out" | sed 's/^/  guest: /'
[ "$out" = "$(printf 'cc-host\nline one\n  line two\n600\ndecoded ok\ncurl\ngit=latest')" ] && ok "cloud-config hostname, ssh key, write_files, packages" || bad "cloud-config result"
out=$(timeout 60 "${SSH[@]}" echo ok 2>&1)
[ "$out" = ok ] && ok "first key still accepted" || bad "first key: $out"

py agent "$W/agent.sock" ping-until-pong 30 >/dev/null
py agent "$W/agent.sock" 'run (sleep 1; reboot) >/dev/null 2>&1 &' 30 >/dev/null
wait_ready 3
[ "$(serial_has -cx 'runcmd-string-42')" = 1 ] && ok "user-data applied once per instance (not after the reboot)" || bad "user-data re-applied after reboot"
powerdown

echo "---- serial log"
tr -d '\r' <"$W/serial.log" | sed 's/^/  | /'
echo "boot to VMPLANE-READY: first boot ${boot1_s}s, second instance ${boot2_s}s"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
