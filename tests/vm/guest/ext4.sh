# ext4 on /dev/nbd0 attached through netlink: mkfs, write and fsync files,
# unmount, a clean e2fsck, remount, verify checksums. With BUSY_POLL set,
# dst attach polls before sleeping (--busy-poll BUSY_POLL), the kernel's
# socket included, and its status must show rounds of polling.
# shellcheck shell=sh source=SCRIPTDIR/vmlib.sh
. /opt/vmlib.sh
attach a disk /dev/nbd0 ${BUSY_POLL:+--busy-poll "$BUSY_POLL"}
dst list
# Debian's 6.1 lacks the workqueue rescuer fix: the device gets one socket.
queues=$(find /sys/block/nbd0/mq -mindepth 1 -maxdepth 1 | wc -l)
[ "$queues" = 1 ] || fail "nbd0 has $queues hardware queues, want 1 on $(uname -r)"
cat /sys/block/nbd0/backend
t mkfs.ext4 -q -F /dev/nbd0
mkdir -p /mnt/a
mount /dev/nbd0 /mnt/a
t writefiles /mnt/a/data 4 4
checkfs /dev/nbd0 /mnt/a /mnt/a/data
if [ -n "${BUSY_POLL:-}" ]; then
	dst status | grep -E "busy polling +[1-9][0-9]* rounds" || fail "dst status shows no rounds of busy polling"
fi
t dst detach /dev/nbd0
wait "$ATTACH_PID" || fail "dst attach exited $? after detach"
