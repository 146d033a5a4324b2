package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/mux"
	"github.com/dstproject/dst/internal/rawio"
	"github.com/dstproject/dst/wire"
)

// Config says how to reach and authenticate to a server.
type Config struct {
	Server     string // host:port
	PrivateKey crypto.PrivateKey
	ServerKey  crypto.PublicKey
	// MoreServerKeys are further pins, for a server rotating its key: a
	// handshake the server refuses under one pin is tried under the next.
	// Queue connections use the pin their session's control connection
	// proved.
	MoreServerKeys []crypto.PublicKey
	Cipher         crypto.Cipher // CipherAuto picks by CPU
	// DialTimeout bounds TCP connect, handshake and autoconfiguration.
	// Zero means 15s.
	DialTimeout time.Duration
	// Dialer, if set, replaces net.Dialer (tests use it to insert fault
	// injection or net.Pipe).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	Logger *slog.Logger

	poller *rawio.Poller // the attachment's, for its connections' sockets
}

func (c *Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// Dial connects to the server, runs the handshake and autoconfiguration.
// The session it returns belongs to no attachment: the server fences
// nothing for it, and nothing probes it.
func Dial(ctx context.Context, cfg *Config) (*Session, error) {
	return dial(ctx, cfg, wire.Identity{}, 0)
}

// dialTimeout bounds one dial: TCP connect, handshake and the first
// exchange.
func (c *Config) dialTimeout() time.Duration {
	if c.DialTimeout == 0 {
		return 15 * time.Second
	}
	return c.DialTimeout
}

// pins returns the server keys to try, in order.
func (c *Config) pins() []crypto.PublicKey {
	return append([]crypto.PublicKey{c.ServerKey}, c.MoreServerKeys...)
}

// pinned returns a copy of c that pins only k, the key a session proved.
func (c *Config) pinned(k crypto.PublicKey) *Config {
	p := *c
	p.ServerKey, p.MoreServerKeys = k, nil
	return &p
}

// channel dials TCP and runs the handshake: an encrypted connection to the
// server, and the TCP connection under it. With several pins, a handshake
// that fails under one is tried again, on a new connection, under the
// next: an IK handshake to a key the server does not hold ends with the
// server hanging up, which looks the same as a refused client key.
func channel(ctx context.Context, cfg *Config) (*crypto.Conn, net.Conn, error) {
	pins := cfg.pins()
	var errs []error
	for i, k := range pins {
		conn, raw, err := channelTo(ctx, cfg, k)
		if err == nil {
			return conn, raw, nil
		}
		if len(pins) == 1 || ctx.Err() != nil || !errors.Is(err, crypto.ErrHandshake) {
			return nil, nil, err
		}
		errs = append(errs, fmt.Errorf("pin %d (%s): %w", i+1, k, err))
	}
	return nil, nil, fmt.Errorf("client: no pinned server key was accepted by %s: %w", cfg.Server, errors.Join(errs...))
}

// channelTo is channel under one pin.
func channelTo(ctx context.Context, cfg *Config, serverKey crypto.PublicKey) (*crypto.Conn, net.Conn, error) {
	dial := cfg.Dialer
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	raw, err := dial(ctx, cfg.Server)
	if err != nil {
		return nil, nil, fmt.Errorf("client: connecting to %s: %w", cfg.Server, err)
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	raw = rawio.Wrap(raw)
	cfg.poller.Add(raw)
	conn, err := crypto.Client(ctx, raw, &crypto.ClientConfig{
		PrivateKey: cfg.PrivateKey,
		ServerKey:  serverKey,
		Cipher:     cfg.Cipher,
	})
	if err != nil {
		abort(raw)
		return nil, nil, fmt.Errorf("client: handshake with %s: %w", cfg.Server, err)
	}
	return conn, raw, nil
}

// dial opens a control connection as session epoch of an attachment.
func dial(ctx context.Context, cfg *Config, attachment wire.Identity, epoch uint64) (*Session, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.dialTimeout())
	defer cancel()
	conn, raw, err := channel(ctx, cfg)
	if err != nil {
		return nil, err
	}
	first := wire.AppendMessage(nil, wire.MsgControl, wire.AppendControl(nil, &wire.Control{Version: wire.Version}))
	if _, err := conn.Write(first); err != nil {
		abort(raw)
		return nil, fmt.Errorf("client: %s: %w", cfg.Server, err)
	}
	sess, err := mux.Client(conn, &mux.Options{Logger: cfg.logger()})
	if err != nil {
		abort(raw)
		return nil, err
	}
	s := &Session{mux: sess, raw: raw, cipher: conn.Cipher(), serverKey: conn.PeerKey(), dead: make(chan struct{}),
		readDone: make(chan struct{})}
	h := &wire.Hello{Version: wire.Version, Flags: wire.HelloEvents, Attachment: attachment, Epoch: epoch}
	if err := s.hello(ctx, h); err != nil {
		s.abort()
		return nil, fmt.Errorf("client: autoconfiguration from %s: %w", cfg.Server, err)
	}
	return s, nil
}

// hello opens the control stream, learns the server's exports and takes
// the first sample of its clock. The stream then carries keepalives.
func (s *Session) hello(ctx context.Context, h *wire.Hello) error {
	st, err := s.mux.OpenStream()
	if err != nil {
		return err
	}
	h.Client, _ = os.Hostname()
	msg := wire.AppendMessage(nil, wire.MsgHello, wire.AppendHello(nil, h))
	body, err := roundTrip(ctx, st, msg, wire.MsgServerInfo)
	if err != nil {
		return err
	}
	now := time.Now()
	info, err := wire.DecodeServerInfo(body)
	if info.Version != wire.Version && len(body) >= 2 {
		return fmt.Errorf("server speaks protocol version %d, this client %d: upgrade the older side",
			info.Version, wire.Version)
	}
	if err != nil {
		return err
	}
	s.info, s.said = info, *h
	s.lastPong.Store(now.UnixNano())
	s.ctl = st
	s.clock.sample(info.Clock, now)
	return nil
}

// dialQueue opens a queue connection bound to session s and to export,
// and checks that the server still describes the export as
// autoconfiguration did.
func dialQueue(ctx context.Context, cfg *Config, s *Session, export wire.ExportInfo, flags wire.QueueFlags) (*crypto.Conn, net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.dialTimeout())
	defer cancel()
	conn, raw, err := channel(ctx, cfg.pinned(s.serverKey))
	if err != nil {
		return nil, nil, err
	}
	q := &wire.Queue{Version: wire.Version, Flags: flags, Attachment: s.said.Attachment, Epoch: s.said.Epoch,
		Session: s.info.Session, Export: export.Name}
	body, err := roundTrip(ctx, conn, wire.AppendMessage(nil, wire.MsgQueue, wire.AppendQueue(nil, q)), wire.MsgOpened)
	if err == nil {
		var o wire.Opened
		if o, err = wire.DecodeOpened(body); err == nil && o.Export.Identity != export.Identity {
			err = fmt.Errorf("%w: export %q was %v, now %v", ErrIdentityChanged, export.Name, export.Identity, o.Export.Identity)
		}
	}
	if err != nil {
		abort(raw)
		var em *wire.ErrorMsg
		if errors.As(err, &em) && em.Status == wire.StatusEBUSY {
			err = leaseHeldError(em.Message)
		}
		return nil, nil, fmt.Errorf("client: opening a queue on %s: %w", cfg.Server, err)
	}
	return conn, raw, nil
}

