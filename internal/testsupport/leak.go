package testsupport

import (
	"bytes"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// leakWait is how long LeakCheck gives goroutines to exit after the test:
// closing a session wakes its goroutines, which take a moment to see it.
const leakWait = 5 * time.Second

// LeakCheck fails t if goroutines started after the call are still
// running once the test and its cleanups are done. With match, only
// goroutines whose stacks mention one of the strings count (a package's
// frames, as "dst/server." or "hashicorp/yamux"); without, every one does.
//
// Call it first in a test, so that its cleanup runs last, after those
// that close what the test started. It waits up to a few seconds for the
// goroutines to exit, then reports their stacks.
func LeakCheck(t testing.TB, match ...string) {
	t.Helper()
	before := goroutineIDs()
	t.Cleanup(func() {
		var leaked []string
		for deadline := time.Now().Add(leakWait); ; time.Sleep(10 * time.Millisecond) {
			leaked = leakedGoroutines(before, match)
			if len(leaked) == 0 {
				return
			}
			if time.Now().After(deadline) {
				break
			}
		}
		t.Errorf("%d goroutines leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	})
}

// leakedGoroutines returns the stacks of the goroutines not in before
// that mention one of match, or all of them without match. (Ids are never
// reused, but they are not in the order goroutines started: each P takes
// them in batches.)
func leakedGoroutines(before map[uint64]bool, match []string) []string {
	var leaked []string
	for _, g := range goroutines() {
		id, ok := goroutineID(g)
		if !ok || before[id] {
			continue
		}
		if len(match) == 0 || mentions(g, match) {
			leaked = append(leaked, g)
		}
	}
	return leaked
}

func mentions(stack string, match []string) bool {
	for _, m := range match {
		if strings.Contains(stack, m) {
			return true
		}
	}
	return false
}

// goroutineIDs returns the ids of the goroutines running now.
func goroutineIDs() map[uint64]bool {
	ids := make(map[uint64]bool)
	for _, g := range goroutines() {
		if id, ok := goroutineID(g); ok {
			ids[id] = true
		}
	}
	return ids
}

// goroutines returns the stack of every goroutine, one string each.
func goroutines() []string {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	return strings.Split(string(bytes.TrimSpace(buf)), "\n\n")
}

// goroutineID parses the id from a stack's first line,
// "goroutine 42 [chan receive]:".
func goroutineID(stack string) (uint64, bool) {
	rest, ok := strings.CutPrefix(stack, "goroutine ")
	if !ok {
		return 0, false
	}
	num, _, ok := strings.Cut(rest, " ")
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseUint(num, 10, 64)
	return id, err == nil
}
