package client

import (
	"syscall"
	"time"

	"github.com/dstproject/dst/internal/qconn"
	"github.com/dstproject/dst/wire"
)

// Requests become transactions; replies complete them.

// Submit starts a transaction for r and, if no one is writing on its
// queue, sends it from the caller's goroutine.
func (a *Attachment) Submit(r Request) {
	if t := a.newTx(r); t != nil {
		a.start(t, qconn.Block)
	}
}

// SubmitBatch starts transactions for requests a client sent together
// and sends them on one queue, in as few records and writes as the queue
// allows. rs is not kept.
func (a *Attachment) SubmitBatch(rs []Request) {
	var batch []*tx
	var q *queue
	for i := range rs {
		t := a.newTx(rs[i])
		if t == nil {
			continue
		}
		tq, ok := a.table.enter(t, q) // one queue for the whole batch
		if !ok || tq == nil {
			continue
		}
		if tq != q && len(batch) > 0 {
			q.w.SendAll(batch, qconn.Block) // a reconnect came between
			batch = batch[:0]
		}
		q = tq
		batch = append(batch, t)
	}
	if q != nil && len(batch) > 0 {
		q.w.SendAll(batch, qconn.Block)
	}
}

// takeReadBuffer gives a READ that came without Data the buffer its
// ReadBufferer hands out (newTx let it in only with one), as its reply's
// data is about to be read. It reports false, leaving Data nil, if that
// buffer is not Length bytes.
func (t *tx) takeReadBuffer() bool {
	if t.req.Data != nil {
		return true
	}
	if p := t.req.Done.(ReadBufferer).ReadBuffer(); len(p) == int(t.req.Length) {
		t.req.Data = p
		return true
	}
	return false
}

// newTx makes the transaction for r, or completes r with an error.
func (a *Attachment) newTx(r Request) *tx {
	switch r.Cmd {
	case wire.CmdRead, wire.CmdWrite:
		if r.Data == nil && r.Cmd == wire.CmdRead {
			if _, ok := r.Done.(ReadBufferer); ok {
				break // the buffer is taken when the reply comes (queue.go)
			}
		}
		if len(r.Data) != int(r.Length) {
			r.Done.Complete(syscall.EINVAL)
			return nil
		}
	case wire.CmdFlush, wire.CmdTrim, wire.CmdWriteZeroes:
	default:
		r.Done.Complete(syscall.EINVAL)
		return nil
	}
	t := &tx{req: r, tries: 1, start: time.Now()}
	t.hdr = wire.Request{
		Cmd:    r.Cmd,
		Length: r.Length,
		ID:     a.nextID.Add(1),
		Offset: r.Offset,
	}
	if a.cfg.IOTimeout > 0 {
		t.deadline = t.start.Add(a.cfg.IOTimeout)
	}
	if r.Flags&wire.FlagFUA != 0 && t.hdr.Cmd != wire.CmdRead && t.hdr.Cmd != wire.CmdFlush {
		t.hdr.Flags |= wire.FlagFUA
	}
	if r.Flags&wire.FlagNoHole != 0 && t.hdr.Cmd == wire.CmdWriteZeroes {
		t.hdr.Flags |= wire.FlagNoHole
	}
	switch t.hdr.Cmd {
	case wire.CmdWrite:
		t.hdr.Checksum = wire.Checksum(r.Data)
		if a.replay != nil && a.replay.full() {
			// No room to keep it for replay: make it durable instead.
			t.hdr.Flags |= wire.FlagFUA
		}
	case wire.CmdFlush:
		if a.replay != nil {
			t.mark = a.replay.mark()
		}
	}
	return t
}

// start enters t in the table and sends it on the current generation, or
// leaves it to wait for the next one. mode says whether the caller may
// write on the queue's connection itself.
func (a *Attachment) start(t *tx, mode qconn.Mode) {
	if q, ok := a.table.enter(t, nil); ok && q != nil {
		q.send(t, mode)
	}
}

