# systemd.sh - dst under a real systemd (PID 1 of a Debian root file system,
# tests/vm/run --systemd). A "storage" network namespace runs dst-serve; the
# root namespace is the client, with dst-attach@data and an fstab line.
# Boot 1 installs dst's Debian package, enables the units, makes a file
# system and writes files, and reboots. Boot 2 finds the file system mounted
# again with the files, reloads dst-serve for a new key, SIGKILLs
# dst-attach@data during writes, and stops everything cleanly. Each step's
# time is printed as "STEP name seconds".
# shellcheck shell=sh
STATE=/var/lib/dstvm
mkdir -p "$STATE"
PHASE=$(cat "$STATE/phase" 2>/dev/null || echo 1)
up() { cut -d' ' -f1 /proc/uptime; }
fail() {
	echo "FAIL: $*"
	systemctl --no-pager status dst-serve 'dst-attach@data' 2>&1 | tail -n 30
	journalctl --no-pager -b -u dst-serve -u 'dst-attach@data' -u storage-netns | tail -n 60
	exit 1
}
# step NAME CMD...: run CMD, print its time, fail if it fails.
step() {
	_name=$1; shift
	_s=$(up)
	"$@" || fail "$_name: $* failed"
	echo "STEP $_name $(awk -v s="$_s" -v e="$(up)" 'BEGIN {printf "%.1f", e - s}')"
}
# since_boot UNIT: when UNIT became active, in seconds since the kernel
# started.
since_boot() {
	awk -v u="$(systemctl show -P ActiveEnterTimestampMonotonic "$1")" 'BEGIN {printf "%.1f", u / 1e6}'
}
# links_to DEV: udev gave DEV its stable names, /dev/dst/data and
# /dev/disk/by-id/dst-IDENTITY (the identity dst status reports).
links_to() {
	udevadm settle
	[ "$(readlink -f /dev/dst/data)" = "$1" ] || fail "/dev/dst/data -> '$(readlink -f /dev/dst/data)', want $1"
	_id=$(dst status --json data | sed -n 's/.*"identity": *"\([0-9a-f]*\)".*/\1/p' | head -n 1)
	[ -n "$_id" ] || fail "dst status --json data shows no identity"
	[ "$(readlink -f "/dev/disk/by-id/dst-$_id")" = "$1" ] || fail "/dev/disk/by-id/dst-$_id does not lead to $1"
	echo "links: /dev/dst/data and /dev/disk/by-id/dst-$_id -> $1"
}
writefiles() {
	for _i in 1 2 3 4; do
		dd if=/dev/urandom of="$1/f$_i" bs=1M count=4 conv=fsync 2>/dev/null || return 1
	done
	(cd "$1" && sha1sum f*) >"$STATE/$(basename "$1").sums"
}
verifyfiles() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
	(cd "$1" && sha1sum -c --quiet "$STATE/$(basename "$1").sums")
}
no_io_errors() {
	if dmesg | grep -E 'I/O error|blk_update_request|Buffer I/O'; then
		fail "the kernel logged I/O errors"
	fi
}

echo "boot $PHASE: the scenario starts $(up)s after the kernel"
case $PHASE in
1)
	step install dpkg -i /opt/vm/dst_*_amd64.deb
	[ "$(command -v dst)" = /usr/bin/dst ] || fail "dst is not /usr/bin/dst after installing the package"
	dst --version || fail "dst --version failed"
	[ -s /etc/dst/server.key ] || fail "the package made no server key"
	for f in /lib/systemd/system/dst-serve.service /lib/systemd/system/dst-attach@.service \
		/lib/udev/rules.d/60-dst.rules /usr/sbin/dst-mirror /usr/share/man/man8/dst.8.gz \
		/usr/share/man/man5/dst-serve.toml.5.gz /usr/share/bash-completion/completions/dst; do
		[ -e "$f" ] || fail "the package did not install $f"
	done
	cat >/etc/systemd/system/storage-netns.service <<'UNIT'
