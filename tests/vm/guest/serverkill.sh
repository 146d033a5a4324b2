# SIGKILL the host server during writes and restart it: the writes
# complete, the kernel log shows no I/O error, the data verifies.
# shellcheck shell=sh source=SCRIPTDIR/vmlib.sh
. /opt/vmlib.sh
attach a disk /dev/nbd0
mkfs.ext4 -q -F /dev/nbd0
mkdir -p /mnt/a
mount /dev/nbd0 /mnt/a
writefiles /mnt/a/data 8 4 &
W=$!
sleep 2
vmctl kill-server a
sleep 3
vmctl start-server a
t wait $W || fail "writes failed across the server restart"
kill -0 "$ATTACH_PID" || fail "dst attach died with the server"
checkfs /dev/nbd0 /mnt/a /mnt/a/data
dst detach /dev/nbd0
