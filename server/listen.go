package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/mux"
)

// Serve accepts connections on l until ctx is cancelled or Close is
// called, then closes l and every session it started and returns nil.
// Errors of one connection are logged and never end Serve.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if s.authorized.Load() == nil {
		return errors.New("server: no authorized keys configured")
	}
	if s.cfg.PrivateKey.IsZero() {
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
	peer := fmt.Sprintf("%s (%s)", conn.PeerKey(), remote)
	if comment, _ := s.authorized.Load().Contains(conn.PeerKey()); comment != "" {
		peer = fmt.Sprintf("%s %q (%s)", conn.PeerKey(), comment, remote)
	}
	sess, err := mux.Server(conn, &mux.Options{Logger: s.log})
	if err != nil {
		conn.Close()
		s.log.Warn("starting session", "peer", peer, "err", err)
		return
	}
	s.log.Info("session started", "peer", peer, "cipher", conn.Cipher())
	untrack := s.track(sess, conn.PeerKey())
	// A reload may have revoked the key while the handshake ran.
	if _, ok := s.authorized.Load().Contains(conn.PeerKey()); !ok {
		sess.Close()
	}
	err = s.ServeSession(ctx, sess, peer)
	untrack()
	conn.Close()
	if err != nil && !errors.Is(err, ErrServerClosed) {
		s.log.Info("session ended", "peer", peer, "err", err)
		return
	}
	s.log.Info("session ended", "peer", peer)
}

func (s *Server) handshake(ctx context.Context, c net.Conn, t *ticket) (*crypto.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	return crypto.Server(ctx, c, &crypto.ServerConfig{
		PrivateKey:          s.cfg.PrivateKey,
		Authorize:           func(k crypto.PublicKey) error { return s.authorized.Load().Authorize(k) },
		Ciphers:             s.cfg.Ciphers,
		Replay:              s.replay,
		FirstMessageTimeout: handshakeFirstTimeout,
		OnFirstMessage:      t.arrived,
	})
}