// ErrLeaseHeld says another attachment holds the export's writer lease.
var ErrLeaseHeld = errors.New("client: the export is held for writing by another attachment")

// leaseHeldError is ErrLeaseHeld with the server's words, which name the
// holder.
type leaseHeldError string

func (e leaseHeldError) Error() string        { return string(e) }
func (e leaseHeldError) Is(target error) bool { return target == ErrLeaseHeld }

// ErrIdentityChanged says the disk behind an export name is not the one
// the attachment was made to.
var ErrIdentityChanged = errors.New("client: export identity changed")

// roundTrip sends one control message and reads the answer, which must be
// of type want or an ERROR.
func roundTrip(ctx context.Context, st net.Conn, msg []byte, want wire.MsgType) ([]byte, error) {
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
		defer st.SetDeadline(time.Time{})
	}
	if _, err := st.Write(msg); err != nil {
		return nil, err
	}
	t, body, err := wire.ReadMessage(st)
	if err != nil {
		return nil, err
	}
	switch t {
	case want:
		return body, nil
	case wire.MsgError:
		e, err := wire.DecodeError(body)
		if err != nil {
			return nil, err
		}
		return nil, &e
	default:
		return nil, fmt.Errorf("expected %v, server sent %v", want, t)
	}
}

// FindExport returns the named export; an empty name picks the only export
// of a server that has one.
func FindExport(info wire.ServerInfo, name string) (wire.ExportInfo, error) {
	var names []string
	for _, e := range info.Exports {
		if e.Name == name {
			return e, nil
		}
		names = append(names, e.Name)
	}
	if name == "" && len(info.Exports) == 1 {
		return info.Exports[0], nil
	}
	return wire.ExportInfo{}, fmt.Errorf("client: server %s has no export named %q (it has: %q)", info.Server, name, names)
}
