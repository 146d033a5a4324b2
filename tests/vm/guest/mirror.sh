# A dm mirror (scripts/dst-mirror: dm-mirror, no handle_errors) over two
# dst devices from two host servers, ext4 on top. Server b is killed for
# longer than its leg's io-timeout: the leg fails, the mirror degrades and
# keeps serving writes.
# dst-mirror repair drops the dead leg; b comes back, repair adds it again,
# the resync copies it in full, and the two legs are byte-identical.
# Host side: servers a and b, each exporting "disk" (64 MiB); the driver
# copies scripts/dst-mirror to /opt.
# shellcheck shell=sh source=SCRIPTDIR/vmlib.sh
. /opt/vmlib.sh
# mirror ARGS...: the dst-mirror under test, copied to /opt by the driver.
mirror() { sh /opt/dst-mirror "$@"; }
IOT=10s
modprobe dm-mirror

# other_io_errors: fail on a kernel I/O error anywhere but on nbd1, the leg
# whose server is killed on purpose, or on a file system error.
other_io_errors() {
	if dmesg | awk -v s="$VMLIB_START" '{t = $0; sub(/^\[ */, "", t); if (t + 0 >= s) print}' |
		grep -iE 'I/O error|print_req_error|EXT4-fs error|EXT4-fs warning|journal.*abort|Remounting filesystem read-only' |
		grep -v -e nbd1 -e 'callbacks suppressed'; then
		fail "the kernel log shows I/O errors beyond the failed leg nbd1"
	fi
	echo "kernel log: I/O errors only on the failed leg"
}

# The legs fail a request after IOT without an answer, so a dead server
# costs the mirror one stall of IOT, not the default two minutes.
attach a disk /dev/nbd0 --io-timeout "$IOT"
attach b disk /dev/nbd1 --io-timeout "$IOT"

# Fresh sparse exports read as zeros on both legs: no initial copy needed.
t mirror create mir --type mirror --nosync /dev/nbd0 /dev/nbd1
mirror status mir
mirror status mir | head -1 | grep -q ', in sync$' || fail "new mirror not in sync"
# Follow the mirror as the kernel sees it, for the whole scenario.
mirror events mir >/tmp/events.out 2>&1 &
EVENTS=$!
mkfs.ext4 -q -F /dev/mapper/mir
mkdir -p /mnt/m
mount -t ext4 /dev/mapper/mir /mnt/m
t writefiles /mnt/m/before 4 2

echo "=== killing server b for longer than the leg's io-timeout ($IOT)"
vmctl kill-server b
# Each file is fsynced: the first write to reach nbd1 waits IOT and fails
# there; dm-mirror marks the leg dead and acknowledges the writes from
# nbd0. It still sends writes to the dead leg, so every flush costs IOT
# until the leg is dropped.
t writefiles /mnt/m/degraded 2 2 || fail "writes failed with one leg dead"
mirror status mir
dmsetup status mir
mirror status mir | head -1 | grep -q DEGRADED || fail "mirror not degraded with server b dead"
mirror status mir | grep -q 'leg 1 .*DEAD' || fail "leg 1 (nbd1) not marked dead"
verifyfiles /mnt/m/before
verifyfiles /mnt/m/degraded

echo "=== repair with b still dead: the dead leg is dropped"
t mirror repair mir
mirror status mir | head -1 | grep -q 'DEGRADED to one leg' || fail "repair did not drop the dead leg"
t writefiles /mnt/m/single 2 2

echo "=== bringing server b back"
vmctl start-server b
# dst attach redials by itself; wait until the leg reads again.
wait_readable /dev/nbd1 60
kill -0 "$ATTACH_PID" || fail "dst attach for nbd1 died"

# nbd1 returns as a new leg, copied in full from nbd0.
t mirror repair mir /dev/nbd1
# Writes during the resync must land on both legs too.
writefiles /mnt/m/during 2 2
t mirror wait mir 300 >/tmp/wait.out || { cat /tmp/wait.out; fail "mirror wait failed"; }
cat /tmp/wait.out
# Not a terminal: a progress line per tenth of the resync, never going back.
grep -q '^mir: resyncing [0-9]*% ([0-9]*/[0-9]* regions)$' /tmp/wait.out || fail "mirror wait printed no progress"
sed -n 's/^mir: resyncing \([0-9]*\)% .*/\1/p' /tmp/wait.out | awk 'NR > 1 && $1 <= last { bad = 1 } { last = $1 } END { exit bad }' ||
	fail "mirror wait's progress went back or repeated"
mirror status mir
dmsetup status mir
sleep 1
watching=yes
kill "$EVENTS" 2>/dev/null || watching=no
echo "--- dst-mirror events:"
cat /tmp/events.out
[ "$watching" = yes ] || fail "dst-mirror events ended before the scenario did"
grep -q 'mir: mirror, in-sync, legs /dev/nbd0:alive /dev/nbd1:alive' /tmp/events.out || fail "events did not start with the mirror's state"
grep -q 'mir: leg /dev/nbd1 failed' /tmp/events.out || fail "events did not report the failed leg"
grep -q 'mir: resyncing' /tmp/events.out || fail "events did not report the resync"
tail -n 3 /tmp/events.out | grep -q 'mir: in-sync' || fail "events did not report the end of the resync"

umount /mnt/m
e2fsck -f -n /dev/mapper/mir
# Compare the legs themselves, not the page cache of writes made through dm.
sync
echo 3 >/proc/sys/vm/drop_caches
t cmp /dev/nbd0 /dev/nbd1 || fail "legs differ after the resync"
echo "LEGS IDENTICAL after repair and resync"

mount -t ext4 /dev/mapper/mir /mnt/m
for d in before degraded single during; do verifyfiles "/mnt/m/$d"; done
umount /mnt/m
t mirror remove mir
other_io_errors
dst detach /dev/nbd0
dst detach /dev/nbd1
