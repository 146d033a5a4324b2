package nbd

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/dstproject/dst/internal/inflight"
	"github.com/dstproject/dst/internal/nbdwire"
)

// TestReplyWakesWriteLoopOnlyAtEnd: the goroutine that completes a request
// writes its reply, and wakes the connection's writeLoop only once the
// reader is done, when writeLoop waits for the last reply. A wake for
// every reply made writeLoop run, find nothing and sleep again once per
// request: a goroutine switch per request in attach, a second thread
// woken in a process with more than one P.
func TestReplyWakesWriteLoopOnlyAtEnd(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go io.Copy(io.Discard, b)
	c := &conn{
		nc: a, bw: bufio.NewWriter(a), e: &Export{Name: "t"}, log: slog.New(slog.DiscardHandler),
		budget: inflight.New(8, 1<<20), wake: make(chan struct{}, 1), quit: make(chan struct{}),
	}
	complete := func() {
		t.Helper()
		if !c.budget.TryAcquire(0) {
			t.Fatal("no room in the budget")
		}
		r := &Request{Cmd: nbdwire.CmdWrite, conn: c}
		r.pending.Store(true)
		r.Complete(nil)
		if c.werr != nil {
			t.Fatal(c.werr)
		}
	}
	woken := func() bool {
		select {
		case <-c.wake:
			return true
		default:
			return false
		}
	}

	for range 3 {
		complete()
	}
	if woken() {
		t.Error("writeLoop woken by replies while the reader still reads")
	}
	c.stopReading()
	if !woken() {
		t.Fatal("stopReading did not wake writeLoop")
	}
	complete()
	if !woken() {
		t.Error("the reply after the reader stopped did not wake writeLoop")
	}
	if n := c.budget.InFlight(); n != 0 {
		t.Errorf("%d requests still in flight after their replies", n)
	}
}
