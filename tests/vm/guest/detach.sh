# dst detach leaves no device attached; SIGTERM detaches cleanly; --device
# auto picks a free device; a read-only export gives a read-only device.
# shellcheck shell=sh source=SCRIPTDIR/vmlib.sh
. /opt/vmlib.sh
attach a disk /dev/nbd0
dst list
t dst detach /dev/nbd0
wait "$ATTACH_PID" || fail "dst attach exited $? after dst detach"
dst list | grep -q nbd0 && fail "nbd0 still listed after detach"
[ "$(cat /sys/block/nbd0/size)" = 0 ] || fail "nbd0 still has a size after detach"
[ ! -e /run/dst/nbd0.json ] || fail "state file left behind"

# SIGTERM: a clean detach, exit 0.
attach a disk /dev/nbd0
kill -TERM "$ATTACH_PID"
wait "$ATTACH_PID" || fail "dst attach exited $? on SIGTERM"
[ "$(cat /sys/block/nbd0/size)" = 0 ] || fail "nbd0 still has a size after SIGTERM"

# --device auto prints the device it took.
# shellcheck disable=SC2154 # DST_SERVER_KEY_a and DST_SERVER_a come from /opt/vm.env
dst attach --key "$DST_KEY" --server-key "$DST_SERVER_KEY_a" --device auto "$DST_SERVER_a" disk >/tmp/auto.out 2>>/tmp/attach.log &
AUTO=$!
for _i in $(seq 300); do [ -s /tmp/auto.out ] && break; sleep 0.1; done
dev=$(cat /tmp/auto.out)
echo "auto picked $dev"
case "$dev" in /dev/nbd[0-9]*) ;; *) fail "--device auto printed '$dev'" ;; esac
wait_attached "$dev" "$AUTO"
dst detach "$dev"
wait "$AUTO" || fail "auto attach exited $?"

# A read-only export: the kernel device is read-only and writes fail.
attach a ro /dev/nbd1
[ "$(blockdev --getro /dev/nbd1)" = 1 ] || fail "read-only export gave a writable device"
dd if=/dev/nbd1 of=/dev/null bs=64k count=16 2>/dev/null || fail "cannot read the read-only device"
no_io_errors
if dd if=/dev/zero of=/dev/nbd1 bs=4k count=1 conv=fsync 2>/dev/null; then
	fail "a write to the read-only device succeeded"
fi
dst detach /dev/nbd1
wait "$ATTACH_PID" || fail "dst attach exited $? after detach"
dst list | grep -q nbd && fail "devices still attached: $(dst list)"
echo "no device attached"
