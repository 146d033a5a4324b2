package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/dstproject/dst/wire"
	"github.com/hashicorp/yamux"
)

// Per-stream bounds on requests in flight. Requests beyond them are not
// read off the stream until earlier ones are answered, which pushes back on
// the client through yamux's flow control.
const (
	maxInflight      = 512
	maxInflightBytes = 64 << 20
)

// errDisconnect ends a stream's read loop on a DISCONNECT request.
var errDisconnect = errors.New("server: client disconnected")

// stream serves the requests of one data stream.
//
// Three parties handle a request. The stream's reader (serve/readLoop)
// parses the header, reads any payload into a pooled buffer and rejects
// what needs no I/O on the spot. Everything else goes to the server-wide
// worker pool, which verifies checksums, does the I/O, computes the READ
// checksum and encodes the reply. The stream's writer (writeLoop) sends
// replies in the order they complete, each with one Write, and only then
// returns the request's budget.
//
// Workers never write to the stream: a client that stops reading its
// replies blocks only its own writer, then its reader through the budget,
// never the workers other clients need. The replies channel holds
// maxInflight entries, as many as requests may be in flight, so a worker's
// send never blocks.
type stream struct {
	se      *session
	st      *yamux.Stream
	exp     *export
	log     *slog.Logger
	replies chan *op
	br      *bufio.Reader // reads requests off st
	budget  *limiter      // requests and bytes in flight on this stream
	hdr     [wire.RequestSize]byte
	discID  uint64 // the DISCONNECT request's id, for its reply
}

func newStream(se *session, st *yamux.Stream, e *export, log *slog.Logger) *stream {
	return &stream{
		se:      se,
		st:      st,
		exp:     e,
		log:     log,
		replies: make(chan *op, maxInflight),
		br:      bufio.NewReaderSize(st, readBuffer),
		budget:  newLimiter(maxInflight, maxInflightBytes),
	}
}

// serve runs the stream until the client closes it, disconnects or sends
// something malformed, or the session ends.
func (s *stream) serve() {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.writeLoop()
	}()
	err := s.readLoop()
	switch {
	case err == nil, errors.Is(err, errDisconnect):
		// Let in-flight requests finish and be answered.
	case errors.Is(err, wire.ErrMalformed), errors.Is(err, wire.ErrShort):
		s.log.Warn("closing stream: malformed request", "err", err)
		s.st.Close()
	default:
		s.log.Debug("stream ended", "err", err)
		s.st.Close()
	}
	s.budget.drain()
	close(s.replies)
	wg.Wait()
	if errors.Is(err, errDisconnect) {
		var b [wire.ReplySize]byte
		r := wire.Reply{Cmd: wire.CmdDisconnect, ID: s.discID}
		r.Encode(b[:])
		s.st.Write(b[:])
	}
	s.st.Close()
}