// complete finishes t, which its reply took out of the table, with the
// server's status. The front end's completion may wait for b's flush.
func (a *Attachment) complete(t *tx, st wire.Status, b *burst) {
	switch st {
	case wire.StatusBadChecksum, wire.StatusESTALE:
	default:
		a.latency.record(t.hdr.Cmd, time.Since(t.start))
	}
	switch st {
	case wire.StatusOK:
		if a.replay != nil && !t.replay {
			a.remember(t)
		}
		t.finishIn(b, nil)
	case wire.StatusBadChecksum:
		a.retry(t, "server saw a bad payload checksum")
	case wire.StatusESTALE:
		// The server fenced the session before starting t: a newer
		// session has taken over, and t goes out again on it.
		a.requeue(t)
	case wire.StatusETIMEDOUT:
		a.stats.timeouts.Add(1)
		a.events.emit(Event{Type: EventTimeout, Count: 1, Detail: "expired before the server could start it"})
		a.log.Error("transaction expired before the server could start it; not applied",
			"id", t.hdr.ID, "cmd", t.hdr.Cmd, "offset", t.hdr.Offset, "length", t.hdr.Length)
		t.finishIn(b, syscall.EIO)
	default:
		t.finishIn(b, statusError(st))
	}
}

// remember records a successful transaction in the replay log: a write
// not yet durable is kept, a FLUSH drops what it covered.
func (a *Attachment) remember(t *tx) {
	switch t.hdr.Cmd {
	case wire.CmdWrite, wire.CmdTrim, wire.CmdWriteZeroes:
		if t.hdr.Flags&wire.FlagFUA != 0 {
			a.replay.durable(t.hdr.Offset, t.hdr.Length)
		} else if a.replay.add(&t.hdr, t.req.Data, takeBuffer(t.req.Done)) {
			a.autoFlush()
		}
	case wire.CmdFlush:
		a.replay.flushed(t.mark)
	}
}

// autoFlush sends a FLUSH of the attachment's own to trim the replay log.
func (a *Attachment) autoFlush() {
	r := Request{Cmd: wire.CmdFlush, Done: CompleteFunc(func(err error) {
		a.replay.flushDone()
		if err != nil {
			a.log.Warn("flush to trim the replay buffer failed", "err", err)
		}
	})}
	if t := a.newTx(r); t != nil {
		// The caller may be a queue's recvLoop, which must not wait on a
		// socket: the queue's flusher writes it.
		a.start(t, qconn.Defer)
	}
}

// retry sends t again, or fails it once it has used up its tries.
func (a *Attachment) retry(t *tx, why string) {
	if t.tries >= maxTries {
		a.log.Error("transaction failed", "id", t.hdr.ID, "cmd", t.hdr.Cmd, "offset", t.hdr.Offset,
			"tries", t.tries, "reason", why)
		t.finish(syscall.EIO)
		return
	}
	t.tries++
	a.stats.checksumRetries.Add(1)
	a.events.emit(Event{Type: EventChecksumRetry, Count: 1, Detail: why})
	a.log.Warn("resending transaction", "id", t.hdr.ID, "cmd", t.hdr.Cmd, "offset", t.hdr.Offset, "reason", why)
	a.requeue(t)
}

// requeue sends again a transaction its reply took out of the table. The
// caller is a queue's recvLoop, which must go on reading the replies that
// let the server go on reading: it only queues, and the queue's flusher
// writes.
func (a *Attachment) requeue(t *tx) {
	if q := a.table.reenter(t); q != nil {
		q.send(t, qconn.Defer)
	}
}

// takeBuffer takes the pooled buffer behind a request's Data from its
// Completer, if it has one to give.
func takeBuffer(c Completer) *[]byte {
	if o, ok := c.(BufferOwner); ok {
		return o.TakeBuffer()
	}
	return nil
}

// statusError maps a reply status to the errno an NBD client sees.
func statusError(st wire.Status) error {
	if st < 0x100 {
		return syscall.Errno(st)
	}
	return syscall.EIO
}
