package client

import (
	"fmt"
	"io"
	"net"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/qconn"
	"github.com/dstproject/dst/wire"
)

// queue is one queue connection of a generation: its own TCP connection
// and encrypted channel, bound to the generation's control session.
//
// Sending: the goroutine that submits a transaction (the NBD front end's
// reader) seals and writes it itself when no one else is writing, in one
// system call with whatever else was queued meanwhile (qconn.Writer);
// under load one writer drains many requests into few records. Goroutines
// that must not block on the socket (recvLoop, when it sends a transaction
// again) leave the write to the writer's flusher.
//
// Receiving: recvLoop reads each reply, opens a READ's payload straight
// into the request's buffer, verifies it, takes the transaction out of
// the table and completes it; the NBD replies of the transactions one read
// brought are then written by that same goroutine, together, when the
// front end's socket is free (burst).
type queue struct {
	a     *Attachment
	g     *generation
	sess  *Session
	conn  *crypto.Conn
	raw   net.Conn
	index int
	w     *qconn.Writer[*tx]
	// load counts the transactions in the table that were last sent on
	// this queue (generation.pick). Guarded by the table's mu.
	load int
}

func newQueue(g *generation, conn *crypto.Conn, raw net.Conn, index int) *queue {
	q := &queue{a: g.a, g: g, sess: g.sess, conn: conn, raw: raw, index: index}
	q.w = qconn.NewWriter(conn, q.encode, func(*tx) {}, func(err error) {
		q.die(fmt.Errorf("sending: %w", err))
	})
	return q
}

// send hands t to the queue's writer. A transaction the writer drops (the
// queue died) stays in the table for the next generation.
func (q *queue) send(t *tx, mode qconn.Mode) { q.w.Send(t, mode) }

// encode adds t's request, with its deadline on this session's server
// clock, to a batch. A transaction that completed meanwhile (its deadline
// passed while it waited) is skipped: its request may already be recycled.
func (q *queue) encode(b *qconn.Batch, t *tx) {
	if !t.startSending() {
		return
	}
	h := t.hdr
	h.Expires = q.sess.clock.expires(t.deadline)
	h.Encode(b.Frame(wire.RequestSize))
	if h.Cmd == wire.CmdWrite {
		b.Payload(t.req.Data)
	}
	t.doneSending()
}

// die kills the queue's generation, which every queue of it shares: what
// is pending waits in the table for the next one.
func (q *queue) die(err error) {
	q.conn.Close()
	q.g.kill(fmt.Errorf("queue %d: %w", q.index, err))
}

// close ends the connection and waits until no goroutine writes on it.
func (q *queue) close(graceful bool) {
	if graceful {
		q.raw.Close()
	} else {
		abort(q.raw)
	}
	q.w.Close()
	q.w.Wait()
}

// recvLoop reads replies and completes their transactions. The NBD
// replies of what one read brought are written together (burst), before
// the loop reads what it would have to wait for.
func (q *queue) recvLoop() {
	var hb [wire.ReplySize]byte
	var b burst
	defer b.done()
	for {
		if b.waiting() && q.conn.Readable() < len(hb) {
			b.done()
		}
		if _, err := io.ReadFull(q.conn, hb[:]); err != nil {
			q.die(fmt.Errorf("reading reply: %w", err))
			return
		}
		rep, err := wire.DecodeReply(hb[:])
		if err != nil {
			q.die(err)
			return
		}
		if err := q.handle(&rep, &b); err != nil {
			q.die(err)
			return
		}
	}
}

// handle completes the transaction rep answers. A READ's payload is read
// straight into the request's buffer (the record layer decrypts it there)
// and verified before the request completes.
func (q *queue) handle(rep *wire.Reply, b *burst) error {
	if b.waiting() && q.conn.Readable() < int(rep.Length) {
		b.done()
	}
	t := q.a.table.take(rep.ID)
	if t == nil {
		// Already completed (deadline, close): skip the payload.
		_, err := io.CopyN(io.Discard, q.conn, int64(rep.Length))
		return err
	}
	// Only a successful READ carries a payload, of the length asked for.
	var want uint32
	if rep.Cmd == wire.CmdRead && rep.Status == wire.StatusOK {
		want = t.hdr.Length
	}
	if rep.Cmd != t.hdr.Cmd || rep.Length != want {
		q.a.table.putBack(t)
		return fmt.Errorf("reply %d (%v, %v, %d bytes) does not match request (%v, %d bytes)",
			rep.ID, rep.Cmd, rep.Status, rep.Length, t.hdr.Cmd, t.hdr.Length)
	}
	if want > 0 {
		if !t.takeReadBuffer() {
			// A ReadBufferer that broke its word: fail the READ, and
			// keep the connection in step by skipping its data.
			if _, err := io.CopyN(io.Discard, q.conn, int64(want)); err != nil {
				q.a.table.putBack(t)
				return err
			}
			q.a.complete(t, wire.StatusEIO, b)
			return nil
		}
		if _, err := io.ReadFull(q.conn, t.req.Data); err != nil {
			q.a.table.putBack(t)
			return err
		}
		if wire.Checksum(t.req.Data) != rep.Checksum {
			q.a.retry(t, "read payload failed its checksum")
			return nil
		}
	}
	q.a.complete(t, rep.Status, b)
	return nil
}
