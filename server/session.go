package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/inflight"
	"github.com/dstproject/dst/internal/mux"
	"github.com/dstproject/dst/wire"
	"github.com/hashicorp/yamux"
)

// Per-session limits. A session is one client's control connection and
// the queue connections bound to it.
const (
	// maxStreams bounds the open control streams of a session; a client
	// needs one.
	maxStreams = 16
	// maxQueues bounds the queue connections bound to one session.
	maxQueues = 256
	// firstMessageTimeout bounds the wait for a new stream's first
	// message, so silent streams do not hold goroutines.
	firstMessageTimeout = 30 * time.Second
	// controlMessageMax bounds each message on a control stream (HELLO,
	// then PINGs; a HELLO is under 300 bytes), so a header announcing a
	// large body is refused before anything is set aside for it.
	controlMessageMax = 4096
)

// keyBytes bounds payload bytes in flight on all queues of all sessions of
// one client key, so that opening more queues or sessions does not multiply
// what one key can make the server hold. A variable so tests can lower it.
var keyBytes int64 = 256 << 20

// session is one client's control connection: its yamux session, the
// state its queue connections share (the fence gate, its key's byte
// budget) and those connections.
type session struct {
	sessionGate
	srv  *Server
	conn *crypto.Conn
	mux  *yamux.Session
	key  crypto.PublicKey
	// overKeyCap is the key's session count when it exceeded
	// Config.MaxSessionsPerKey at this session's start (0: within it); the
	// session's HELLO is refused.
	overKeyCap int
	log        *slog.Logger
	keyBytes   *inflight.Limiter // payload bytes in flight, all sessions of the key
	since      time.Time
	// access is what the key may do (access.go); a reload replaces it.
	access atomic.Pointer[crypto.Access]

	mu    sync.Mutex
	token wire.Identity // SERVER_INFO's session token, set once HELLO is answered
	hello wire.Hello
	told  wire.Identity // the instance id SERVER_INFO carried
	ctl   *yamux.Stream // the control stream, once HELLO is answered
	// eventMu orders what is written on ctl besides PONGs: SERVER_INFO
	// first, then events one at a time.
	eventMu sync.Mutex
	queues  map[*queueConn]struct{}
	qwg     sync.WaitGroup
	past    servedCounts // what its queue connections that have ended served
}

// serveControl serves a control connection: a yamux session whose first
// stream carries HELLO, SERVER_INFO and then keepalives. When it ends,
// so do the queue connections bound to it.
func (s *Server) serveControl(ctx context.Context, conn *crypto.Conn, peer string) error {
	sess, err := mux.Server(conn, &mux.Options{Logger: s.log})
	if err != nil {
		return err
	}
	se := &session{
		srv:    s,
		conn:   conn,
		mux:    sess,
		key:    conn.PeerKey(),
		log:    s.log.With("peer", peer),
		queues: make(map[*queueConn]struct{}),
		since:  time.Now(),
	}
	untrack, n := s.track(se)
	defer untrack()
	if limit := s.cfg.MaxSessionsPerKey; n > limit {
		// Answered at HELLO, so the client can say why; a key far over its
		// bound is not worth a stream.
		se.overKeyCap = n
		s.keyCapLog.warn("peer", peer, "key", se.key.String(), "sessions", n, "max", limit)
		if n > 2*limit {
			sess.Close()
		}
	}
	// A reload may have revoked the key while the handshake ran.
	acc, ok := s.authorized.Load().Access(se.key)
	if !ok {
		sess.Close()
	}
	se.access.Store(&acc)
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()

	var wg sync.WaitGroup
	streams := 0
	for {
		var st *yamux.Stream
		st, err = sess.AcceptStream()
		if err != nil {
			break
		}
		if streams >= maxStreams {
			se.log.Warn("refusing stream: too many open streams", "stream", st.StreamID(), "max", maxStreams)
			st.Close()
			continue
		}
		streams++
		wg.Add(1)
		go func() {
			defer wg.Done()
			se.serveStream(st)
		}()
	}
	sess.Close()
	wg.Wait()
	se.shutdown()
	s.leave(se)
	switch {
	case s.ctx.Err() != nil:
		return ErrServerClosed
	case ctx.Err() != nil, errors.Is(err, yamux.ErrSessionShutdown), errors.Is(err, io.EOF):
		return nil
	}
	return fmt.Errorf("server: session with %s: %w", peer, err)
}

// shutdown closes the session's queue connections, stops new ones from binding
// and waits until their readers and writers are done.
func (se *session) shutdown() {
	se.srv.forget(se)
	// Nothing the session queued starts from now on: its client is gone.
	// Requests already on the backend finish first.
	se.closing.Store(true)
	se.gate.Lock()
	se.ended = true
	se.gate.Unlock()
	se.mu.Lock()
	for q := range se.queues {
		q.close()
	}
	se.mu.Unlock()
	se.qwg.Wait()
}

// close ends the session's control connection; serveControl then ends
// the rest.
func (se *session) close() { se.mux.Close() }

// closeQueues closes the session's queue connections at once, dropping
// replies not yet written: for a session that must answer nothing more.
func (se *session) closeQueues() {
	se.mu.Lock()
	defer se.mu.Unlock()
	for q := range se.queues {
		q.close()
	}
}

