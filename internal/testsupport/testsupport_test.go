package testsupport

import (
	"strings"
	"testing"
)

// park starts a goroutine that blocks in parked, whose name then shows in
// its stack, until stop is closed.
func park(stop chan struct{}) {
	started := make(chan struct{})
	go parked(started, stop)
	<-started
}

func parked(started, stop chan struct{}) {
	close(started)
	<-stop
}

func TestLeakedGoroutines(t *testing.T) {
	stop := make(chan struct{})
	defer close(stop)
	old := make(chan struct{})
	park(old) // before the baseline: never counted
	defer close(old)

	before := goroutineIDs()
	if got := leakedGoroutines(before, nil); len(got) != 0 {
		t.Fatalf("leaked before anything started:\n%s", strings.Join(got, "\n\n"))
	}
	park(stop)
	if got := leakedGoroutines(before, nil); len(got) != 1 || !strings.Contains(got[0], "testsupport.parked") {
		t.Fatalf("without match: %d stacks, want the one parked goroutine:\n%s", len(got), strings.Join(got, "\n\n"))
	}
	if got := leakedGoroutines(before, []string{"nowhere.", "testsupport.parked"}); len(got) != 1 {
		t.Fatalf("matching it: %d stacks, want 1", len(got))
	}
	if got := leakedGoroutines(before, []string{"dst/server."}); len(got) != 0 {
		t.Fatalf("matching another package: %d stacks, want none", len(got))
	}
}

func TestGoroutineID(t *testing.T) {
	for _, tt := range []struct {
		stack string
		id    uint64
		ok    bool
	}{
		{"goroutine 42 [chan receive]:\nmain.main()", 42, true},
		{"goroutine 7 gp=0x1 m=nil [running]:", 7, true},
		{"goroutine x [running]:", 0, false},
		{"created by main.main", 0, false},
	} {
		if id, ok := goroutineID(tt.stack); id != tt.id || ok != tt.ok {
			t.Errorf("goroutineID(%q) = %d, %v; want %d, %v", tt.stack, id, ok, tt.id, tt.ok)
		}
	}
}

// TestLoggerAfterTest logs from a subtest's logger after the subtest has
// ended: the line must be dropped, as t.Log panics when no test it could
// go to is still running.
func TestLoggerAfterTest(t *testing.T) {
	var late func()
	t.Run("sub", func(t *testing.T) {
		log := Logger(t)
		log.Warn("during the test")
		late = func() { log.Error("after the test") }
	})
	late()
}