[Unit]
Description=network namespace "storage", linked to the root namespace by a veth pair
Before=network-online.target dst-serve.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip netns add storage
ExecStart=/sbin/ip link add veth-client type veth peer name veth-storage netns storage
ExecStart=/sbin/ip addr add 10.77.0.2/24 dev veth-client
ExecStart=/sbin/ip link set veth-client up
ExecStart=/sbin/ip -n storage addr add 10.77.0.1/24 dev veth-storage
ExecStart=/sbin/ip -n storage link set veth-storage up
ExecStart=/sbin/ip -n storage link set lo up
ExecStop=/sbin/ip netns delete storage

[Install]
WantedBy=network-online.target
UNIT
	mkdir -p /etc/systemd/system/dst-serve.service.d
	cat >/etc/systemd/system/dst-serve.service.d/netns.conf <<'UNIT'
[Unit]
Requires=storage-netns.service
After=storage-netns.service

[Service]
NetworkNamespacePath=/run/netns/storage
UNIT
	# Both "hosts" share one systemd here: at shutdown the client side must
	# stop before its server does, as it would on two machines.
	mkdir -p /etc/systemd/system/dst-attach@data.service.d
	cat >/etc/systemd/system/dst-attach@data.service.d/local-server.conf <<'UNIT'
[Unit]
Wants=dst-serve.service
After=dst-serve.service
UNIT
	cat >/etc/dst/serve.toml <<'TOML'
listen = "10.77.0.1:7700"
key = "server.key"
authorized_keys = "authorized_keys"

[[export]]
name = "data"
path = "/var/lib/dst/data.img"
TOML
	mkdir -p /var/lib/dst
	truncate -s 256M /var/lib/dst/data.img
	dst keygen -o /etc/dst/client.key
	echo "$(dst pubkey </etc/dst/client.key) client" >>/etc/dst/authorized_keys
	dst pubkey </etc/dst/server.key >/etc/dst/storage1.pub
	cat >/etc/dst/attach/data.conf <<'CONF'
DST_SERVER=10.77.0.1:7700
DST_EXPORT=data
DST_DEVICE=/dev/nbd0
DST_SERVER_KEY=@/etc/dst/storage1.pub
DST_KEY=/etc/dst/client.key
DST_ARGS=
CONF
	systemctl daemon-reload
	step enable-netns systemctl enable --now storage-netns
	step enable-serve systemctl enable --now dst-serve
	step enable-attach systemctl enable --now dst-attach@data
	[ "$(cat /sys/block/nbd0/size)" = 524288 ] || fail "nbd0 has $(cat /sys/block/nbd0/size) sectors, want 524288"
	step links links_to /dev/nbd0
	step mkfs mkfs.ext4 -q /dev/nbd0
	mkdir -p /mnt/data
	# The stable name, as an operator would write it.
	echo "/dev/dst/data /mnt/data ext4 _netdev 0 0" >>/etc/fstab
	systemctl daemon-reload
	step mount systemctl start mnt-data.mount
	step write writefiles /mnt/data
	echo 2 >"$STATE/phase"
	sync
	echo "DSTVM_REBOOT"
	systemctl reboot
	sleep 600
	;;
