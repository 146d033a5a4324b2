package client

import "slices"

// burst gathers the completions a queue's receive loop makes out of one
// read: a server that answers several requests at once sends their replies
// in one record, and their NBD replies should leave in one write too, not
// one each (at queue depth 32 that write was a third of attach's CPU). The
// loop flushes the burst before anything that may wait on the socket, so a
// reply is never held while the loop sleeps.
type burst struct {
	flush []interface{ Flush() } // distinct; each flushed once per burst
}

// complete hands err to c: a Deferrer's result waits for b's flush, any
// other completes now. A nil burst completes everything now.
func (b *burst) complete(c Completer, err error) {
	d, ok := c.(Deferrer)
	if b == nil || !ok {
		c.Complete(err)
		return
	}
	if f := d.CompleteDeferred(err); f != nil && !slices.Contains(b.flush, f) {
		b.flush = append(b.flush, f)
	}
}

// waiting reports whether the burst holds completions to flush.
func (b *burst) waiting() bool { return len(b.flush) > 0 }

// done flushes what the burst deferred.
func (b *burst) done() {
	for i, f := range b.flush {
		f.Flush()
		b.flush[i] = nil
	}
	b.flush = b.flush[:0]
}