// serveStream reads a stream's first message, which must be HELLO.
func (se *session) serveStream(st *yamux.Stream) {
	defer st.Close()
	log := se.log.With("stream", st.StreamID())
	st.SetReadDeadline(time.Now().Add(firstMessageTimeout))
	typ, body, err := wire.ReadMessageLimit(st, controlMessageMax)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		if !errors.Is(err, io.EOF) {
			log.Warn("closing stream: bad first message", "err", err)
		}
		return
	}
	if typ != wire.MsgHello {
		log.Warn("closing stream: unexpected first message", "type", typ)
		return
	}
	se.serveHello(st, body, log)
}

// serveHello answers HELLO with SERVER_INFO, after fencing older sessions
// of the client's attachment, then answers PINGs until the session ends.
func (se *session) serveHello(st *yamux.Stream, body []byte, log *slog.Logger) {
	// The version comes first: another version's HELLO may not parse as
	// this one's, and deserves the clear refusal.
	h, err := wire.DecodeHello(body)
	if err != nil && h.Version == wire.Version {
		log.Warn("closing stream: malformed HELLO", "err", err)
		return
	}
	if h.Version != wire.Version {
		log.Warn("refusing client: unsupported protocol version", "client", h.Client, "version", h.Version)
		refuse(st, log, wire.StatusEINVAL, versionMessage(h.Version))
		return
	}
	if se.overKeyCap > 0 {
		refuse(st, log, wire.StatusENOMEM, fmt.Sprintf(
			"too many sessions for this client key: %d open, the server allows %d (max_sessions_per_key)",
			se.overKeyCap, se.srv.cfg.MaxSessionsPerKey))
		se.close()
		return
	}
	se.mu.Lock()
	answered := !se.token.IsZero()
	se.mu.Unlock()
	if answered {
		log.Warn("closing stream: a second HELLO on one session")
		return
	}
	if !h.Attachment.IsZero() {
		k := attachKey{key: se.key, id: h.Attachment}
		if err := se.srv.admit(se, k, h.Epoch); err != nil {
			log.Warn("refusing stale session", "client", h.Client, "epoch", h.Epoch)
			refuse(st, log, wire.StatusESTALE, "a newer session of this attachment exists")
			return
		}
	} else {
		se.srv.admitUnfenced(se)
	}
	// An event (resize.go) may be sent from the moment ctl is set, but
	// not before SERVER_INFO: eventMu is held until it is written. A size
	// that changes meanwhile is either in SERVER_INFO or in an event.
	se.eventMu.Lock()
	var token wire.Identity
	if _, err := rand.Read(token[:]); err != nil {
		se.eventMu.Unlock()
		log.Error("choosing session token", "err", err)
		return
	}
	se.mu.Lock()
	se.token, se.hello, se.ctl = token, h, st
	se.mu.Unlock()
	se.srv.register(se, token)
	info := se.srv.infoFor(se.accessOf())
	info.Session, info.Clock = token, serverClock()
	se.mu.Lock()
	se.told = info.Instance
	se.mu.Unlock()
	msg := wire.AppendMessage(nil, wire.MsgServerInfo, wire.AppendServerInfo(nil, &info))
	_, err = st.Write(msg)
	se.eventMu.Unlock()
	if err != nil {
		log.Debug("writing SERVER_INFO", "err", err)
		return
	}
	log.Info("client connected", "client", h.Client, "epoch", h.Epoch)
	for {
		typ, body, err := wire.ReadMessageLimit(st, controlMessageMax)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				log.Debug("control stream ended", "err", err)
			}
			return
		}
		if typ == wire.MsgBye {
			se.srv.sayBye(se)
			continue
		}
		if typ != wire.MsgPing {
			log.Warn("closing control stream: unexpected message", "type", typ)
			return
		}
		p, err := wire.DecodePing(body)
		if err != nil {
			log.Warn("closing control stream: malformed PING", "err", err)
			return
		}
		pong := wire.AppendMessage(nil, wire.MsgPong, wire.AppendPong(nil, &wire.Pong{Seq: p.Seq, Clock: serverClock()}))
		if _, err := st.Write(pong); err != nil {
			log.Debug("writing PONG", "err", err)
			return
		}
	}
}

func versionMessage(v uint16) string {
	return fmt.Sprintf("protocol version %d is not supported; this server speaks version %d", v, wire.Version)
}

// bind adds a queue connection to the session, unless the session has
// ended or been fenced.
func (se *session) bind(q *queueConn) bool {
	se.mu.Lock()
	defer se.mu.Unlock()
	if se.isEnded() || len(se.queues) >= maxQueues {
		return false
	}
	se.queues[q] = struct{}{}
	se.qwg.Add(1)
	q.exp.acquire()
	return true
}

// unbind removes a queue connection that has finished.
func (se *session) unbind(q *queueConn) {
	se.mu.Lock()
	delete(se.queues, q)
	se.past.add(q.served.load())
	se.mu.Unlock()
	q.exp.release()
	se.qwg.Done()
}

// noExportMessage refuses an export a key may not open, or that does not
// exist, alike: the key learns only of the exports it may see.
func (s *Server) noExportMessage(name string, acc *crypto.Access) string {
	return fmt.Sprintf("no export named %q (exports: %s)", name, strings.Join(s.visible(acc), ", "))
}

// refuse sends an ERROR message; the caller then closes the stream or
// connection.
func refuse(w io.Writer, log *slog.Logger, status wire.Status, msg string) {
	b := wire.AppendMessage(nil, wire.MsgError, wire.AppendError(nil, &wire.ErrorMsg{Status: status, Message: msg}))
	if _, err := w.Write(b); err != nil {
		log.Debug("writing ERROR", "err", err)
	}
}
