package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/inflight"
	"github.com/dstproject/dst/internal/nbdclient"
	"github.com/dstproject/dst/internal/qconn"
	"github.com/dstproject/dst/wire"
)

// Per-connection bounds on requests in flight. Requests beyond them are
// not read off the connection until earlier ones are answered, which
// pushes back on the client through TCP.
const (
	maxInflight      = 512
	maxInflightBytes = 64 << 20
)

// errDisconnect ends a queue's read loop on a DISCONNECT request.
var errDisconnect = errors.New("server: client disconnected")

// queueConn serves the requests of one queue connection.
//
// Who does what. The connection's reader (readLoop) parses a request,
// reads its payload into a pooled buffer (the record layer decrypts it
// straight there) and answers at once what needs no I/O. When nothing
// else of the connection is in flight and nothing more has arrived, it
// runs the request itself (inline): at queue depth one, handing it to a
// worker would cost a wake-up for no parallelism. Otherwise the request
// goes to the server-wide worker pool. Whoever finishes a request hands
// its reply to the connection's writer (qconn.Writer), which seals and
// writes it from that goroutine if no one else is writing, and replies
// that finish together share records and a system call.
//
// Nobody blocks on the client's socket but the connection's own flusher:
// replies are written with qconn.NoBlock, so a client that stops reading
// its replies stalls only its own connection, then its reader through the
// budget, never a worker other clients need.
type queueConn struct {
	se   *session
	conn *crypto.Conn
	exp  *export
	// readOnly: the export, the key or the queue's client made it so;
	// a queue that may write holds the writer lease.
	readOnly bool
	upGen    uint64 // the upstream's generation when the queue opened
	// unpushed lists the upstream connections holding requests this
	// reader queued (nbdclient.Queue) and has not pushed yet. The
	// reader's own.
	unpushed []*nbdclient.Client
	// gathered says the reader queued replies (qconn.Gather) that settle
	// must flush.
	gathered bool
	log      *slog.Logger
	w        *qconn.Writer[*op]
	budget   *inflight.Limiter // requests and bytes in flight on this connection
	served   served            // counted here, not per session: no cache line shared between queues
	hdr      [wire.RequestSize]byte
	discID   uint64 // the DISCONNECT request's id, for its reply
	// draining is set when the server stops reading the connection so it
	// can close it once its requests are answered (drain).
	draining atomic.Bool

	closeOnce sync.Once
}

// serveQueue binds a queue connection to its control session and serves
// it. body is the connection's QUEUE message.
func (s *Server) serveQueue(conn *crypto.Conn, body []byte, log *slog.Logger) {
	q, err := wire.DecodeQueue(body)
	if q.Version != wire.Version {
		log.Warn("refusing queue: unsupported protocol version", "version", q.Version)
		refuse(conn, log, wire.StatusEINVAL, versionMessage(q.Version))
		return
	}
	if err != nil {
		log.Warn("closing connection: malformed QUEUE", "err", err)
		return
	}
	se := s.lookup(q.Session)
	switch {
	case se == nil || se.key != conn.PeerKey():
		log.Warn("refusing queue: no such session", "attachment", q.Attachment, "epoch", q.Epoch)
		refuse(conn, log, wire.StatusESTALE, "no live session with that token for this client")
		return
	case se.hello.Attachment != q.Attachment || se.hello.Epoch != q.Epoch:
		log.Warn("refusing queue: attachment or epoch differ from its session's",
			"attachment", q.Attachment, "epoch", q.Epoch)
		refuse(conn, log, wire.StatusESTALE, "the queue's attachment and epoch are not its session's")
		return
	}
	acc := se.accessOf()
	e := s.table.Load().byName[q.Export]
	if e == nil || !acc.Allows(q.Export) {
		log.Warn("refusing queue: unknown export, or one the key may not open", "export", q.Export)
		refuse(conn, log, wire.StatusEINVAL, s.noExportMessage(q.Export, acc))
		return
	}
	qc := &queueConn{
		se:       se,
		conn:     conn,
		exp:      e,
		readOnly: q.Flags&wire.QueueReadOnly != 0,
		log:      se.log.With("export", q.Export),
		budget:   inflight.New(maxInflight, maxInflightBytes),
	}
	qc.w = qconn.NewWriter(conn, qc.encodeReply, qc.done, qc.writeFailed)
	// turnAway refuses the queue once its writer runs.
	turnAway := func(status wire.Status, msg string) {
		refuse(conn, log, status, msg)
		qc.close()
		qc.w.Wait()
	}
	if !se.bind(qc) {
		log.Warn("refusing queue: its session has ended or has too many queues")
		turnAway(wire.StatusESTALE, "the session has ended")
		return
	}
	defer se.unbind(qc)
	// A reload may have removed the export since it was looked up; bound
	// first, so that the reload either sees this queue to drain it or
	// this check sees the export removed (reload.go).
	if e.removed.Load() {
		log.Warn("refusing queue: the export was reconfigured or removed", "export", q.Export)
		turnAway(wire.StatusESTALE, "the export was reconfigured or removed; reconnect")
		return
	}
	// A queue that may write holds the export's writer lease (lease.go).
	if qc.readOnly || e.readOnly || acc.ReadOnly {
		qc.readOnly = true
	} else if err := s.acquireLease(se, e, q.Flags&wire.QueueTakeOver != 0); err != nil {
		log.Warn("refusing queue: the export's writer lease is held", "export", q.Export, "err", err)
		turnAway(wire.StatusEBUSY, err.Error())
		return
	}
	if e.up != nil {
		// The generation first, then the instance: a reset takes a new
		// instance before it moves the generation on, so a queue that
		// sees the new generation also sees the instance its session
		// was told is stale.
		qc.upGen = e.up.generation()
		se.mu.Lock()
		told := se.told
		se.mu.Unlock()
		if told != *s.instance.Load() {
			log.Warn("refusing queue: the export's upstream was reset since its session began", "export", q.Export)
			turnAway(wire.StatusESTALE, "the storage behind the export was reset; reconnect")
			return
		}
	}
	msg := wire.AppendMessage(nil, wire.MsgOpened, wire.AppendOpened(nil, &wire.Opened{Export: view(e.describe(), acc, qc.readOnly)}))
	if _, err := conn.Write(msg); err != nil {
		log.Debug("writing OPENED", "err", err)
		qc.close()
		qc.w.Wait()
		return
	}
	qc.log.Debug("queue opened")
	qc.serve()
}

