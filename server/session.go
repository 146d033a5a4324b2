package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/wire"
	"github.com/hashicorp/yamux"
)

// Per-session limits. A stream is a queue of a client's block device, so a
// handful per session is normal; the bounds only stop abuse.
const (
	maxStreams = 1024 // open streams per session
	// sessionBytes bounds payload bytes in flight on all streams of one
	// session: buffered WRITE payloads and READ buffers not yet sent.
	sessionBytes = 256 << 20
	// firstMessageTimeout bounds the wait for a new stream's first control
	// message, so silent streams do not hold goroutines.
	firstMessageTimeout = 30 * time.Second
)

// session is the state one client's streams share.
type session struct {
	sessionGate
	srv     *Server
	mux     *yamux.Session
	log     *slog.Logger
	bytes   *limiter // payload bytes in flight, all streams
	streams atomic.Int32
}

// ServeSession serves the streams of an established session until it ends
// or ctx is cancelled, then closes it and waits for its streams. It is the
// part of Serve after the handshake; tests call it over net.Pipe. peer
// names the client in logs. A session that ends because the client went
// away returns nil.
func (s *Server) ServeSession(ctx context.Context, sess *yamux.Session, peer string) error {
	if !s.enter() {
		sess.Close()
		return ErrServerClosed
	}
	defer s.active.Done()
	stop1 := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop1()
	stop2 := context.AfterFunc(s.ctx, func() { sess.Close() })
	defer stop2()

	se := &session{
		srv:   s,
		mux:   sess,
		log:   s.log.With("peer", peer),
		bytes: newLimiter(math.MaxInt, sessionBytes),
	}
	var wg sync.WaitGroup
	var err error
	for {
		var st *yamux.Stream
		st, err = sess.AcceptStream()
		if err != nil {
			break
		}
		if se.streams.Add(1) > maxStreams {
			se.streams.Add(-1)
			se.log.Warn("refusing stream: too many open streams", "stream", st.StreamID(), "max", maxStreams)
			st.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer se.streams.Add(-1)
			se.serveStream(st)
		}()
	}
	sess.Close()
	wg.Wait()
	s.leave(se)
	switch {
	case s.ctx.Err() != nil:
		return ErrServerClosed
	case ctx.Err() != nil, errors.Is(err, yamux.ErrSessionShutdown), errors.Is(err, io.EOF):
		return nil
	}
	return fmt.Errorf("server: session with %s: %w", peer, err)
}

// serveStream reads a stream's first control message, which decides what
// the stream is for.
func (se *session) serveStream(st *yamux.Stream) {
	defer st.Close()
	log := se.log.With("stream", st.StreamID())
	st.SetReadDeadline(time.Now().Add(firstMessageTimeout))
	typ, body, err := wire.ReadMessage(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		if !errors.Is(err, io.EOF) {
			log.Warn("closing stream: bad first message", "err", err)
		}
		return
	}
	switch typ {
	case wire.MsgHello:
		se.serveControl(st, body, log)
	case wire.MsgOpen:
		se.serveOpen(st, body, log)
	default:
		log.Warn("closing stream: unexpected first message", "type", typ)
	}
}

// serveControl answers HELLO with SERVER_INFO, after fencing older
// sessions of the client's attachment, then answers PINGs until the
// session ends.
func (se *session) serveControl(st *yamux.Stream, body []byte, log *slog.Logger) {
	// The version comes first: another version's HELLO may not parse as
	// this one's, and deserves the clear refusal.
	h, err := wire.DecodeHello(body)
	if err != nil && h.Version == wire.Version {
		log.Warn("closing stream: malformed HELLO", "err", err)
		return
	}
	if h.Version != wire.Version {
		log.Warn("refusing client: unsupported protocol version", "client", h.Client, "version", h.Version)
		se.refuse(st, log, wire.StatusEINVAL,
			fmt.Sprintf("protocol version %d is not supported; this server speaks version %d", h.Version, wire.Version))
		return
	}
	if !h.Attachment.IsZero() {
		k := attachKey{key: se.srv.keyOf(se.mux), id: h.Attachment}
		if err := se.srv.admit(se, k, h.Epoch); err != nil {
			log.Warn("refusing stale session", "client", h.Client, "epoch", h.Epoch)
			se.refuse(st, log, wire.StatusESTALE, "a newer session of this attachment exists")
			return
		}
	}
	info := se.srv.info
	info.Clock = serverClock()
	msg := wire.AppendMessage(nil, wire.MsgServerInfo, wire.AppendServerInfo(nil, &info))
	if _, err := st.Write(msg); err != nil {
		log.Debug("writing SERVER_INFO", "err", err)
		return
	}
	log.Info("client connected", "client", h.Client, "epoch", h.Epoch)
	for {
		typ, body, err := wire.ReadMessage(st)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				log.Debug("control stream ended", "err", err)
			}
			return
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

// serveOpen binds the stream to an export and serves its requests.
func (se *session) serveOpen(st *yamux.Stream, body []byte, log *slog.Logger) {
	o, err := wire.DecodeOpen(body)
	if err != nil {
		log.Warn("closing stream: malformed OPEN", "err", err)
		return
	}
	e := se.srv.exports[o.Export]
	if e == nil {
		log.Warn("refusing OPEN of unknown export", "export", o.Export)
		se.refuse(st, log, wire.StatusEINVAL, se.srv.noExportMessage(o.Export))
		return
	}
	msg := wire.AppendMessage(nil, wire.MsgOpened, wire.AppendOpened(nil, &wire.Opened{Export: e.info}))
	if _, err := st.Write(msg); err != nil {
		log.Debug("writing OPENED", "err", err)
		return
	}
	log.Debug("export opened", "export", o.Export)
	newStream(se, st, e, log.With("export", o.Export)).serve()
}

func (s *Server) noExportMessage(name string) string {
	return fmt.Sprintf("no export named %q (exports: %s)", name, strings.Join(s.names, ", "))
}

// refuse sends an ERROR message; the caller then closes the stream.
func (se *session) refuse(st *yamux.Stream, log *slog.Logger, status wire.Status, msg string) {
	b := wire.AppendMessage(nil, wire.MsgError, wire.AppendError(nil, &wire.ErrorMsg{Status: status, Message: msg}))
	if _, err := st.Write(b); err != nil {
		log.Debug("writing ERROR", "err", err)
	}
}
