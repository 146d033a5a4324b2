# SIGKILL dst attach during writes and start it again: it reconfigures the
# device within the dead-connection timeout, the kernel resends what it
# held, the filesystem sees no error and the data verifies.
#
# Requests in flight when the sockets died are resent only when the kernel's
# request timeout fires (io-timeout + 30s), so a short io-timeout keeps the
# stall short.
# shellcheck shell=sh source=SCRIPTDIR/vmlib.sh
. /opt/vmlib.sh
attach a disk /dev/nbd0 --io-timeout 5s
mkfs.ext4 -q -F /dev/nbd0
mkdir -p /mnt/a
mount /dev/nbd0 /mnt/a
writefiles /mnt/a/data 8 4 &
W=$!
sleep 2
kill -9 "$ATTACH_PID"
sleep 1
dst list
dst list | grep -q '^/dev/nbd0 .* dead ' || fail "dst list does not show nbd0 dead"
t attach a disk /dev/nbd0 --io-timeout 5s
grep -q 'reconfigured=true' /tmp/attach.log || fail "the restarted dst attach did not reconfigure"
t wait $W || fail "writes failed across the dst attach restart"
checkfs /dev/nbd0 /mnt/a /mnt/a/data
dst detach /dev/nbd0
