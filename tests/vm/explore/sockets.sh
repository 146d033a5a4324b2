# sockets.sh: one kernel socket against two, fio in the guest, rounds A B A B.
# Not a test: run it by hand, with fio copied in:
#   DST_VM_TOOLS=fio DST_VM_SCRIPT=$PWD/tests/vm/explore/sockets.sh \
#     go test -tags vmscript ./tests/vm -run TestVMScript -v
# shellcheck shell=sh source=SCRIPTDIR/../guest/vmlib.sh
. /opt/vmlib.sh
run() {
	q=$1 r=$2
	attach a disk /dev/nbd0 --queues "$q" 2>/dev/null
	echo "round $r queues $q hwq=$(find /sys/block/nbd0/mq -mindepth 1 -maxdepth 1 | wc -l)"
	for job in randread:32 randwrite:32 randread:1; do
		fio --name=x --filename=/dev/nbd0 --direct=1 --ioengine=libaio --bs=4k --rw="${job%:*}" --iodepth="${job#*:}" \
			--numjobs=2 --group_reporting --time_based --runtime=10 --size=100M --output-format=terse --terse-version=3 2>/dev/null |
			awk -F';' -v q="$q" -v r="$r" -v j="$job" '{ printf "RESULT round=%s queues=%s job=%s read_iops=%s write_iops=%s\n", r, q, j, $8, $49 }'
	done
	dst detach /dev/nbd0
	sleep 1
}
run 1 1; run 2 1; run 1 2; run 2 2
