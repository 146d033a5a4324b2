# vmlib.sh - sourced by every guest scenario (busybox ash, under sh -e).
# The Go driver (vm_test.go) writes /opt/vm.env with, per host server NAME,
# DST_SERVER_NAME=10.0.2.2:PORT and DST_SERVER_KEY_NAME=<public key>, plus
# DST_KEY (the client key) and DST_VMCTL (the driver's control address).
# shellcheck shell=sh

# shellcheck source=/dev/null # /opt/vm.env is written by the driver at run time
[ -f /opt/vm.env ] && . /opt/vm.env
VMLIB_START=$(cut -d' ' -f1 /proc/uptime)
# busybox modprobe does not resolve the kernel's fs-ext4 request; nbd is
# left for dst attach to load.
modprobe ext4

# On exit, whatever the status: the kernel log since the scenario started.
vmlib_exit() {
	rc=$?
	if [ $rc != 0 ] && [ -f /tmp/attach.log ]; then
		echo "--- dst attach log (tail) ---"
		tail -n 60 /tmp/attach.log
	fi
	echo "--- dmesg (since the scenario started) ---"
	dmesg | awk -v s="$VMLIB_START" '{t = $0; sub(/^\[ */, "", t); if (t + 0 >= s) print}'
	echo "--- end of dmesg; scenario exit $rc ---"
	exit $rc
}
trap vmlib_exit EXIT

# t CMD...: run CMD and print how long it took in the guest.
t() {
	_s=$(cut -d' ' -f1 /proc/uptime)
	"$@"
	echo "TIME $(awk -v s="$_s" -v e="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN {printf "%.1f", e - s}')s: $*"
}

fail() { echo "FAIL: $*"; exit 1; }

# attach SERVER EXPORT DEV [FLAGS...]: run dst attach in the background
# against host server SERVER, wait until DEV is usable; sets ATTACH_PID.
# Its log goes to /tmp/attach.log (appended, so restarts keep history).
attach() {
	_srv=$1 _exp=$2 _dev=$3; shift 3
	eval "_addr=\$DST_SERVER_$_srv _key=\$DST_SERVER_KEY_$_srv"
	[ -n "$_addr" ] || fail "attach: no host server $_srv in /opt/vm.env"
	# shellcheck disable=SC2154 # _key is assigned by the eval above
	dst attach --key "$DST_KEY" --server-key "$_key" "$@" "$_addr" "$_exp" "$_dev" >>/tmp/attach.log 2>&1 &
	ATTACH_PID=$!
	wait_attached "$_dev" "$ATTACH_PID"
}

# wait_attached DEV PID: wait until the kernel device has a size and dst
# list shows it connected by PID.
wait_attached() {
	_n=${1#/dev/}
	for _i in $(seq 600); do
		if [ "$(cat "/sys/block/$_n/size" 2>/dev/null || echo 0)" != 0 ] &&
			dst list 2>/dev/null | grep -q "^$1 .* connected *$2\$"; then
			return 0
		fi
		kill -0 "$2" 2>/dev/null || { cat /tmp/attach.log; fail "dst attach $1 exited"; }
		sleep 0.1
	done
	cat /tmp/attach.log
	fail "$1 not attached after 60s"
}

# wait_readable DEV SECONDS: wait until a direct read of DEV's first block
# succeeds (its server is back and dst attach has redialled).
wait_readable() {
	for _i in $(seq "$2"); do
		[ "$(dd if="$1" bs=4096 count=1 iflag=direct 2>/dev/null | wc -c)" -eq 4096 ] && return 0
		sleep 1
	done
	fail "$1 does not read after ${2}s"
}

# vmctl VERB SERVER[?QUERY]: ask the host driver to act on host server
# SERVER (kill-server, start-server, stop-server, flushes,
# grow?export=NAME&size=BYTES); prints its answer.
vmctl() {
	wget -q -O - "http://$DST_VMCTL/$1/$2" || fail "vmctl $1 $2"
}

# no_io_errors: fail when the kernel log shows a failed block request or a
# filesystem error since the scenario started.
no_io_errors() {
	if dmesg | awk -v s="$VMLIB_START" '{t = $0; sub(/^\[ */, "", t); if (t + 0 >= s) print}' |
		grep -iE 'I/O error|print_req_error|EXT4-fs error|EXT4-fs warning|Buffer I/O|journal.*abort|Remounting filesystem read-only'; then
		fail "the kernel log shows I/O errors"
	fi
	echo "no I/O errors in the kernel log"
}

# writefiles DIR N MIB: write N files of MIB MiB of random data, each
# fsynced, and record their checksums in DIR.sums (outside DIR).
writefiles() {
	mkdir -p "$1"
	for _i in $(seq "$2"); do
		dd if=/dev/urandom of="$1/f$_i" bs=1M count="$3" conv=fsync 2>/dev/null
	done
	(cd "$1" && sha1sum f*) >"/tmp/$(basename "$1").sums"
}

# checkfs DEV MNT DIR: unmount MNT, check DEV's filesystem, mount it
# again and verify DIR's files (DIR under MNT, written by writefiles), then
# unmount and check the kernel logged no I/O error.
checkfs() {
	umount "$2"
	t e2fsck -f -n "$1"
	mount "$1" "$2"
	t verifyfiles "$3"
	umount "$2"
	no_io_errors
}

# verifyfiles DIR: check DIR's files against what writefiles recorded,
# reading from the device rather than the page cache.
verifyfiles() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
	(cd "$1" && sha1sum -c "/tmp/$(basename "$1").sums") || fail "checksums differ in $1"
}
