# Flushes reach the server: every fsync on ext4 ends in an NBD FLUSH, which
# the host server serves with fdatasync; the driver counts those.
# shellcheck shell=sh source=SCRIPTDIR/vmlib.sh
. /opt/vmlib.sh
attach a disk /dev/nbd0
mkfs.ext4 -q -F /dev/nbd0
mkdir -p /mnt/a
mount /dev/nbd0 /mnt/a
sync
before=$(vmctl flushes a)
for i in 1 2 3 4 5; do
	dd if=/dev/urandom of=/mnt/a/small$i bs=4k count=4 conv=fsync 2>/dev/null
done
after_fsync=$(vmctl flushes a)
dd if=/dev/urandom of=/mnt/a/big bs=1M count=4 2>/dev/null
sync
after_sync=$(vmctl flushes a)
echo "server flushes: before $before, after 5 fsyncs $after_fsync, after sync $after_sync"
[ $((after_fsync - before)) -ge 5 ] || fail "5 fsyncs made $((after_fsync - before)) server flushes, want >= 5"
[ "$after_sync" -gt "$after_fsync" ] || fail "sync made no server flush"
umount /mnt/a
no_io_errors
dst detach /dev/nbd0
