package client

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/wire"
)

// bulkLog records what a bulkWatch told it.
type bulkLog struct {
	mu    sync.Mutex
	calls []bool
}

func (l *bulkLog) notify(on bool) {
	l.mu.Lock()
	l.calls = append(l.calls, on)
	l.mu.Unlock()
}

func (l *bulkLog) get() []bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

// TestBulkWatch: only large READs and WRITEs behind at least two others
// turn bulk load on, once however many come; it stays on while they keep
// coming and turns off one to two bulkIdle after the last; stop turns it
// off for good.
func TestBulkWatch(t *testing.T) {
	testsupport.Synctest(t, func(t *testing.T) {
		var l bulkLog
		w := newBulkWatch(l.notify)
		big := &wire.Request{Cmd: wire.CmdWrite, Length: bulkRequest}
		for _, h := range []*wire.Request{
			{Cmd: wire.CmdWrite, Length: bulkRequest - 1},
			{Cmd: wire.CmdRead, Length: 4096},
			{Cmd: wire.CmdTrim, Length: 1 << 30},
			{Cmd: wire.CmdWriteZeroes, Length: 1 << 30},
		} {
			w.entered(h, 64)
		}
		w.entered(big, 2) // at most one ahead of it
		if got := l.get(); len(got) != 0 {
			t.Fatalf("small, non-I/O or shallow requests turned bulk load on: %v", got)
		}

		w.entered(big, 3)
		w.entered(&wire.Request{Cmd: wire.CmdRead, Length: 1 << 20}, 64)
		if got := l.get(); !slices.Equal(got, []bool{true}) {
			t.Fatalf("after two bulk moments: calls %v, want [true]", got)
		}
		// Moments every 100 ms for 2 s keep it on.
		for range 20 {
			time.Sleep(100 * time.Millisecond)
			w.entered(big, 8)
		}
		if got := l.get(); !slices.Equal(got, []bool{true}) {
			t.Fatalf("while bulk moments kept coming: calls %v, want [true]", got)
		}
		last := time.Now()
		for !slices.Equal(l.get(), []bool{true, false}) {
			if time.Since(last) > 2*bulkIdle {
				t.Fatalf("%v after the last bulk moment: calls %v, want [true false]", time.Since(last), l.get())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if d := time.Since(last); d < bulkIdle {
			t.Fatalf("turned off %v after the last bulk moment, want at least %v", d, bulkIdle)
		}

		// On again, then stop: off at once, and for good.
		w.entered(big, 3)
		w.stop()
		w.entered(big, 3)
		time.Sleep(10 * bulkIdle)
		if got := l.get(); !slices.Equal(got, []bool{true, false, true, false}) {
			t.Fatalf("after on again and stop: calls %v, want [true false true false]", got)
		}
	})
}

// TestBulkLoadAttachment: an attachment told of AttachConfig.BulkLoad
// turns it on under a burst of large writes, not under small ones, and
// off when it closes.
func TestBulkLoadAttachment(t *testing.T) {
	testsupport.LeakCheck(t)
	env := newEnv(t, "tcp", 64<<20)
	var l bulkLog
	a, err := Attach(context.Background(), &AttachConfig{Config: *env.config(), Export: "disk", Connections: 1,
		BulkLoad: l.notify})
	if err != nil {
		t.Fatal(err)
	}
	burst := func(n int, length uint32) {
		t.Helper()
		errs := make(chan error, n)
		for i := range n {
			a.Submit(Request{Cmd: wire.CmdWrite, Offset: uint64(i) * uint64(length), Length: length,
				Data: make([]byte, length), Done: CompleteFunc(func(err error) { errs <- err })})
		}
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
	burst(32, 4096)
	if got := l.get(); len(got) != 0 {
		t.Fatalf("32 writes of 4 KiB: BulkLoad calls %v, want none", got)
	}
	burst(32, 128<<10)
	// A test machine that stalls this goroutine past bulkIdle may have
	// seen it turn off already.
	if got := l.get(); !slices.Equal(got, []bool{true}) && !slices.Equal(got, []bool{true, false}) {
		t.Fatalf("32 writes of 128 KiB: BulkLoad calls %v, want [true] (or [true false] after a stall)", got)
	}
	a.Close()
	if got := l.get(); !slices.Equal(got, []bool{true, false}) {
		t.Fatalf("after Close: BulkLoad calls %v, want [true false]", got)
	}
}
