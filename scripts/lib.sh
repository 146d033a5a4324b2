# shellcheck shell=bash
# lib.sh: helpers shared by scripts/test, scripts/demo, scripts/bench and scripts/vulncheck.
# Source it; it defines functions and a few constants (plus the cleanup trap
# once lib_init is called).

# Repository root, whatever the caller's working directory.
DST_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The Go dst is built and tested with (README, "Go version"): the go command
# fetches it from the module proxy the first time. Go 1.26.8's net/http and
# crypto/x509 have known vulnerabilities that the status sockets and the
# metrics endpoint would reach (scripts/vulncheck fails on them).
# DST_GOTOOLCHAIN=local builds with whatever go is installed.
export GOTOOLCHAIN=${DST_GOTOOLCHAIN:-go1.27.3}

log()  { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { log "FATAL: $*"; exit 1; }

# --- cleanup -----------------------------------------------------------------
# Commands registered with on_exit run in reverse order on exit, whatever
# the cause, so a half-started chain is still torn down.
_LIB_CLEANUPS=()
on_exit() { _LIB_CLEANUPS+=("$*"); }
_lib_run_cleanups() {
	local rc=$? i
	set +e
	for ((i = ${#_LIB_CLEANUPS[@]} - 1; i >= 0; i--)); do
		eval "${_LIB_CLEANUPS[i]}" >/dev/null 2>&1
	done
	exit "$rc"
}
lib_init() {
	trap _lib_run_cleanups EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# stop_pid PID [TIMEOUT_SECONDS]: SIGTERM, then SIGKILL if it lingers.
stop_pid() {
	local pid=$1 t=${2:-10} i
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null
	for ((i = 0; i < t * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
		sleep 0.1
	done
	log "pid $pid ignored SIGTERM for ${t}s, killing"
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	return 0
}

# --- waiting -----------------------------------------------------------------
# wait_for WHAT PID TIMEOUT CMD...: run CMD every 0.1 s until it succeeds;
# fail early if PID died, or after TIMEOUT seconds.
wait_for() {
	local what=$1 pid=$2 t=$3 i
	shift 3
	for ((i = 0; i < t * 10; i++)); do
		"$@" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || { log "pid $pid exited before $what"; return 1; }
		sleep 0.1
	done
	log "timeout waiting for $what"
	return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1"); }

# wait_socket PATH PID [TIMEOUT]: wait for a unix socket to appear.
wait_socket() { wait_for "socket $1" "$2" "${3:-30}" test -S "$1"; }

# wait_port PORT PID [TIMEOUT]: wait until 127.0.0.1:PORT accepts connections.
wait_port() { wait_for "port $1 to open" "$2" "${3:-30}" port_open "$1"; }

# wait_log FILE PATTERN PID [TIMEOUT]: wait for a line matching PATTERN in FILE.
wait_log() { wait_for "'$2' in $1" "$3" "${4:-30}" grep -q -- "$2" "$1"; }

# free_port: print a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# --- tools -------------------------------------------------------------------
# need_tools CMD...: fail listing every missing command.
need_tools() {
	local missing=() c
	for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
	[ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]}"
}

# tool_package CMD: the Debian package that provides CMD.
tool_package() {
	case $1 in
	nbdinfo | nbdcopy) echo libnbd-bin ;;
	qemu-img | qemu-io | qemu-nbd) echo qemu-utils ;;
	qemu-storage-daemon) echo qemu-system-common ;;
	nbdkit) echo nbdkit ;;
	nbd-server) echo nbd-server ;;
	fio) echo fio ;;
	mkfs.ext4 | e2fsck) echo e2fsprogs ;;
	fusermount3) echo fuse3 ;;
	losetup | mount | umount) echo mount ;;
	blockdev | mountpoint | setpriv) echo util-linux ;;
	psktool | certtool) echo gnutls-bin ;;
	jq) echo jq ;;
	python3) echo python3 ;;
	*) echo "$1" ;;
	esac
}

# install_tools CMD...: apt-get install whatever provides missing commands (root only).
install_tools() {
	local pkgs=() c
	for c in "$@"; do command -v "$c" >/dev/null 2>&1 || pkgs+=("$(tool_package "$c")"); done
	[ ${#pkgs[@]} -eq 0 ] && return 0
	[ "$(id -u)" -eq 0 ] || die "missing ${pkgs[*]}; run as root or apt-get install them"
	log "installing ${pkgs[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
}

# --- Go tools ----------------------------------------------------------------
# The Go programs the checks run, pinned. staticcheck's module is tagged in
# semver: v0.8.2 is its release 2026.2.2.
# shellcheck disable=SC2034 # used by the scripts that source this file
STATICCHECK_PKG=honnef.co/go/tools/cmd/staticcheck@v0.8.2
# shellcheck disable=SC2034 # used by the scripts that source this file
GOVULNCHECK_PKG=golang.org/x/vuln/cmd/govulncheck@v1.9.0

# go_tool PKG@VERSION: print the path of PKG's command, installing it with
# go install (through the Go module proxy) into GOBIN, or GOPATH/bin, unless
# the binary there is that version built by the Go on PATH.
go_tool() {
	local pkg=${1%@*} ver=${1##*@} dir bin info
	dir=$(go env GOBIN)
	[ -n "$dir" ] || dir=$(go env GOPATH | cut -d: -f1)/bin
	bin=$dir/${pkg##*/}
	if info=$(go version -m "$bin" 2>/dev/null) &&
		[ "$(head -n1 <<<"$info")" = "$bin: $(go env GOVERSION)" ] &&
		grep -q "^[[:space:]]path[[:space:]]$pkg\$" <<<"$info" &&
		grep -q "^[[:space:]]mod[[:space:]][^[:space:]]*[[:space:]]${ver}[[:space:]]" <<<"$info"; then
		echo "$bin"
		return 0
	fi
	log "installing $1 into $dir"
	(cd / && GOBIN=$dir go install "$1") >&2 || return 1
	echo "$bin"
}

# build_dst OUT: build the dst binary.
build_dst() {
	(cd "$DST_ROOT" && go build -o "$1" ./cmd/dst)
}

# now: seconds since the epoch with nanoseconds, for timings.
now() { date +%s.%N; }
# mbps BYTES SECONDS_START SECONDS_END: MB/s (10^6) with one decimal.
mbps() { python3 -c "import sys; b,s,e=map(float,sys.argv[1:]); print(f'{b/1e6/max(e-s,1e-9):.1f}')" "$@"; }
