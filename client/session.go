package client

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/wire"
	"github.com/hashicorp/yamux"
)

// Session is one control connection to a server: the encrypted channel,
// its yamux session, its control stream, and what the server said about
// itself. Queue connections bind to it (dialQueue).
type Session struct {
	mux    *yamux.Session
	raw    net.Conn
	info   wire.ServerInfo
	said   wire.Hello // what this session said in HELLO
	cipher crypto.Cipher
	// serverKey is the pin the handshake proved; queue connections of
	// the session use it.
	serverKey crypto.PublicKey
	ctl       *yamux.Stream // control stream: PING and PONG after HELLO, and EVENTs
	clock     clockMap
	// onEvent is called, on the goroutine that reads the control stream,
	// with each EVENT the server sends; set before that goroutine starts.
	onEvent func(wire.Event)
	// readDone is closed when readControl returns.
	readDone chan struct{}

	dead     chan struct{} // closed by kill
	deadOnce sync.Once
	deadErr  error
	lastPong atomic.Int64 // unix nanoseconds of the last PONG
	// The last PING's sequence number and when it was sent, and the
	// round-trip time its PONG measured (nanoseconds).
	pingSeq  atomic.Uint64
	pingSent atomic.Int64
	rtt      atomic.Int64
}

// Info is the server's autoconfiguration answer.
func (s *Session) Info() wire.ServerInfo { return s.info }

// Cipher is the channel's AEAD.
func (s *Session) Cipher() crypto.Cipher { return s.cipher }

// ServerKey is the server's public key, as the handshake proved it: one
// of the pins.
func (s *Session) ServerKey() crypto.PublicKey { return s.serverKey }

// Close ends the session.
func (s *Session) Close() error { return s.mux.Close() }

// awaitControl waits up to d for the control stream to end, so that what
// the server sent before closing it is read.
func (s *Session) awaitControl(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.readDone:
	case <-t.C:
	}
}

// bye tells the server the attachment is closing (BYE), so that it frees
// the attachment's writer lease once the session ends rather than hold it
// for a reconnect. Best effort: a server that does not hear it lets the
// lease lapse after its grace.
func (s *Session) bye() {
	if s.ctl == nil {
		return
	}
	s.ctl.SetWriteDeadline(time.Now().Add(time.Second))
	s.ctl.Write(wire.AppendMessage(nil, wire.MsgBye, nil))
}

// abort ends the session with a TCP reset rather than an orderly close:
// the server learns at once that the session is gone, and the client's
// unsent bytes are dropped rather than delivered late. (A reset does not
// discard what the server's kernel has already received; the server's
// fencing and request expiry cover that.)
func (s *Session) abort() {
	abort(s.raw)
	s.mux.Close()
}

func abort(c net.Conn) {
	inner := c
	if w, ok := c.(interface{ Unwrap() net.Conn }); ok {
		inner = w.Unwrap()
	}
	if tc, ok := inner.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close() // the wrapper's Close: it leaves its busy-poll set
}

// kill declares the session dead for the reason err.
func (s *Session) kill(err error) {
	s.deadOnce.Do(func() {
		s.deadErr = err
		close(s.dead)
	})
}

// keepalive probes the session every interval on its control stream and
// kills it when no answer has come for timeout, or the stream fails. A
// frozen server process answers nothing, so this notices what TCP does
// not: its kernel keeps acknowledging. PONGs are read by readControl, which
// the caller runs beside it.
func (s *Session) keepalive(interval, timeout time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var seq uint64
	j := silence{interval: interval, timeout: timeout, lastTick: time.Now()}
	for {
		select {
		case <-s.dead:
			return
		case <-t.C:
		}
		now, lastPong := time.Now(), time.Unix(0, s.lastPong.Load())
		if j.dead(now, lastPong) {
			s.kill(fmt.Errorf("server did not answer keepalives for %v", now.Sub(lastPong).Round(time.Millisecond)))
			return
		}
		seq++
		s.pingSent.Store(time.Now().UnixNano())
		s.pingSeq.Store(seq)
		msg := wire.AppendMessage(nil, wire.MsgPing, wire.AppendPing(nil, &wire.Ping{Seq: seq}))
		s.ctl.SetWriteDeadline(time.Now().Add(timeout))
		if _, err := s.ctl.Write(msg); err != nil {
			s.kill(fmt.Errorf("sending keepalive: %w", err))
			return
		}
	}
}

