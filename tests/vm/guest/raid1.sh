# raid1 with metadata (scripts/dst-mirror's default: dm-raid with a
# superblock and write-intent bitmap at the start of each leg) over two dst
# devices from two host servers, ext4 on top. Server b is killed for
# longer than its leg's io-timeout: the leg is marked faulty and writes go
# on. b comes back: without a repair the mirror stays degraded; after
# dst-mirror repair only the regions written meanwhile are copied, and the
# legs' data parts are byte-identical.
# Host side: servers a and b, each exporting "disk" (256 MiB); the driver
# copies scripts/dst-mirror to /opt.
# shellcheck shell=sh source=SCRIPTDIR/vmlib.sh
. /opt/vmlib.sh
mirror() { sh /opt/dst-mirror "$@"; }
IOT=10s
modprobe dm-raid

# written DEV: sectors written to DEV since boot.
written() { awk '{print $7}' "/sys/block/${1#/dev/}/stat"; }

attach a disk /dev/nbd0 --io-timeout "$IOT"
attach b disk /dev/nbd1 --io-timeout "$IOT"
t mirror create mir --nosync /dev/nbd0 /dev/nbd1
mirror status mir
dmsetup table mir
mirror status mir | head -1 | grep -q '^mir: raid1, legs: 2, in sync$' || fail "new raid1 not in sync"
for p in /dev/mapper/mir_rmeta_nbd1 /dev/mapper/mir_rimage_nbd1; do
	[ -b "$p" ] || fail "no $p: the raid1 has no metadata and data parts for nbd1"
done
mkfs.ext4 -q -F /dev/mapper/mir
mkdir -p /mnt/m
mount -t ext4 /dev/mapper/mir /mnt/m
t writefiles /mnt/m/before 4 2

echo "=== killing server b for longer than the leg's io-timeout ($IOT)"
vmctl kill-server b
t writefiles /mnt/m/degraded 8 1 || fail "writes failed with one leg dead"
mirror status mir
mirror status mir | head -1 | grep -q DEGRADED || fail "raid1 not degraded with server b dead"
mirror status mir | grep -q 'leg 1 .*DEAD' || fail "leg 1 (nbd1) not marked dead"

echo "=== bringing server b back, no repair yet"
vmctl start-server b
wait_readable /dev/nbd1 60
t writefiles /mnt/m/back 2 1
# What a user sees: the leg reads again, but the raid1 does not take it
# back by itself.
mirror status mir
mirror status mir | head -1 | grep -q DEGRADED || fail "expected the raid1 to stay degraded until a repair"

echo "=== repair: only what was written while b was away is copied"
before=$(written /dev/nbd1)
t mirror repair mir
t mirror wait mir 600
copied=$(($(written /dev/nbd1) - before))
leg=$(blockdev --getsz /dev/mapper/mir_rimage_nbd1)
echo "RESYNC wrote $((copied / 2048)) MiB of a $((leg / 2048)) MiB leg ($((copied * 100 / leg))%; a full resync copies all of it)"
[ $((copied * 10)) -le "$leg" ] || fail "the resync copied more than a tenth of the leg"

umount /mnt/m
e2fsck -f -n /dev/mapper/mir
sync
echo 3 >/proc/sys/vm/drop_caches
t cmp /dev/mapper/mir_rimage_nbd0 /dev/mapper/mir_rimage_nbd1 || fail "legs differ after the resync"
echo "LEGS IDENTICAL after repair and resync"
mount -t ext4 /dev/mapper/mir /mnt/m
for d in before degraded back; do verifyfiles "/mnt/m/$d"; done
umount /mnt/m
t mirror remove mir
if dmsetup ls | grep -q '^mir_'; then
	dmsetup ls
	fail "sub-devices left after remove"
fi
dst detach /dev/nbd0
dst detach /dev/nbd1
