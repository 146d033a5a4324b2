# ext4 on /dev/nbd0 attached through netlink: mkfs, write and fsync files,
# unmount, a clean e2fsck, remount, verify checksums.
# shellcheck shell=sh source=SCRIPTDIR/vmlib.sh
. /opt/vmlib.sh
attach a disk /dev/nbd0 --queues 2
dst list
cat /sys/block/nbd0/backend
t mkfs.ext4 -q -F /dev/nbd0
mkdir -p /mnt/a
mount /dev/nbd0 /mnt/a
t writefiles /mnt/a/data 4 4
checkfs /dev/nbd0 /mnt/a /mnt/a/data
t dst detach /dev/nbd0
wait "$ATTACH_PID" || fail "dst attach exited $? after detach"
