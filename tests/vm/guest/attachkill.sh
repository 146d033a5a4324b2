# SIGKILL dst attach during writes and start it again: it reconfigures the
# device within the dead-connection timeout, the kernel resends what it
# held, the filesystem sees no error and the data verifies.
#
# Requests that were in flight on the dead process's sockets are resent at
# the kernel's next look at them (dst sets no NBD timeout and a 5 s queue
# io_timeout; kernel.RequeuesOnRecheck): every write in flight at the kill
# completes within 10 s of the restart, with the default --io-timeout (2 min)
# that used to make them wait 2.5 min.
# shellcheck shell=sh source=SCRIPTDIR/vmlib.sh
. /opt/vmlib.sh
up() { cut -d' ' -f1 /proc/uptime; }
attach a disk /dev/nbd0
[ "$(cat /sys/block/nbd0/queue/io_timeout)" = 5000 ] || fail "io_timeout $(cat /sys/block/nbd0/queue/io_timeout), want 5000"
mkfs.ext4 -q -F /dev/nbd0
mkdir -p /mnt/a
mount /dev/nbd0 /mnt/a
writefiles /mnt/a/data 8 4 &
W=$!
# Direct writers keep requests in flight at the kill, until the restart.
PROBES=
for w in 1 2 3 4; do
	(
		i=0
		while [ ! -e /tmp/stop ]; do
			dd if=/dev/urandom of="/mnt/a/probe$w" bs=1M count=1 seek=$((i % 8)) oflag=direct conv=notrunc 2>/dev/null ||
				{ echo "probe $w: write $i failed"; exit 1; }
			i=$((i + 1))
		done
	) &
	PROBES="$PROBES $!"
done
# The files first: what they write after the restart would count as the
# stall. The probes go on writing through the kill.
t wait $W || fail "writes failed before the kill"
sleep 1
kill -9 "$ATTACH_PID"
sleep 1
dst list
dst list | grep -q '^/dev/nbd0 .* dead ' || fail "dst list does not show nbd0 dead"
RESTART=$(up)
touch /tmp/stop # the probes issue no more writes
t attach a disk /dev/nbd0
grep -q 'reconfigured=true' /tmp/attach.log || fail "the restarted dst attach did not reconfigure"
[ "$(cat /sys/block/nbd0/queue/io_timeout)" = 5000 ] || fail "io_timeout after the reconfigure $(cat /sys/block/nbd0/queue/io_timeout), want 5000"
for p in $PROBES; do wait "$p" || fail "a direct write failed across the dst attach restart"; done
sync
awk -v r="$RESTART" -v d="$(up)" 'BEGIN {
	printf "every write done %.1fs after the restart\n", d - r
	exit (d - r <= 10) ? 0 : 1 }' || fail "writes in flight at the kill took more than 10 s after the restart"
# The kernel says which requests it found on the dead socket and resent.
caught=$(dmesg | grep -c 'Possible stuck request' || true)
echo "requests caught by the kill and resent: $caught"
[ "$caught" -gt 0 ] || fail "the kill caught no request in flight: the scenario proved nothing"
checkfs /dev/nbd0 /mnt/a /mnt/a/data
dst detach /dev/nbd0
