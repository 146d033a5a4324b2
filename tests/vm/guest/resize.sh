# An export that grows on the host grows the device under a mounted ext4:
# the kernel device takes the new size (NBD_CMD_RECONFIGURE) and says so,
# resize2fs grows the file system online, and its files and the new space
# are usable.
# shellcheck shell=sh source=SCRIPTDIR/vmlib.sh
. /opt/vmlib.sh
attach a disk /dev/nbd0 --name data
before=$(blockdev --getsize64 /dev/nbd0)
echo "device size $before"
mkfs.ext4 -q -F /dev/nbd0
mkdir -p /mnt/a
mount /dev/nbd0 /mnt/a
writefiles /mnt/a/data 4 4
fs_before=$(df -k /mnt/a | awk 'NR == 2 {print $2}')

grown=$((before * 2))
vmctl grow "a?export=disk&size=$grown"
for _i in $(seq 100); do
	[ "$(blockdev --getsize64 /dev/nbd0)" = "$grown" ] && break
	sleep 0.1
done
after=$(blockdev --getsize64 /dev/nbd0)
[ "$after" = "$grown" ] || { cat /tmp/attach.log; fail "device size $after after the export grew to $grown"; }
echo "device grew to $after"
dmesg | grep 'nbd0: detected capacity change' || fail "the kernel did not report nbd0's new capacity"
dst status --json data | grep -Eq "\"size\": ?$grown" || fail "dst status does not show the new size"

t resize2fs /dev/nbd0
fs_after=$(df -k /mnt/a | awk 'NR == 2 {print $2}')
echo "file system $fs_before -> $fs_after KiB"
[ "$fs_after" -gt $((fs_before * 3 / 2)) ] || fail "the file system did not grow"
# More than the old file system held: it must use the new space.
writefiles /mnt/a/more 4 40
checkfs /dev/nbd0 /mnt/a /mnt/a/data
mount /dev/nbd0 /mnt/a
verifyfiles /mnt/a/more
umount /mnt/a
dst detach /dev/nbd0
wait "$ATTACH_PID" || fail "dst attach exited $?"
