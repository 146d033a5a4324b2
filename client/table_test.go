package client

import (
	"testing"
	"time"

	"github.com/dstproject/dst/wire"
)

// pickEnv is a table with a live generation of n queues and no
// connections: enough to watch where transactions go.
func pickEnv(n int) (*table, *generation) {
	g := &generation{}
	for i := range n {
		g.queues = append(g.queues, &queue{g: g, index: i})
	}
	return &table{pending: make(map[uint64]*tx), gen: g}, g
}

func loads(g *generation) []int {
	var l []int
	for _, q := range g.queues {
		l = append(l, q.load)
	}
	return l
}

func wantLoads(t *testing.T, g *generation, want ...int) {
	t.Helper()
	got := loads(g)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("queue loads %v, want %v", got, want)
		}
	}
}

// TestPickOneAtATimeStaysOnFirstQueue: requests that come one at a time
// all go out on the first queue, rather than in turn over all of them
// (which costs a QD1 request its connection's warm caches on both ends).
func TestPickOneAtATimeStaysOnFirstQueue(t *testing.T) {
	tb, g := pickEnv(2)
	for id := uint64(1); id <= 8; id++ {
		q, ok := tb.enter(&tx{hdr: wire.Request{ID: id, Cmd: wire.CmdRead}}, nil)
		if !ok || q != g.queues[0] {
			t.Fatalf("request %d went to queue %d, want 0", id, q.index)
		}
		if tb.take(id) == nil {
			t.Fatalf("request %d not in the table", id)
		}
	}
	wantLoads(t, g, 0, 0)
}

// TestPickSpreadsDeepQueue: requests in flight together spread evenly over
// the queues, each to the least loaded, and a queue whose replies came
// back takes the next ones.
func TestPickSpreadsDeepQueue(t *testing.T) {
	tb, g := pickEnv(3)
	for id := uint64(1); id <= 7; id++ {
		tb.enter(&tx{hdr: wire.Request{ID: id, Cmd: wire.CmdRead}}, nil)
	}
	wantLoads(t, g, 3, 2, 2)
	// Requests 2 and 5 went to queue 1; their replies empty it.
	for _, id := range []uint64{2, 5} {
		if tq := tb.take(id).q; tq != g.queues[1] {
			t.Fatalf("request %d was on queue %d, want 1", id, tq.index)
		}
	}
	wantLoads(t, g, 3, 0, 2)
	if q, _ := tb.enter(&tx{hdr: wire.Request{ID: 8, Cmd: wire.CmdRead}}, nil); q != g.queues[1] {
		t.Fatalf("request 8 went to queue %d, want 1", q.index)
	}
	// A burst sent together stays on the queue its first one got.
	near := g.queues[1]
	for id := uint64(9); id <= 11; id++ {
		if q, _ := tb.enter(&tx{hdr: wire.Request{ID: id, Cmd: wire.CmdRead}}, near); q != near {
			t.Fatalf("request %d of a burst went to queue %d, want 1", id, q.index)
		}
	}
	wantLoads(t, g, 3, 4, 2)
}

// TestPickLoadFollowsTheTable: every way a transaction leaves the table,
// comes back or moves keeps its queue's load exact.
func TestPickLoadFollowsTheTable(t *testing.T) {
	tb, g := pickEnv(2)
	past := time.Now().Add(-time.Second)
	mk := func(id uint64) *tx { return &tx{hdr: wire.Request{ID: id, Cmd: wire.CmdWrite}} }
	for id := uint64(1); id <= 4; id++ {
		tb.enter(mk(id), nil)
	}
	wantLoads(t, g, 2, 2)

	tb.pending[1].deadline = past // on queue 0
	if exp := tb.expire(time.Now()); len(exp) != 1 || exp[0].hdr.ID != 1 {
		t.Fatalf("expired %v, want request 1", exp)
	}
	wantLoads(t, g, 1, 2)

	// A reply that asks for a resend (bad checksum) takes it out and
	// puts it back on the least loaded queue of its generation.
	r := tb.take(2) // queue 1
	wantLoads(t, g, 1, 1)
	if q := tb.reenter(r); q != g.queues[0] {
		t.Fatalf("reentered on queue %d, want 0", q.index)
	}
	wantLoads(t, g, 2, 1)

	// An unusable reply puts it back to wait for the next generation.
	r = tb.take(3)
	tb.putBack(r)
	if r.q != nil {
		t.Fatalf("put back on queue %d, want none", r.q.index)
	}
	wantLoads(t, g, 1, 1)

	// The next generation takes everything over.
	_, g2 := pickEnv(2)
	tb.mu.Lock()
	for _, tr := range tb.pending {
		tb.place(tr, g2.pick())
	}
	tb.mu.Unlock()
	wantLoads(t, g, 0, 0)
	wantLoads(t, g2, 2, 1)

	tb.drain()
	wantLoads(t, g2, 0, 0)
}
