package server

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/dstproject/dst/internal/nbdclient"
	"github.com/dstproject/dst/internal/qconn"
	"github.com/dstproject/dst/wire"
)

// op is one request on its way from a queue connection's reader, through
// a worker or not, to the connection's writer. Ops and their buffers are pooled: the data path
// allocates nothing per request in the steady state.
type op struct {
	q      *queueConn
	req    wire.Request
	cost   int64       // budget taken by the reader
	buf    *[]byte     // WRITE payload, or READ reply header and data
	status wire.Status // the reply's status

	// For an upstream export (upstream.go): the request as sent upstream,
	// its connection, and a FUA the upstream lacks, done as a FLUSH after.
	call      nbdclient.Call
	upConn    *upConn
	needFlush bool
	flushStep bool
	wait      bool // the queue's reader waits for the reply (nbdclient.GoWait)
	batch     bool // the queue's reader queues the request, and pushes later
}

var opPool = sync.Pool{New: func() any { return new(op) }}

func getOp(q *queueConn, req wire.Request, cost int64) *op {
	o := opPool.Get().(*op)
	o.q, o.req, o.cost = q, req, cost
	return o
}

func putOp(o *op) {
	if o.buf != nil {
		bufs.Put(o.buf)
	}
	*o = op{}
	opPool.Put(o)
}

// worker runs requests from all queues of all sessions until the server
// has stopped. Close stops the workers only after every session ended, so
// no request is left behind in jobs.
func (s *Server) worker() {
	defer s.workers.Done()
	for {
		select {
		case o := <-s.jobs:
			o.run()
			o.q.w.Send(o, qconn.NoBlock)
		case <-s.stopped:
			return
		}
	}
}

// run does a request's work and sets its status.
func (o *op) run() {
	e, r := o.q.exp, &o.req
	if o.status = o.q.se.begin(r); o.status != wire.StatusOK {
		if o.status == wire.StatusETIMEDOUT {
			o.q.log.Warn("request expired before it could start; not applied", "cmd", r.Cmd,
				"offset", r.Offset, "length", r.Length)
		}
		return
	}
	defer o.q.se.end()
	var err error
	switch r.Cmd {
	case wire.CmdRead:
		err = o.read()
	case wire.CmdWrite:
		payload := *o.buf
		if wire.Checksum(payload) != r.Checksum {
			// Corrupted on the way: never apply it, the client may retry.
			o.status = wire.StatusBadChecksum
			o.q.log.Warn("WRITE payload failed its checksum", "offset", r.Offset, "length", r.Length)
			return
		}
		if r.Flags&wire.FlagFUA != 0 {
			err = e.b.WriteAtFUA(payload, int64(r.Offset))
		} else {
			_, err = e.b.WriteAt(payload, int64(r.Offset))
		}
	case wire.CmdFlush:
		err = e.b.Sync()
	case wire.CmdTrim:
		err = e.b.Trim(int64(r.Offset), int64(r.Length))
		err = o.fua(err)
	case wire.CmdWriteZeroes:
		err = e.b.WriteZeroes(int64(r.Offset), int64(r.Length), r.Flags&wire.FlagNoHole != 0)
		err = o.fua(err)
	default:
		err = fmt.Errorf("server: %v cannot reach a worker", r.Cmd)
	}
	if err != nil {
		o.failed(err)
	}
}

// failed sets o's status from the backend's error and logs it.
func (o *op) failed(err error) {
	r := &o.req
	o.status = errStatus(err)
	o.q.log.Warn("request failed", "cmd", r.Cmd, "offset", r.Offset, "length", r.Length,
		"status", o.status, "err", err)
}

// startUpstream checks o as run does, then sends it upstream; the
// upstream's reply completes it (Upstream.finish). With wait, as for the
// inline path, the caller reads the reply itself if no one else is; with
// batch, it queues the request and pushes it with those that follow.
func (o *op) startUpstream(wait, batch bool) {
	r := &o.req
	if o.status = o.q.se.begin(r); o.status != wire.StatusOK {
		if o.status == wire.StatusETIMEDOUT {
			o.q.log.Warn("request expired before it could start; not applied", "cmd", r.Cmd,
				"offset", r.Offset, "length", r.Length)
		}
		o.q.w.Send(o, qconn.NoBlock)
		return
	}
	if r.Cmd == wire.CmdWrite && wire.Checksum(*o.buf) != r.Checksum {
		o.status = wire.StatusBadChecksum
		o.q.log.Warn("WRITE payload failed its checksum", "offset", r.Offset, "length", r.Length)
		o.q.se.end()
		o.q.w.Send(o, qconn.NoBlock)
		return
	}
	o.wait, o.batch = wait, batch
	o.q.exp.up.start(o)
}

