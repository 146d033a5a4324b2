# The fresh-device guard: attach, partition scan and a burst of reads
# right after the device starts, detach, $CYCLES times, with real-time
# spinners on every CPU while the device starts (the forcing recipe of the
# nbd receive-work starvation: the kernel is slow to create a worker, and
# the workqueue's rescuer takes over). Every cycle: as many threads in
# recv_work as the device has sockets, and an O_DIRECT read pinned to each
# CPU returns within 2 s. $QUEUES, if set, is passed as --queues.
# $SPIN_CPUS (default: every CPU) says where the spinners run, and
# $KTHREADD_CPU, if set, pins kthreadd (which creates every kernel worker)
# to that CPU while they do: with a spinner there and real-time throttling,
# a new worker takes up to a second, far past the workqueue's mayday
# timeout, while the other CPUs stay free for the rescuer.
# shellcheck shell=sh source=SCRIPTDIR/vmlib.sh
. /opt/vmlib.sh
: "${CYCLES:=5}"
ncpu=$(nproc)

# spin SECONDS: a SCHED_FIFO busy loop on each CPU. The device starts
# while they run: dst attach, kthreadd and the kernel's workers get only
# what real-time throttling leaves (5%).
spin() {
	spinners=""
	for c in ${SPIN_CPUS:-$(seq 0 $((ncpu - 1)))}; do
		timeout "$1" taskset -c "$c" chrt -f 10 sh -c 'while :; do :; done' &
		spinners="$spinners $!"
	done
}

wait_spinners() {
	for p in $spinners; do wait "$p" 2>/dev/null || true; done
}

stalls=0
for cycle in $(seq "$CYCLES"); do
	kthreadd=2 # always
	[ -z "${KTHREADD_CPU:-}" ] || taskset -p -c "$KTHREADD_CPU" "$kthreadd" >/dev/null
	spin "${SPIN:-6}"
	# What runs recv_work 4 s into the start, when a starved start is
	# still hanging in its partition scan: shown if the cycle stalls.
	(
		sleep 4
		grep -l recv_work /proc/[0-9]*/stack 2>/dev/null | while read -r f; do
			echo "  4 s into the start: ${f%/stack} $(cat "${f%/stack}/comm") in recv_work"
		done
	) >/tmp/recv.during 2>&1 &
	sampler=$!
	attach a disk /dev/nbd0 --io-timeout 5s ${QUEUES:+--queues "$QUEUES"}
	wait "$sampler" 2>/dev/null || true
	wait_spinners
	[ -z "${KTHREADD_CPU:-}" ] || taskset -p -c "0-$((ncpu - 1))" "$kthreadd" >/dev/null
	sockets=$(find /sys/block/nbd0/mq -mindepth 1 -maxdepth 1 | wc -l)
	# The partition scan has run on attach; now a burst from every CPU.
	bad=0 pids=""
	for c in $(seq 0 $((ncpu - 1))); do
		for k in 1 2 3 4; do
			taskset -c "$c" timeout 2 dd if=/dev/nbd0 of=/dev/null bs=4096 count=1 \
				skip=$(((cycle * 97 + c * 13 + k) % 8192)) iflag=direct 2>/dev/null &
			pids="$pids $!"
		done
	done
	for j in $pids; do wait "$j" || bad=$((bad + 1)); done
	recv=$(grep -l recv_work /proc/[0-9]*/stack 2>/dev/null | wc -l)
	echo "cycle $cycle: $sockets socket(s), $recv thread(s) in recv_work, $bad read(s) over 2 s"
	if [ "$bad" -gt 0 ] || [ "$recv" -ne "$sockets" ]; then
		stalls=$((stalls + 1))
		cat /tmp/recv.during
		grep -l recv_work /proc/[0-9]*/stack 2>/dev/null | while read -r f; do
			echo "  ${f%/stack}: $(cat "${f%/stack}/comm")"
		done
	fi
	dst detach /dev/nbd0
	wait "$ATTACH_PID" 2>/dev/null || true
done
# The spinners starve attach too: how often it gave up on its session
# (keepalives) is a figure, not a failure; the reads above are the test.
lost=$(grep -c "connection to server lost" /tmp/attach.log || true)
grep "connection to server lost" /tmp/attach.log | sed 's/^/  /' || true
echo "FRESHDEV $stalls stall(s) in $CYCLES cycle(s) with ${QUEUES:-default} queues; attach lost its session $lost time(s)"
[ "$stalls" -eq 0 ] || fail "$stalls of $CYCLES cycles stalled"
