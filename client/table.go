package client

import (
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dstproject/dst/wire"
)

// tx is one transaction: a request and its wire header.
//
// Ownership: the table is the only owner of a pending transaction, and a
// transaction leaves it exactly once, by take, expire or drain; whoever
// took it out finishes it (or puts it back). A writer may still be
// sealing a transaction's request when it leaves the table (its deadline
// passed while it waited behind a slow write), so the request's buffers
// are guarded by state: a writer touches them only after moving the state
// from txIdle to txSending, and finish never hands the request back to
// the front end while a writer holds it, but leaves the completion to
// that writer.
type tx struct {
	hdr      wire.Request
	req      Request
	q        *queue // where it was last sent; nil while waiting for a session
	deadline time.Time
	start    time.Time // submission, for the latency histograms
	tries    int       // sends after a checksum failure count here
	mark     uint64    // FLUSH: the replay log sequence it covers
	replay   bool      // a replayed write, owned by the reconnect

	state atomic.Int32
	err   error // the result finish left for the writer (txDoneLater)
}

// Transaction states.
const (
	txIdle      int32 = iota // no writer touches the request
	txSending                // a writer is sealing the request
	txDoneLater              // finished while txSending: the writer completes it
	txDone                   // completed: the request is the front end's again
)

// startSending claims t's request for a writer; false means t has
// completed and must be skipped.
func (t *tx) startSending() bool { return t.state.CompareAndSwap(txIdle, txSending) }

// doneSending releases t's request after sealing, completing t if it was
// finished meanwhile.
func (t *tx) doneSending() {
	if !t.state.CompareAndSwap(txSending, txIdle) {
		t.state.Store(txDone)
		t.req.Done.Complete(t.err)
	}
}

// finish completes t with err (nil for success), or leaves that to the
// writer that holds its request. Only the goroutine that took t out of
// the table calls it.
func (t *tx) finish(err error) { t.finishIn(nil, err) }

// finishIn is finish for a goroutine completing a burst of transactions:
// a completion that can wait is left to b's flush.
func (t *tx) finishIn(b *burst, err error) {
	for {
		switch t.state.Load() {
		case txIdle:
			if t.state.CompareAndSwap(txIdle, txDone) {
				b.complete(t.req.Done, err)
				return
			}
		case txSending:
			t.err = err
			if t.state.CompareAndSwap(txSending, txDoneLater) {
				return
			}
		default:
			return
		}
	}
}

// table maps transaction ids to pending transactions, and says where new
// ones go. One mutex guards both, so that a transaction is either entered
// before a reconnect takes its snapshot of the table, and resent by it, or
// after, and sent on the new generation.
type table struct {
	mu       sync.Mutex
	pending  map[uint64]*tx
	gen      *generation // carries new transactions; nil while reconnecting
	instance wire.Identity
	closed   bool
	failed   error // set once the attachment can never carry requests again
	// deep counts the transactions that entered with more than two
	// pending; seenDeep is its value when quiet last looked.
	deep, seenDeep uint64
	bulk           *bulkWatch // nil unless AttachConfig.BulkLoad
}

// enter puts t in the table and returns the queue to send it on (near if
// that is a queue of the current generation, else the next in turn), or
// nil while there is none (the next generation will send it). It fails t
// instead once the attachment is closed or failed.
func (tb *table) enter(t *tx, near *queue) (*queue, bool) {
	tb.mu.Lock()
	if err := tb.refusal(); err != nil {
		tb.mu.Unlock()
		t.finish(err)
		return nil, false
	}
	var q *queue
	switch {
	case near != nil && near.g == tb.gen:
		q = near
	case tb.gen != nil:
		q = tb.gen.pick()
	}
	tb.add(t, q)
	n := len(tb.pending)
	if n > 2 {
		tb.deep++
	}
	tb.mu.Unlock()
	tb.bulk.entered(&t.hdr, n)
	return q, true
}

// reenter puts a transaction its reply took out back in, to be sent again
// on the generation it was on if that still lives and is current (or, for
// a replayed write, replaying); else it waits for the next.
func (tb *table) reenter(t *tx) *queue {
	tb.mu.Lock()
	if err := tb.refusal(); err != nil {
		tb.mu.Unlock()
		t.finish(err)
		return nil
	}
	var q *queue
	if t.q != nil {
		if g := t.q.g; !g.isDead() && (g == tb.gen || t.replay) {
			q = g.pick()
		}
	}
	tb.add(t, q)
	tb.mu.Unlock()
	return q
}

// take removes a transaction from the table. It returns nil if the
// transaction already left it.
func (tb *table) take(id uint64) *tx {
	tb.mu.Lock()
	t := tb.remove(id)
	tb.mu.Unlock()
	return t
}

// putBack returns a transaction its reply took out of the table to wait
// for the next generation: the reply was unusable and the queue is dying.
func (tb *table) putBack(t *tx) {
	tb.mu.Lock()
	err := tb.refusal()
	if err == nil {
		tb.add(t, nil)
	}
	tb.mu.Unlock()
	if err != nil {
		t.finish(err)
	}
}

// expire takes out the transactions whose deadline is before now.
func (tb *table) expire(now time.Time) []*tx {
	var expired []*tx
	tb.mu.Lock()
	for id, t := range tb.pending {
		if !t.deadline.IsZero() && now.After(t.deadline) {
			tb.remove(id)
			expired = append(expired, t)
		}
	}
	tb.mu.Unlock()
	return expired
}

// drain takes out every transaction.
func (tb *table) drain() map[uint64]*tx {
	tb.mu.Lock()
	p := tb.pending
	tb.pending = make(map[uint64]*tx)
	for _, t := range p {
		if t.q != nil {
			t.q.load--
		}
	}
	tb.mu.Unlock()
	return p
}

// add puts t, which is not in the table, in it, to go out on q (nil: it
// waits for the next generation). Called with mu held.
//
// A transaction in the table with a queue counts in that queue's load;
// add, remove and place keep the count, and nothing else sets t.q.
func (tb *table) add(t *tx, q *queue) {
	tb.pending[t.hdr.ID] = t
	t.q = q
	if q != nil {
		q.load++
	}
}

// remove takes the transaction id out of the table and returns it, or nil
// if it is not there. It keeps t.q, the queue it was last sent on. Called
// with mu held.
func (tb *table) remove(id uint64) *tx {
	t := tb.pending[id]
	if t == nil {
		return nil
	}
	delete(tb.pending, id)
	if t.q != nil {
		t.q.load--
	}
	return t
}

// place moves t, in the table, to queue q. Called with mu held.
func (tb *table) place(t *tx, q *queue) {
	if t.q != nil {
		t.q.load--
	}
	t.q = q
	if q != nil {
		q.load++
	}
}

// refusal is the error a transaction entering the table gets instead:
// ESHUTDOWN once the attachment is closed, EIO once it has failed for
// good (fail emptied the table, and nothing would ever send it). Called
// with mu held.
func (tb *table) refusal() error {
	switch {
	case tb.closed:
		return syscall.ESHUTDOWN
	case tb.failed != nil:
		return syscall.EIO
	}
	return nil
}

// quiet reports whether requests come one at a time: at most one is in
// flight, and none entered behind two others since quiet was last asked.
// A deep queue that drains for a moment is not quiet.
func (tb *table) quiet() bool {
	tb.mu.Lock()
	quiet := tb.seenDeep == tb.deep && len(tb.pending) <= 1
	tb.seenDeep = tb.deep
	tb.mu.Unlock()
	return quiet
}
