# vmplane guest helpers (sourced by boot and agent; busybox sh).

say() { echo "vmplane: $*"; }

# oneline TEXT -> TEXT with newlines folded into spaces.
oneline() { printf '%s' "$1" | tr '\n\r' '  '; }

# find_disk SERIAL -> prints /dev/vdX of the block device whose
# /sys/block/*/serial equals SERIAL.
find_disk() {
	for f in /sys/block/*/serial; do
		[ -r "$f" ] || continue
		if [ "$(cat "$f" 2>/dev/null)" = "$1" ]; then
			d=${f%/serial}
			echo "/dev/${d##*/}"
			return 0
		fi
	done
	return 1
}

# wait_disk SERIAL TIMEOUT_SECONDS -> like find_disk, polling every 0.1 s.
wait_disk() {
	_n=0
	while [ "$_n" -le $(($2 * 10)) ]; do
		if _d=$(find_disk "$1") && [ -b "$_d" ]; then
			echo "$_d"
			return 0
		fi
		usleep 100000
		_n=$((_n + 1))
	done
	return 1
}

# mount_point_source PATH -> prints the device mounted at PATH (if any).
mount_point_source() {
	awk -v p="$1" '$2 == p { d = $1 } END { if (d != "") print d; else exit 1 }' /proc/mounts
}

# is_blank DEV -> true when the first MiB of DEV is all zero bytes
# (fresh qemu-img disk: no partition table, no filesystem of any kind).
is_blank() {
	[ "$(dd if="$1" bs=65536 count=16 2>/dev/null | tr -d '\000' | wc -c)" -eq 0 ]
}

# vm_mount SERIAL PATH MODE WAIT -> mounts the disk with that serial at PATH.
# Prints a one-line error message and returns 1 on failure.
vm_mount() {
	_serial=$1 _path=$2 _mode=$3 _wait=${4:-10}
	case "$_mode" in ro|rw) ;; *) echo "mode must be ro or rw, got '$_mode'"; return 1 ;; esac
	case "$_path" in /*) ;; *) echo "mount path must be absolute: '$_path'"; return 1 ;; esac
	[ "$_path" != / ] || { echo "refusing to mount over /"; return 1; }
	[ -n "$_serial" ] || { echo "empty disk serial"; return 1; }
	if ! _dev=$(wait_disk "$_serial" "$_wait"); then
		echo "no disk with serial '$_serial' after ${_wait}s"
		return 1
	fi
	if _cur=$(mount_point_source "$_path"); then
		if [ "$_cur" = "$_dev" ]; then
			return 0
		fi
		echo "$_path is already a mount point (of $_cur)"
		return 1
	fi
	if awk -v d="$_dev" '$1 == d { f = 1 } END { exit !f }' /proc/mounts; then
		echo "$_dev (serial $_serial) is already mounted elsewhere"
		return 1
	fi
	if is_blank "$_dev"; then
		if [ "$_mode" = ro ]; then
			echo "disk '$_serial' has no filesystem and mode is ro"
			return 1
		fi
		_label=$(echo "$_serial" | cut -c1-16)
		if ! _msg=$(/sbin/mke2fs -q -F -t ext4 -L "$_label" "$_dev" 2>&1); then
			echo "mkfs.ext4 $_dev failed: $(oneline "$_msg")"
			return 1
		fi
	fi
	mkdir -p "$_path" 2>/dev/null
	if ! _msg=$(mount -o "$_mode" "$_dev" "$_path" 2>&1); then
		echo "mount $_dev on $_path failed: $(oneline "$_msg")"
		return 1
	fi
	return 0
}

vm_umount() {
	_path=$1
	case "$_path" in /*) ;; *) echo "mount path must be absolute: '$_path'"; return 1 ;; esac
	if ! mount_point_source "$_path" >/dev/null; then
		echo "$_path is not a mount point"
		return 1
	fi
	sync
	if ! _msg=$(umount "$_path" 2>&1); then
		echo "umount $_path failed: $(oneline "$_msg")"
		return 1
	fi
	return 0
}

# sshd_start: make the SSH host keys that are missing, then start dropbear
# (-s: no password logins at all, key only; port 22 on all addresses).
sshd_start() {
	mkdir -p /etc/dropbear
	for _t in ed25519 ecdsa; do
		_k=/etc/dropbear/dropbear_${_t}_host_key
		if [ ! -s "$_k" ]; then
			rm -f "$_k"
			dropbearkey -t "$_t" -f "$_k" >/dev/null 2>&1 || { say "dropbearkey -t $_t failed"; return 1; }
		fi
	done
	# It logs to syslog; holding the caller's output (the agent reads it
	# through a pipe) or the agent's port (fd 3) would block the caller.
	dropbear -s -p 22 -P /run/dropbear.pid \
		-r /etc/dropbear/dropbear_ed25519_host_key \
		-r /etc/dropbear/dropbear_ecdsa_host_key </dev/null >/dev/null 2>&1 3>&- || { say "dropbear failed to start"; return 1; }
}

# sshd_rekey: forget the host keys and restart dropbear so that it makes
# new ones (-R) when a client first needs one: a clone must not present its
# snapshot's keys, and making them now would delay its identity (about 0.7 s
# under TCG). They land where sshd_start finds them on the next boot.
# Sessions already open are left alone.
sshd_rekey() {
	rm -f /etc/dropbear/dropbear_*_host_key
	if [ -s /run/dropbear.pid ]; then
		_p=$(cat /run/dropbear.pid)
		kill "$_p" 2>/dev/null
		_n=0
		# the new one binds port 22 once the old one let go of it (at most 2 s)
		while kill -0 "$_p" 2>/dev/null && [ "$_n" -lt 100 ]; do
			usleep 20000
			_n=$((_n + 1))
		done
	fi
	dropbear -s -R -p 22 -P /run/dropbear.pid </dev/null >/dev/null 2>&1 3>&- || { say "dropbear failed to start"; return 1; }
}
