package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/rawio"
	"github.com/dstproject/dst/wire"
)

// Serve accepts connections on l until ctx is cancelled or Close is
// called, then closes l and every session it started and returns nil.
// Errors of one connection are logged and never end Serve.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if s.authorized.Load() == nil {
		return errors.New("server: no authorized keys configured")
	}
	if s.keys.Load().current.IsZero() {
		return errors.New("server: no private key configured")
	}
	if !s.enter() {
		l.Close()
		return ErrServerClosed
	}
	defer s.active.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	stopListen := context.AfterFunc(ctx, func() { l.Close() })
	defer stopListen()

	// Connections end with ctx; Serve waits for them before returning,
	// then logs what its admission control had held back.
	defer s.admission.flushLogs()
	var conns sync.WaitGroup
	defer conns.Wait()

	s.log.Info("listening", "addr", l.Addr())
	backoff := time.Duration(0)
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// Out of descriptors and the like: wait, as net/http does,
			// rather than spin or give up.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("server: accepting on %v: %w", l.Addr(), err)
		}
		backoff = 0
		c = rawio.Wrap(c)
		t := s.admission.admit(c) // admission.go
		if t == nil {
			c.Close()
			continue
		}
		if !s.enter() {
			t.done()
			c.Close()
			return nil
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer s.active.Done()
			s.serveConn(ctx, c, t)
		}()
	}
}

// isTemporary matches accept errors worth retrying (EMFILE, ENFILE,
// ECONNABORTED...), which net still marks as temporary.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// serveConn authenticates a connection and serves its session.
func (s *Server) serveConn(ctx context.Context, c net.Conn, t *ticket) {
	remote := c.RemoteAddr().String()
	conn, err := s.handshake(ctx, c, t)
	if evicted := t.done(); err != nil {
		s.admission.handshakeFailed(ctx, remote, err, evicted)
		return
	}
	if err := s.ServeConn(ctx, conn); err != nil && !errors.Is(err, ErrServerClosed) {
		s.log.Info("connection ended", "remote", remote, "err", err)
	}
}

// firstMessageMax bounds the first message of a connection: a QUEUE with
// the longest export name fits.
const firstMessageMax = 512

// ServeConn serves an authenticated connection until it ends or ctx is
// cancelled, and closes it. The client's first message says what the
// connection is: CONTROL starts a control session (yamux: HELLO, keepalive),
// QUEUE binds a queue connection to a live control session and serves its
// requests. It is the part of Serve after the handshake; tests call it over
// net.Pipe. A connection that ends because the client went away returns
// nil.
func (s *Server) ServeConn(ctx context.Context, conn *crypto.Conn) error {
	defer conn.Close()
	if !s.enter() {
		return ErrServerClosed
	}
	defer s.active.Done()
	stop := context.AfterFunc(s.ctx, func() { conn.Close() })
	defer stop()

	remote := conn.RemoteAddr().String()
	peer := fmt.Sprintf("%s (%s)", conn.PeerKey(), remote)
	if comment, _ := s.authorized.Load().Contains(conn.PeerKey()); comment != "" {
		peer = fmt.Sprintf("%s %q (%s)", conn.PeerKey(), comment, remote)
	}
	log := s.log.With("peer", peer)
	conn.SetReadDeadline(time.Now().Add(firstMessageTimeout))
	typ, body, err := wire.ReadMessageLimit(conn, firstMessageMax)
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		log.Warn("closing connection: bad first message", "err", err)
		return nil
	}
	switch typ {
	case wire.MsgControl:
		c, err := wire.DecodeControl(body)
		if c.Version != wire.Version {
			log.Warn("refusing client: unsupported protocol version", "version", c.Version)
			refuse(conn, log, wire.StatusEINVAL, versionMessage(c.Version))
			return nil
		}
		if err != nil {
			log.Warn("closing connection: malformed CONTROL", "err", err)
			return nil
		}
		log.Info("session started", "cipher", conn.Cipher())
		err = s.serveControl(ctx, conn, peer)
		if err != nil && !errors.Is(err, ErrServerClosed) {
			log.Info("session ended", "err", err)
		} else {
			log.Info("session ended")
		}
		return err
	case wire.MsgQueue:
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		defer stop()
		s.serveQueue(conn, body, log)
		return nil
	}
	log.Warn("closing connection: unexpected first message", "type", typ)
	return nil
}

func (s *Server) handshake(ctx context.Context, c net.Conn, t *ticket) (*crypto.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	keys := s.keys.Load()
	return crypto.Server(ctx, c, &crypto.ServerConfig{
		PrivateKey:          keys.current,
		MoreKeys:            keys.more,
		Authorize:           func(k crypto.PublicKey) error { return s.authorized.Load().Authorize(k) },
		Ciphers:             s.cfg.Ciphers,
		Replay:              s.replay,
		FirstMessageTimeout: handshakeFirstTimeout,
		OnFirstMessage:      t.arrived,
	})
}
