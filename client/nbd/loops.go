package nbd

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/rawio"
)

// readLoop reads requests until NBD_CMD_DISC (errDisc), a protocol
// violation (ErrProtocol) or a broken connection. It never waits for a
// Device: every request is submitted and the loop moves on.
func (c *conn) readLoop() error {
	defer c.submitHeld()
	var hdr [nbdwire.RequestSize]byte
	for {
		src := io.Reader(c.br)
		if c.bigWrite && c.br.Buffered() == 0 {
			src = c.nc // see readPayload
		}
		c.bigWrite = false
		if _, err := io.ReadFull(src, hdr[:]); err != nil {
			return fmt.Errorf("nbd: read request header: %w", err)
		}
		req, err := nbdwire.DecodeRequest(hdr[:])
		if err != nil {
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		if req.Cmd == nbdwire.CmdDisc {
			return errDisc
		}
		if err = c.handle(req.Cmd, req.Flags, req.Cookie, req.Offset, req.Length); err != nil {
			return err
		}
		if len(c.held) > 0 && (len(c.held) >= maxHeld || !c.nextBuffered()) {
			c.submitHeld()
		}
	}
}

// maxHeld bounds how many requests the reader gathers for one SubmitBatch.
const maxHeld = 64

// nextBuffered reports whether the next request, payload and all, is
// already in the read buffer, so handling it will not wait on the socket.
func (c *conn) nextBuffered() bool {
	n := c.br.Buffered()
	if n < nbdwire.RequestSize {
		return false
	}
	hdr, _ := c.br.Peek(nbdwire.RequestSize)
	req, err := nbdwire.DecodeRequest(hdr)
	if err != nil || req.Cmd != nbdwire.CmdWrite {
		return true // a bad one fails at once, without waiting either
	}
	return n >= nbdwire.RequestSize+int(req.Length)
}

// submitHeld hands the held requests to the device.
func (c *conn) submitHeld() {
	if len(c.held) == 0 {
		return
	}
	c.e.Device.(BatchDevice).SubmitBatch(c.held)
	clear(c.held)
	c.held = c.held[:0]
}

// handle admits, validates and submits one request. Only session errors are
// returned; a rejected request just gets its errno in the reply.
func (c *conn) handle(cmd nbdwire.Command, flags nbdwire.CmdFlags, cookie, off uint64, length uint32) error {
	errno := c.check(cmd, flags, off, length)
	if errno != 0 && cmd == nbdwire.CmdWrite && length > maxPayload {
		// Skipping this much payload is an invitation to be flooded.
		return fmt.Errorf("%w: %v of %d bytes at offset %d (limit %d)", ErrProtocol, cmd, length, off, maxPayload)
	}
	var cost int64
	if errno == 0 && (cmd == nbdwire.CmdRead || cmd == nbdwire.CmdWrite) {
		cost = int64(length)
	}
	if !c.acquire(cost) {
		return errStopped
	}
	r := reqPool.Get().(*Request)
	r.Cmd, r.Flags, r.Offset, r.Length = cmd, flags, off, length
	r.cookie, r.conn, r.cost = cookie, c, cost

	if errno != 0 {
		c.logInvalid(r, errno)
		if cmd == nbdwire.CmdWrite {
			if _, err := io.CopyN(io.Discard, c.br, int64(length)); err != nil {
				c.abandon(r)
				return fmt.Errorf("nbd: skip rejected write payload at offset %d: %w", off, err)
			}
		}
		r.errno = errno
		c.enqueue(r)
		return nil
	}
	if length == 0 && cmd != nbdwire.CmdFlush {
		c.enqueue(r) // nothing to do; the spec leaves it to us, succeed
		return nil
	}
	if cmd == nbdwire.CmdWrite || cmd == nbdwire.CmdRead && !c.e.LazyReadBuffers {
		r.takeBuffer()
	}
	if cmd == nbdwire.CmdWrite {
		if err := c.readPayload(r.Data); err != nil {
			c.abandon(r)
			return fmt.Errorf("nbd: read write payload at offset %d: %w", off, err)
		}
	}
	r.pending.Store(true)
	if _, ok := c.e.Device.(BatchDevice); ok {
		c.held = append(c.held, r)
		return nil
	}
	c.e.Device.Submit(r)
	return nil
}

// bigPayload is the WRITE payload from which the reader reads exactly what
// it needs, bypassing the read buffer.
const bigPayload = 32 << 10

// readPayload reads a WRITE's payload into p. A big one is read straight
// from the socket once the read buffer is drained, and so is the header
// after it: filling the buffer there would take in up to 64 KiB of the next
// payload, to be copied a second time into that request's buffer (a
// stream of 256 KiB writes copied a quarter of its bytes twice). Small
// requests keep the buffer, where one read fetches many of them.
func (c *conn) readPayload(p []byte) error {
	c.bigWrite = len(p) >= bigPayload
	if !c.bigWrite {
		_, err := io.ReadFull(c.br, p)
		return err
	}
	n := 0
	if c.br.Buffered() > 0 {
		n, _ = c.br.Read(p[:min(len(p), c.br.Buffered())]) // cannot fail: buffered
	}
	_, err := io.ReadFull(c.nc, p[n:])
	return err
}

// abandon drops an admitted request that will never be replied to.
func (c *conn) abandon(r *Request) {
	cost := r.cost
	recycle(r)
	c.release(1, cost)
}

func (c *conn) logInvalid(r *Request, errno nbdwire.Errno) {
	log := c.log.Debug
	if c.warned.CompareAndSwap(false, true) {
		log = c.log.Warn // the first one tells the operator a client misbehaves
	}
	log("nbd: rejected request", "export", c.e.Name, "cmd", r.Cmd, "flags", r.Flags,
		"offset", r.Offset, "length", r.Length, "errno", errno)
}

// writeLoop writes the replies that completed while someone else was
// writing, if that writer left any, and ends once the reader is done and
// nothing is in flight, or the connection is abandoned. Most replies never
// reach it: the goroutine that completes a request writes its reply
// itself when no one else is writing (writeQueued).
func (c *conn) writeLoop() {
	for {
		select {
		case <-c.wake:
		case <-c.quit:
			return // finish recycled what was queued
		}
		c.mu.Lock()
		take := !c.writing && len(c.queue) > 0
		if take {
			c.writing = true
		}
		c.mu.Unlock()
		if take {
			c.writeQueued()
		}
		c.mu.Lock()
		done := c.readerDone && !c.writing
		c.mu.Unlock()
		done = done && c.budget.InFlight() == 0
		if done {
			return
		}
	}
}

// writeQueued writes queued replies until there are none. The caller holds
// the writer token (c.writing), which writeQueued gives back.
func (c *conn) writeQueued() {
	for {
		c.mu.Lock()
		if len(c.queue) == 0 || c.finished {
			c.writing = false
			ending := c.readerDone
			c.mu.Unlock()
			if ending {
				// writeLoop may be waiting for the last reply. Until the
				// reader is done it has nothing to wait for, and waking it
				// for every reply would cost a goroutine switch each.
				c.poke()
			}
			return
		}
		c.batch, c.queue = c.queue, c.batch[:0]
		c.mu.Unlock()
		c.flush(c.batch)
	}
}

// flush writes a batch of replies in one vectored write, then recycles the
// requests. After a write error replies are only recycled: the client is gone.
func (c *conn) flush(batch []*Request) {
	if c.werr == nil {
		if err := c.send(batch); err != nil {
			c.werr = err
			c.log.Debug("nbd: write reply", "export", c.e.Name, "err", err)
			c.nc.Close() // wakes the reader so the connection winds down
		}
	}
	var cost int64
	for i, r := range batch {
		cost += r.cost
		recycle(r)
		batch[i] = nil
	}
	c.release(len(batch), cost)
}

func (c *conn) send(batch []*Request) error {
	iov := c.iov[:0]
	for _, r := range batch {
		h := r.hdr[:]
		binary.BigEndian.PutUint32(h[0:], nbdwire.MagicSimpleReply)
		binary.BigEndian.PutUint32(h[4:], uint32(r.errno))
		binary.BigEndian.PutUint64(h[8:], r.cookie)
		iov = append(iov, h)
		if r.Cmd == nbdwire.CmdRead && r.errno == 0 && len(r.Data) > 0 {
			iov = append(iov, r.Data)
		}
	}
	c.iov = iov
	var err error
	if c.bw != nil {
		for _, b := range iov {
			c.bw.Write(b) // errors are sticky and reported by Flush
		}
		err = c.bw.Flush()
	} else {
		c.bufs = iov
		if rc, ok := c.nc.(*rawio.Conn); ok {
			_, err = rc.Writev(c.bufs)
		} else {
			_, err = c.bufs.WriteTo(c.nc)
		}
	}
	clear(iov) // do not keep recycled buffers reachable
	if err != nil {
		return fmt.Errorf("nbd: write %d replies: %w", len(batch), err)
	}
	return nil
}
