package client

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/wire"
)

// TestBusyPoll: with BusyPoll, requests made one at a time find the
// attachment's goroutines polling (Status counts the rounds, and some end
// with the reply they waited for), data is right, and without it nothing
// polls.
func TestBusyPoll(t *testing.T) {
	testsupport.LeakCheck(t, "dst/client.", "dst/internal/rawio.")
	env := newEnv(t, "tcp", 1<<20)

	cfg := &AttachConfig{Config: *env.config(), Export: "disk", Connections: 2, BusyPoll: 5e6} // 5ms
	a, err := Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for i := range 200 {
		off := uint64(i%64) * 4096
		data := bytes.Repeat([]byte{byte(i)}, 4096)
		if err := do(a, wire.CmdWrite, 0, off, 4096, data); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		got := make([]byte, 4096)
		if err := do(a, wire.CmdRead, 0, off, 4096, got); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("read %d: wrong data", i)
		}
	}
	st := a.Status().BusyPoll
	if st == nil {
		t.Fatal("Status has no busy_poll with BusyPoll set")
	}
	if st.Rounds == 0 || st.Data+st.Other == 0 || st.Data+st.Other+st.Expired > st.Rounds {
		t.Fatalf("busy poll %+v: want rounds, some ended by data, none counted twice", *st)
	}
	t.Logf("busy poll over 400 requests: %+v", *st)
	if st.Sockets != 3 {
		t.Errorf("busy poll over %d sockets, want 3: the control connection and 2 queues", st.Sockets)
	}
	// A lost generation's sockets leave the set (queues close with abort).
	a.table.mu.Lock()
	g := a.table.gen
	a.table.mu.Unlock()
	g.kill(errors.New("test: the generation is killed"))
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if a.Stats().Reconnects == 1 && a.poller.Stats().Sockets == 3 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("after a reconnect: %+v, busy poll over %d sockets; want one reconnect and 3",
				a.Stats(), a.poller.Stats().Sockets)
		}
	}
	if err := do(a, wire.CmdRead, 0, 0, 4096, make([]byte, 4096)); err != nil {
		t.Fatalf("read after the reconnect: %v", err)
	}
	a.Close() // b takes the writer lease
	if n := a.poller.Stats().Sockets; n != 0 {
		t.Errorf("busy poll over %d sockets after Close, want none", n)
	}

	b := env.attach(t, "disk", 1)
	defer b.Close()
	if err := do(b, wire.CmdRead, 0, 0, 4096, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if b.Status().BusyPoll != nil {
		t.Fatal("Status has busy_poll without BusyPoll")
	}
}

// TestTableQuiet: the busy-poll gate is open while requests come one at a
// time, shut while more than one is in flight, and shut once more after a
// deep queue drains, so that its dips do not poll.
func TestTableQuiet(t *testing.T) {
	tb := table{pending: make(map[uint64]*tx)}
	enter := func(id uint64) {
		if _, ok := tb.enter(&tx{hdr: wire.Request{ID: id}}, nil); !ok {
			t.Fatalf("enter %d refused", id)
		}
	}
	if !tb.quiet() {
		t.Fatal("an empty table is not quiet")
	}
	enter(1)
	if !tb.quiet() {
		t.Fatal("one in flight is not quiet")
	}
	enter(2)
	enter(3) // behind two others
	for id := uint64(1); id <= 3; id++ {
		tb.take(id)
	}
	enter(4)
	if tb.quiet() {
		t.Fatal("quiet at the first look after a deep queue drained")
	}
	if !tb.quiet() {
		t.Fatal("not quiet at the second look, with nothing deep since")
	}
	enter(5)
	if tb.quiet() {
		t.Fatal("two in flight are quiet")
	}
	enter(6)
	tb.quiet()
	if tb.quiet() {
		t.Fatal("three in flight are quiet")
	}
}