// silence judges a server's silence at each keepalive tick.
type silence struct {
	interval, timeout time.Duration
	lastTick          time.Time
	spared            bool // the last tick let a silence past timeout go
}

// dead reports whether a server last heard from at lastPong is dead at
// the tick that came at now: silent for longer than timeout. A tick more
// than two intervals after the one before says this process did not run
// meanwhile (its CPUs taken by real-time tasks, its VM paused by the host):
// PONGs that came then may be waiting unread, behind this goroutine, so
// such a tick spares the session once and the next one judges it. Never
// two ticks in a row: a server that is gone is still found one interval
// later.
func (j *silence) dead(now, lastPong time.Time) bool {
	late := now.Sub(j.lastTick) > 2*j.interval
	j.lastTick = now
	if now.Sub(lastPong) <= j.timeout {
		j.spared = false
		return false
	}
	if late && !j.spared {
		j.spared = true
		return false
	}
	return true
}

// readControl reads the control stream: PONGs, and EVENTs, which it
// hands to onEvent.
func (s *Session) readControl() {
	defer close(s.readDone)
	for {
		typ, body, err := wire.ReadMessage(s.ctl)
		if err != nil {
			s.kill(fmt.Errorf("control stream: %w", err))
			return
		}
		now := time.Now()
		if typ == wire.MsgEvent {
			e, err := wire.DecodeEvent(body)
			if err != nil {
				s.kill(fmt.Errorf("control stream: %w", err))
				return
			}
			if s.onEvent != nil {
				s.onEvent(e)
			}
			continue
		}
		if typ != wire.MsgPong {
			s.kill(fmt.Errorf("control stream: server sent %v, expected PONG or EVENT", typ))
			return
		}
		p, err := wire.DecodePong(body)
		if err != nil {
			s.kill(fmt.Errorf("control stream: %w", err))
			return
		}
		s.clock.sample(p.Clock, now)
		s.lastPong.Store(now.UnixNano())
		if rtt := now.UnixNano() - s.pingSent.Load(); p.Seq == s.pingSeq.Load() && rtt > 0 {
			s.rtt.Store(rtt)
		}
	}
}

// clockMap relates this host's monotonic clock to a server's, so that a
// transaction's deadline can travel as a time on the server's clock.
//
// A sample pairs a server clock reading c with the local time t at which
// its message arrived. The server read c before t, so at any later local
// time u the server's clock reads at least c + (u - t), give or take the
// two clocks' rate difference. The expiry sent is that lower bound, less a
// margin for the rate difference: the server may give up a little early,
// never late.
type clockMap struct {
	last atomic.Pointer[clockSample]
}

type clockSample struct {
	server uint64
	local  time.Time
}

// Rate margin: clocks disciplined by NTP differ by at most 500 ppm; twice
// that, plus a millisecond.
const (
	clockSkewPPM = 1000
	clockSlack   = time.Millisecond
)

func (c *clockMap) sample(server uint64, local time.Time) {
	c.last.Store(&clockSample{server: server, local: local})
}

// expires maps a local deadline to the server's clock. The zero deadline
// maps to zero, which means none; a deadline already past maps to 1.
func (c *clockMap) expires(deadline time.Time) uint64 {
	if deadline.IsZero() {
		return 0
	}
	s := c.last.Load()
	if s == nil {
		return 1
	}
	d := deadline.Sub(s.local)
	if d > 0 {
		d -= d / 1e6 * clockSkewPPM
	}
	d -= clockSlack
	switch {
	case d >= 0:
		return s.server + uint64(d)
	case uint64(-d) >= s.server:
		return 1
	}
	return max(s.server-uint64(-d), 1)
}

var errSessionDead = errors.New("client: session dead")