// readLoop reads requests until the stream ends (nil at a clean EOF
// between requests) or a request is malformed.
func (s *stream) readLoop() error {
	for {
		if _, err := io.ReadFull(s.br, s.hdr[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		req, err := wire.DecodeRequest(s.hdr[:])
		if err != nil {
			return err
		}
		if req.Cmd == wire.CmdDisconnect {
			s.discID = req.ID
			return errDisconnect
		}
		if err := s.dispatch(req); err != nil {
			return err
		}
	}
}

// dispatch reads the request's payload and hands it to a worker, or
// answers it at once when no I/O is needed.
func (s *stream) dispatch(req wire.Request) error {
	cost := 0
	if req.Cmd == wire.CmdRead || req.Cmd == wire.CmdWrite {
		cost = int(req.Length)
	}
	s.budget.acquire(cost)
	s.se.bytes.acquire(cost)
	o := getOp(s, req, cost)
	if n := req.PayloadLen(); n > 0 {
		o.buf = bufs.Get(n)
		if _, err := io.ReadFull(s.br, *o.buf); err != nil {
			s.done(o)
			return fmt.Errorf("server: reading %v payload of %d bytes: %w", req.Cmd, n, err)
		}
	}
	if o.status = s.check(&req); o.status != wire.StatusOK || s.noop(&req) {
		s.replies <- o
		return nil
	}
	if s.budget.count() == 1 && s.br.Buffered() == 0 {
		return s.inline(o)
	}
	select {
	case s.se.srv.jobs <- o:
	case <-s.se.srv.stopped:
		o.status = wire.StatusESHUTDOWN
		s.replies <- o
	}
	return nil
}

// inline runs a request on the stream's reader and writes its reply from
// there. It is for a stream with nothing else in flight and nothing more
// read: the usual case at queue depth one, where handing the request to a
// worker and the reply to the writer would cost two goroutine wake-ups for
// no parallelism. The writer is idle then (every earlier reply was written
// before its budget was returned), so the reader may write. A request that
// arrives meanwhile waits at most this one request's time.
func (s *stream) inline(o *op) error {
	o.run()
	_, err := s.st.Write(o.reply())
	s.done(o)
	if err != nil {
		return fmt.Errorf("server: writing reply: %w", err)
	}
	return nil
}

// check applies the export's rules to a request.
func (s *stream) check(r *wire.Request) wire.Status {
	e := &s.exp.info
	switch {
	case r.Cmd == wire.CmdFlush:
		return wire.StatusOK
	case s.exp.readOnly && r.Cmd != wire.CmdRead:
		return wire.StatusEPERM
	case (r.Cmd == wire.CmdRead || r.Cmd == wire.CmdWrite) && r.Length > e.MaxTransfer:
		return wire.StatusEINVAL
	case r.Offset+uint64(r.Length) > e.Size:
		if r.Cmd == wire.CmdWrite || r.Cmd == wire.CmdWriteZeroes {
			return wire.StatusENOSPC
		}
		return wire.StatusEINVAL
	}
	return wire.StatusOK
}

// noop reports whether a valid request needs no I/O: flushing a read-only
// export has nothing to flush.
func (s *stream) noop(r *wire.Request) bool {
	return r.Cmd == wire.CmdFlush && s.exp.readOnly
}

// writeLoop sends replies until the reader closes the channel. Replies
// that complete together go out together: small ones are packed into one
// stream write (one yamux frame, one encrypted record), large READ replies
// are written where they lie. After a failed write it keeps draining, so
// budgets are returned and the reader can finish.
func (s *stream) writeLoop() {
	var (
		failed error
		batch  = make([]byte, 0, writeBatch)
		ops    []*op
		open   = true
	)
	write := func(b []byte) {
		if failed != nil || len(b) == 0 {
			return
		}
		if _, err := s.st.Write(b); err != nil {
			failed = err
			s.log.Debug("writing reply", "err", err)
			s.st.Close()
		}
	}
	for open {
		o, ok := <-s.replies
		if !ok {
			return
		}
		ops = append(ops[:0], o)
	gather:
		for len(ops) < maxBatchOps {
			select {
			case o, ok := <-s.replies:
				if !ok {
					open = false
					break gather
				}
				ops = append(ops, o)
			default:
				break gather
			}
		}
		batch = batch[:0]
		for _, o := range ops {
			r := o.reply()
			if len(r) >= packBelow || len(batch)+len(r) > writeBatch {
				write(batch)
				batch = batch[:0]
			}
			if len(r) >= packBelow {
				write(r)
			} else {
				batch = append(batch, r...)
			}
		}
		write(batch)
		for _, o := range ops {
			s.done(o)
		}
		clear(ops)
	}
}

// Reply batching: replies shorter than packBelow are copied into a batch of
// at most writeBatch bytes; longer ones are written on their own. A stream
// reads requests through a readBuffer-byte buffer; payloads larger than it
// go straight into their pooled buffers.
const (
	packBelow   = 16 << 10
	writeBatch  = 256 << 10
	maxBatchOps = 256
	readBuffer  = 16 << 10
)

// done returns a finished request's buffers and budget.
func (s *stream) done(o *op) {
	cost := o.cost
	putOp(o)
	s.se.bytes.release(cost)
	s.budget.release(cost)
}