// noWaiter is a backend that can tell a read or write served by memory
// from one that would wait for a disk (File).
type noWaiter interface {
	ReadAtNoWait(p []byte, off int64) bool
	WriteAtNoWait(p []byte, off int64) int
}

// noWaitMaxRead is the largest READ runNoWait takes on. Past it the
// reply's own work (copy, checksum, seal) outweighs a hand-off, and
// workers spread it over the cores, where one reader would serialize it.
//
// A WRITE of any size runs on the reader when the page cache takes it:
// the reader has just opened its payload, and the checksum and the copy
// into the page cache are best done while those bytes are in its CPU's
// cache, from one buffer it then reuses. On a worker, often on the other
// CPU and with many payloads in flight, both read them cold. Hand rig,
// fresh serve and attach on /dev/shm, nbdcopy 1 GiB writes, rounds
// alternating (2026-12-05): 848–891 → 915–930 MB/s and serve 0.69–0.72 →
// 0.62–0.64 CPU s/GiB (4 rounds); with one queue connection 838–883 →
// 936–982 MB/s and 0.86–1.00 → 0.63–0.68 s/GiB (3 rounds). Large READs on
// the reader made no copy faster and serve spent 5% more per GiB.
const noWaitMaxRead = 64 << 10

// runNoWait runs o if it is a READ of at most noWaitMaxRead bytes, or a
// WRITE without FUA, that the backend serves from memory, without waiting for
// a disk, and reports whether it did; if not, nothing was done, and o goes
// to a worker. A connection's reader calls it for requests that arrived
// together, whose replies then share a record and a system call.
func (o *op) runNoWait() bool {
	nw, ok := o.q.exp.b.(noWaiter)
	r := &o.req
	switch {
	case !ok, r.Cmd == wire.CmdRead && r.Length > noWaitMaxRead:
		return false
	case r.Cmd == wire.CmdRead:
	case r.Cmd == wire.CmdWrite && r.Flags&wire.FlagFUA == 0:
	default:
		return false
	}
	if r.Cmd == wire.CmdWrite && wire.Checksum(*o.buf) != r.Checksum {
		return false // run refuses it, on a worker
	}
	if o.q.se.begin(r) != wire.StatusOK {
		return false // run says why, on a worker
	}
	defer o.q.se.end()
	if r.Cmd == wire.CmdWrite {
		p, off := *o.buf, int64(r.Offset)
		n := nw.WriteAtNoWait(p, off)
		if n == 0 {
			return false
		}
		if n < len(p) {
			// Part of it is written: the rest must follow now, whatever
			// it waits for, or the write would be neither whole nor
			// absent if it expired on its way to a worker.
			if _, err := o.q.exp.b.WriteAt(p[n:], off+int64(n)); err != nil {
				o.failed(err)
			}
		}
		return true
	}
	o.buf = bufs.Get(wire.ReplySize + int(r.Length))
	if !nw.ReadAtNoWait((*o.buf)[wire.ReplySize:], int64(r.Offset)) {
		bufs.Put(o.buf)
		o.buf = nil
		return false
	}
	o.encodeRead()
	return true
}

// encodeRead writes a READ's reply header, with its data's checksum, into
// the room before the data; other requests' replies need no buffer.
func (o *op) encodeRead() {
	r := &o.req
	if r.Cmd != wire.CmdRead {
		return
	}
	data := (*o.buf)[wire.ReplySize:]
	rep := wire.Reply{Cmd: wire.CmdRead, Length: r.Length, ID: r.ID, Checksum: wire.Checksum(data)}
	rep.Encode(*o.buf)
}

// read fills a buffer with the reply header's room and the data.
func (o *op) read() error {
	n := int(o.req.Length)
	o.buf = bufs.Get(wire.ReplySize + n)
	data := (*o.buf)[wire.ReplySize:]
	k, err := o.q.exp.b.ReadAt(data, int64(o.req.Offset))
	if k == n && (err == nil || errors.Is(err, io.EOF)) {
		// Checksum here rather than in the stream's writer, so it runs
		// in parallel across workers.
		o.encodeRead()
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("server: read %d of %d bytes at %d: %w", k, n, o.req.Offset, err)
}

// fua makes a successful TRIM or WRITE_ZEROES durable when asked to.
func (o *op) fua(err error) error {
	if err == nil && o.req.Flags&wire.FlagFUA != 0 {
		err = o.q.exp.b.Sync()
	}
	return err
}
