package testsupport

import (
	"runtime"
	"testing"
	"testing/synctest"
)

// Synctest runs f in a testing/synctest bubble, as synctest.Test does,
// with the process's sync.Pools emptied before and after.
//
// yamux keeps its write timers in a sync.Pool. A timer made in a bubble
// runs on the bubble's clock, and using it anywhere else is a fatal error,
// which a later test would meet when the pool hands it out; a timer made
// outside, handed out in the bubble, runs on the real clock, and a
// goroutine waiting for it would not count as durably blocked. Two
// garbage collections drop everything the pools held.
func Synctest(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	emptyPools()
	defer emptyPools()
	synctest.Test(t, f)
}

func emptyPools() {
	runtime.GC() // the pools' contents become their victim caches
	runtime.GC() // which are dropped
}