// serve runs the connection until the client closes it, disconnects or
// sends something malformed, or the session ends.
func (q *queueConn) serve() {
	err := q.readLoop()
	switch {
	case err == nil, errors.Is(err, errDisconnect), q.draining.Load():
		// Let in-flight requests finish and be answered.
	case errors.Is(err, wire.ErrMalformed), errors.Is(err, wire.ErrShort):
		q.log.Warn("closing queue: malformed request", "err", err)
		q.close()
	default:
		q.log.Debug("queue ended", "err", err)
		q.close()
	}
	q.budget.Drain()
	if errors.Is(err, errDisconnect) {
		q.budget.Acquire(0)
		q.se.keyBytes.Acquire(0)
		o := getOp(q, wire.Request{Cmd: wire.CmdDisconnect, ID: q.discID}, 0)
		q.w.Send(o, qconn.Block)
	}
	q.close()
	q.w.Wait()
}

// close ends the connection: queued replies are dropped, and the reader
// and a blocked flusher return.
func (q *queueConn) close() {
	q.closeOnce.Do(func() {
		q.w.Close()
		q.conn.Close()
	})
}

func (q *queueConn) writeFailed(err error) {
	q.log.Debug("writing reply", "err", err)
	q.conn.Close()
}

// readLoop reads requests until the connection ends (nil at a clean EOF
// between requests) or a request is malformed.
func (q *queueConn) readLoop() error {
	defer q.settle()
	for {
		if q.holding() && q.conn.Readable() < wire.RequestSize {
			q.settle() // the read may wait
		}
		if _, err := io.ReadFull(q.conn, q.hdr[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		req, err := wire.DecodeRequest(q.hdr[:])
		if err != nil {
			return err
		}
		if req.Cmd == wire.CmdDisconnect {
			q.discID = req.ID
			return errDisconnect
		}
		if err := q.dispatch(req); err != nil {
			return err
		}
	}
}

// dispatch reads the request's payload and runs it, inline or on a
// worker, or answers it at once when no I/O is needed.
func (q *queueConn) dispatch(req wire.Request) error {
	var cost int64
	if req.Cmd == wire.CmdRead || req.Cmd == wire.CmdWrite {
		cost = int64(req.Length)
	}
	q.admit(q.budget, cost)
	q.admit(q.se.keyBytes, cost)
	o := getOp(q, req, cost)
	// Every WRITE has a buffer, an empty one for a zero-length WRITE
	// (which a fuzzer sent: the worker then found none).
	if n := req.PayloadLen(); n > 0 || req.Cmd == wire.CmdWrite {
		if q.holding() && q.conn.Readable() < n {
			q.settle()
		}
		o.buf = bufs.Get(n)
		if _, err := io.ReadFull(q.conn, *o.buf); err != nil {
			q.done(o)
			return fmt.Errorf("server: reading %v payload of %d bytes: %w", req.Cmd, n, err)
		}
	}
	if o.status = q.check(&req); o.status != wire.StatusOK || q.noop(&req) {
		q.w.Send(o, qconn.NoBlock)
		return nil
	}
	inline := q.budget.InFlight() == 1 && q.conn.Buffered() == 0
	if q.exp.up != nil {
		// More requests already in hand: queue this one upstream and
		// write them together (push).
		o.startUpstream(inline, q.conn.Decrypted() >= wire.RequestSize)
		return nil
	}
	if inline {
		o.run()
		q.w.Send(o, qconn.NoBlock)
		return nil
	}
	if o.runNoWait() {
		// One of a burst, served from memory: its reply goes out with
		// the others' (settle).
		q.w.Send(o, qconn.Gather)
		q.gathered = true
		return nil
	}
	select {
	case q.se.srv.jobs <- o:
	case <-q.se.srv.stopped:
		o.status = wire.StatusESTALE // the server is stopping: the client resends
		q.w.Send(o, qconn.NoBlock)
	}
	return nil
}

// admit takes cost from l, sending what the reader held back first if it
// would have to wait: the wait may be for those replies.
func (q *queueConn) admit(l *inflight.Limiter, cost int64) {
	if q.holding() {
		if l.TryAcquire(cost) {
			return
		}
		q.settle()
	}
	l.Acquire(cost)
}

// holding reports whether the reader holds back anything settle sends.
func (q *queueConn) holding() bool { return len(q.unpushed) > 0 || q.gathered }

// settle sends what the reader held back while it went through a burst of
// requests: those it queued upstream, and the replies it gathered. It
// runs before anything that may wait.
func (q *queueConn) settle() {
	q.push()
	if q.gathered {
		q.gathered = false
		q.w.Flush(qconn.NoBlock)
	}
}

// push writes the requests this reader queued upstream.
func (q *queueConn) push() {
	for i, c := range q.unpushed {
		c.Push()
		q.unpushed[i] = nil
	}
	q.unpushed = q.unpushed[:0]
}

// queuedOn records that the reader queued a request on c.
func (q *queueConn) queuedOn(c *nbdclient.Client) {
	for _, x := range q.unpushed {
		if x == c {
			return
		}
	}
	q.unpushed = append(q.unpushed, c)
}

// check applies the export's rules to a request.
func (q *queueConn) check(r *wire.Request) wire.Status {
	e := &q.exp.info
	size := q.exp.size.Load()
	switch {
	case r.Cmd == wire.CmdFlush:
		return wire.StatusOK
	case r.Cmd != wire.CmdRead && (q.readOnly || q.se.accessOf().ReadOnly):
		return wire.StatusEPERM
	case (r.Cmd == wire.CmdRead || r.Cmd == wire.CmdWrite) && r.Length > e.MaxTransfer:
		return wire.StatusEINVAL
	case r.Offset > size || uint64(r.Length) > size-r.Offset:
		if r.Cmd == wire.CmdWrite || r.Cmd == wire.CmdWriteZeroes {
			return wire.StatusENOSPC
		}
		return wire.StatusEINVAL
	}
	return wire.StatusOK
}

// noop reports whether a valid request needs no I/O: flushing a read-only
// export has nothing to flush.
func (q *queueConn) noop(r *wire.Request) bool {
	return r.Cmd == wire.CmdFlush && q.exp.readOnly
}

// encodeReply adds o's reply to a batch and returns o's buffers and
// budget: once sealed, the reply needs neither.
func (q *queueConn) encodeReply(b *qconn.Batch, o *op) {
	q.served.add(o)
	h := b.Frame(wire.ReplySize)
	if o.req.Cmd == wire.CmdRead && o.status == wire.StatusOK {
		copy(h, (*o.buf)[:wire.ReplySize])
		b.Payload((*o.buf)[wire.ReplySize:])
	} else {
		r := wire.Reply{Cmd: o.req.Cmd, Status: o.status, ID: o.req.ID}
		r.Encode(h)
	}
	q.done(o)
}

// done returns a finished request's buffers and budget.
func (q *queueConn) done(o *op) {
	cost := o.cost
	putOp(o)
	q.se.keyBytes.Release(1, cost)
	q.budget.Release(1, cost)
}