2)
	echo "STEP boot-to-serve $(since_boot dst-serve.service)"
	echo "STEP boot-to-attach $(since_boot dst-attach@data.service)"
	echo "STEP boot-to-mount $(since_boot mnt-data.mount)"
	findmnt -n -o SOURCE /mnt/data | grep -qx /dev/nbd0 || fail "/mnt/data is not mounted from /dev/nbd0 after the reboot"
	step verify-after-reboot verifyfiles /mnt/data
	# Status from both units' sockets.
	links_to /dev/nbd0
	dst status data | tee /tmp/status.out
	grep -q 'state *connected since' /tmp/status.out || fail "dst status data does not say connected"
	dst status /dev/nbd0 | grep -q '^data ' || fail "dst status /dev/nbd0 does not find the attachment named data"
	dst serve status | tee /tmp/serve-status.out
	grep -q '^data ' /tmp/serve-status.out || fail "dst serve status does not list the export"
	grep -q '^client ' /tmp/serve-status.out || fail "dst serve status does not list the client's session"

	# A new client key: refused, then accepted after a reload.
	dst keygen -o /tmp/k2.key
	info() { dst info --key /tmp/k2.key --server-key @/etc/dst/storage1.pub 10.77.0.1:7700 >/tmp/info.out 2>&1; }
	if info; then fail "an unlisted key was accepted"; fi
	echo "$(dst pubkey </tmp/k2.key) second" >>/etc/dst/authorized_keys
	step reload systemctl reload dst-serve
	step info-after-reload info
	grep -q data /tmp/info.out || fail "dst info after the reload: $(cat /tmp/info.out)"
	# The journal: native entries, with fields and priorities; MESSAGE
	# reads as the line on stderr did.
	journalctl --no-pager -b -o json -u 'dst-attach@data' DST_ATTACHMENT=data DST_DEVICE=/dev/nbd0 DST_EXPORT=data |
		grep -q '"MESSAGE":"ready device=/dev/nbd0 ' || {
		journalctl --no-pager -b -o json -u 'dst-attach@data' | grep ready
		fail "no journal entry of dst attach with its fields"
	}
	journalctl --no-pager -b -o json -u dst-serve -p warning..warning |
		grep '"MESSAGE":"refused client key' | grep -q '"PRIORITY":"4"' || fail "the refused key is not a warning in the journal"
	journalctl --no-pager -b -u dst-serve | grep -q 'refused client key remote=' || fail "the plain journal lost the attributes"
	[ "$(systemctl show -P NRestarts dst-serve)" = 0 ] || fail "dst-serve restarted on reload"

	# SIGKILL dst attach during writes: systemd restarts it, the writes
	# go on without an error.
	mkdir -p /mnt/data/during
	writefiles /mnt/data/during &
	W=$!
	sleep 1
	KILLED=$(up)
	systemctl kill -s SIGKILL 'dst-attach@data'
	wait $W || fail "writes failed across the SIGKILL of dst attach"
	echo "STEP writes-done-after-kill $(awk -v s="$KILLED" -v e="$(up)" 'BEGIN {printf "%.1f", e - s}')"
	[ "$(systemctl show -P NRestarts 'dst-attach@data')" -ge 1 ] || fail "systemd did not restart dst-attach@data"
	systemctl is-active -q 'dst-attach@data' || fail "dst-attach@data is not active after its restart"
	journalctl --no-pager -b -u 'dst-attach@data' | grep -q 'reconfigured=true' || fail "the restarted dst attach did not take the device over"
	[ "$(cat /sys/block/nbd0/queue/io_timeout)" = 5000 ] || fail "io_timeout is $(cat /sys/block/nbd0/queue/io_timeout) under the unit's sandbox, want 5000"
	step verify-after-kill verifyfiles /mnt/data/during
	links_to /dev/nbd0
	verifyfiles /mnt/data
	no_io_errors

	# Stop: unmount first, then the attachment detaches cleanly.
	step umount umount /mnt/data
	step stop-attach systemctl stop 'dst-attach@data'
	[ "$(systemctl show -P ActiveState 'dst-attach@data')" = inactive ] || fail "dst-attach@data is $(systemctl show -P ActiveState 'dst-attach@data') after stop"
	[ "$(cat /sys/block/nbd0/size)" = 0 ] || fail "nbd0 still has a size after the stop"
	udevadm settle
	[ ! -e /dev/dst/data ] || fail "/dev/dst/data is left after the detach: $(ls -l /dev/dst)"
	if ls /dev/disk/by-id/dst-* 2>/dev/null; then fail "a /dev/disk/by-id/dst- link is left after the detach"; fi
	step stop-serve systemctl stop dst-serve
	[ "$(systemctl show -P ActiveState dst-serve)" = inactive ] || fail "dst-serve is $(systemctl show -P ActiveState dst-serve) after stop"
	if journalctl --no-pager -b -u dst-serve -u 'dst-attach@data' | grep -iE 'permission denied|operation not permitted|read-only file system'; then
		fail "the sandbox refused something"
	fi
	# Purge: the configuration goes, the keys stay unless asked.
	step purge dpkg --purge dst
	if [ -e /usr/bin/dst ] || [ -e /lib/systemd/system/dst-serve.service ]; then fail "purge left dst's files"; fi
	[ ! -e /etc/dst/serve.toml ] || fail "purge left /etc/dst/serve.toml"
	if [ ! -s /etc/dst/server.key ] || [ ! -s /etc/dst/client.key ]; then fail "purge removed the keys"; fi
	echo "systemd scenario passed"
	;;
esac
