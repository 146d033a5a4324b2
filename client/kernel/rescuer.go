package kernel

import (
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The nbd driver starts one receive work item per socket on the device's
// own workqueue, which has a rescuer thread (WQ_MEM_RECLAIM). When creating
// a worker is slow (a loaded or emulated machine), the rescuer takes every
// pending item of that workqueue and runs them one after another; the
// first socket's receiver never returns while its socket lives, so the
// other sockets' receivers never start and their replies sit unread until
// the kernel's timeout. The workqueue fix ("workqueue: Process rescuer work
// items one-by-one using a cursor") reached 6.19 through its stable
// updates; kernels before 7.0 are treated as lacking it, since a stable
// backport cannot be told from the version alone.
const rescuerFixedMajor, rescuerFixedMinor = 7, 0

// SafeSockets reports whether the running kernel can be given more than
// one socket per device without the risk above, and its release string.
func SafeSockets() (bool, string) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false, "unknown"
	}
	rel := unix.ByteSliceToString(u.Release[:])
	return rescuerFixed(rel), rel
}

// rescuerFixed reports whether a kernel release ("6.1.0-57-amd64",
// "7.0.3") is at least the first release known to carry the fix. A
// release it cannot parse counts as lacking it.
func rescuerFixed(release string) bool {
	return atLeast(release, rescuerFixedMajor, rescuerFixedMinor)
}

// atLeast reports whether a kernel release is at least major.minor; one it
// cannot parse counts as older.
func atLeast(release string, wantMajor, wantMinor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	minor := parts[1]
	if i := strings.IndexFunc(minor, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minor = minor[:i] // "1rc2", "0-57-amd64"
	}
	major, err1 := strconv.Atoi(parts[0])
	minorN, err2 := strconv.Atoi(minor)
	if err1 != nil || err2 != nil {
		return false
	}
	return major > wantMajor || major == wantMajor && minorN >= wantMinor
}
