package client

import (
	"bufio"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/dstproject/dst/wire"
	"github.com/hashicorp/yamux"
)

const (
	// sendBatch bounds how many bytes of queued requests a writer packs
	// into one stream write (one yamux frame).
	sendBatch = 256 << 10
	// queueDepth is the number of transactions that may wait to be written
	// on a queue before Submit blocks.
	queueDepth = 1024
	// largePayload is the write size from which a payload goes to the
	// stream straight from the request rather than through the batch.
	largePayload = 64 << 10
	recvBuffer   = 4 << 10 // payloads larger than this are read straight into the request
)

// queue is one data stream of an attachment. Submitters queue
// transactions in sendCh; recvLoop reads replies and completes them.
//
// Writing to the stream needs the writer token. A submitter that finds the
// token free writes what is queued itself, once, so a lone request goes out
// without waking another goroutine. Work that remains or arrives meanwhile
// is left to sendLoop, which keeps writing batches while there is any, so
// under load submitters only queue and one stream write carries many
// requests. Whoever releases the token looks at sendCh again afterwards and
// wakes sendLoop if it is not empty: no transaction is left behind.
type queue struct {
	a      *Attachment
	g      *generation
	sess   *Session
	st     *yamux.Stream
	index  int
	sendCh chan *tx
	wake   chan struct{} // sendLoop: sendCh may have work
	token  atomic.Bool   // held by the goroutine writing to st
	buf    []byte        // owned by the token holder
}

func newQueue(g *generation, s *Session, st *yamux.Stream, index int) *queue {
	return &queue{
		a:      g.a,
		g:      g,
		sess:   s,
		st:     st,
		index:  index,
		sendCh: make(chan *tx, queueDepth),
		wake:   make(chan struct{}, 1),
		buf:    make([]byte, 0, sendBatch),
	}
}

// push queues t and, unless hold, writes what is queued. On a dead queue
// it does nothing: t stays in the table, and the next generation sends it.
func (q *queue) push(t *tx, hold bool) {
	select {
	case q.sendCh <- t:
	default:
		// Full: what is held must go out before anything more fits.
		q.kick()
		select {
		case q.sendCh <- t:
		case <-q.g.dead:
			return
		}
	}
	if !hold {
		q.kick()
	}
}

// kick writes what is queued at once if no one else is writing, else
// leaves it to the writer or sendLoop.
func (q *queue) kick() {
	if len(q.sendCh) == 0 {
		return
	}
	if q.token.CompareAndSwap(false, true) {
		q.writeBatch()
		q.release()
		return
	}
	q.poke()
}

// release gives the token back and hands any queued work to sendLoop.
func (q *queue) release() {
	q.token.Store(false)
	if len(q.sendCh) > 0 {
		q.poke()
	}
}

func (q *queue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// sendLoop writes what submitters left queued.
func (q *queue) sendLoop() {
	for {
		select {
		case <-q.wake:
		case <-q.g.dead:
			return
		}
		for len(q.sendCh) > 0 && q.token.CompareAndSwap(false, true) {
			for q.writeBatch() {
			}
			q.release()
		}
	}
}

// writeBatch writes what is queued, up to sendBatch bytes, in one stream
// write, and reports whether it wrote anything. Once the generation is
// dead it drops what it finds: the table keeps it for the next one.
func (q *queue) writeBatch() bool {
	buf := q.buf[:0]
	wrote := false
batch:
	for len(buf) < sendBatch {
		select {
		case t := <-q.sendCh:
			if q.g.isDead() {
				continue // left in the table for the next generation
			}
			if t.hdr.Cmd == wire.CmdWrite && len(t.req.Data) >= largePayload {
				// Large payloads skip the batch buffer: yamux copies
				// them once anyway.
				buf = q.appendHeader(buf, t)
				q.write(buf)
				q.write(t.req.Data)
				buf, wrote = buf[:0], true
				continue
			}
			buf = q.appendTx(buf, t)
		default:
			break batch
		}
	}
	if len(buf) > 0 {
		q.write(buf)
		wrote = true
	}
	if cap(buf) > 4*sendBatch {
		buf = make([]byte, 0, sendBatch)
	}
	q.buf = buf
	return wrote
}

func (q *queue) write(p []byte) {
	if _, err := q.st.Write(p); err != nil {
		q.die(fmt.Errorf("sending: %w", err))
	}
}

// appendHeader encodes t's request header, with its deadline on this
// session's server clock.
func (q *queue) appendHeader(b []byte, t *tx) []byte {
	n := len(b)
	b = append(b, make([]byte, wire.RequestSize)...)
	h := t.hdr
	h.Expires = q.sess.clock.expires(t.deadline)
	h.Encode(b[n:])
	return b
}

// appendTx encodes t's request, with its deadline on this session's
// server clock, and its payload.
func (q *queue) appendTx(b []byte, t *tx) []byte {
	b = q.appendHeader(b, t)
	if t.hdr.Cmd == wire.CmdWrite {
		b = append(b, t.req.Data...)
	}
	return b
}

// die kills the queue's generation, which every queue of it shares: what
// is pending waits in the table for the next one.
func (q *queue) die(err error) {
	q.st.Close()
	q.g.kill(fmt.Errorf("queue %d: %w", q.index, err))
}

// recvLoop reads replies and completes their transactions. Read payloads
// go straight into the NBD request's buffer and are verified there before
// the request completes.
func (q *queue) recvLoop() {
	br := bufio.NewReaderSize(q.st, recvBuffer)
	var hb [wire.ReplySize]byte
	for {
		if _, err := io.ReadFull(br, hb[:]); err != nil {
			q.die(fmt.Errorf("reading reply: %w", err))
			return
		}
		rep, err := wire.DecodeReply(hb[:])
		if err != nil {
			q.die(err)
			return
		}
		if err := q.handle(br, &rep); err != nil {
			q.die(err)
			return
		}
	}
}

func (q *queue) handle(br *bufio.Reader, rep *wire.Reply) error {
	t := q.a.take(rep.ID)
	if t == nil {
		// Already completed (the attachment closed): skip the payload.
		_, err := br.Discard(int(rep.Length))
		return err
	}
	// Only a successful READ carries a payload, of the length asked for.
	var want uint32
	if rep.Cmd == wire.CmdRead && rep.Status == wire.StatusOK {
		want = t.hdr.Length
	}
	if rep.Cmd != t.hdr.Cmd || rep.Length != want {
		q.a.putBack(t)
		return fmt.Errorf("reply %d (%v, %v, %d bytes) does not match request (%v, %d bytes)",
			rep.ID, rep.Cmd, rep.Status, rep.Length, t.hdr.Cmd, t.hdr.Length)
	}
	if want > 0 {
		if _, err := io.ReadFull(br, t.req.Data); err != nil {
			q.a.putBack(t)
			return err
		}
		if wire.Checksum(t.req.Data) != rep.Checksum {
			q.a.retry(t, "read payload failed its checksum")
			return nil
		}
	}
	q.a.complete(t, rep.Status)
	return nil
}
