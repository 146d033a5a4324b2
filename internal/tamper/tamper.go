// Package tamper is a proxy for tests that alters dst's payloads after
// their checksums were computed.
//
// The channel's AEAD rejects any byte changed on the wire, so a fault
// proxy (internal/faultproxy) never gets a bad payload past it: the
// connection dies and the client resends. What the xxhash64 checksum on
// every payload is for is the rest of the path, from the sender's buffer
// to the receiver's through both programs, where a bit flipped in memory
// is sealed and opened like any other. A Proxy stands in for that: it
// holds both ends' private keys, so it answers the client's handshake as
// the server and makes its own to the server as the client, sees every
// frame in the clear, and flips a bit in the payloads it is told to.
//
// Control connections pass through untouched. On a queue connection the
// proxy follows the frames (wire.Request and its WRITE payload one way,
// wire.Reply and its READ payload the other) and, while a test has asked
// for it, flips one bit in the middle of the next WRITE payload the client
// sends or the next READ payload the server returns, leaving the
// header's checksum as it was; or it puts bytes of the test's in the place
// of a reply, as a broken or hostile server would send them.
package tamper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/wire"
)

// handshakeTimeout bounds each of the proxy's two handshakes for one
// connection.
const handshakeTimeout = 10 * time.Second

// Config says where the proxy forwards to and with which keys.
type Config struct {
	Target    string            // the server's address (host:port)
	ServerKey crypto.PrivateKey // the server's: the proxy answers clients with it
	ClientKey crypto.PrivateKey // the client's: the proxy dials the server with it
}

// Proxy forwards connections to one dst server and corrupts payloads on
// demand. Its methods are safe to call from any goroutine.
type Proxy struct {
	cfg    Config
	ln     net.Listener
	replay *crypto.ReplayFilter
	wg     sync.WaitGroup // the accept loop and every connection's goroutines

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // raw sockets on both sides, closed by Close
	closed bool

	// reads and writes are the payloads still to corrupt; corrupted
	// counts those done, READs in [0] and WRITEs in [1].
	reads, writes atomic.Int64
	corrupted     [2]atomic.Int64
	// inject, if set, replaces the next reply frame (InjectReply).
	inject atomic.Pointer[[]byte]
}

// New starts a proxy on 127.0.0.1 with a free port.
func New(cfg Config) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("tamper: %w", err)
	}
	p := &Proxy{cfg: cfg, ln: ln, replay: crypto.NewReplayFilter(), conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the address clients should dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// CorruptReads makes the proxy flip a bit in each of the next n READ
// payloads the server returns; n <= 0 stops it.
func (p *Proxy) CorruptReads(n int) { p.reads.Store(int64(n)) }

// CorruptWrites makes the proxy flip a bit in each of the next n WRITE
// payloads the client sends; n <= 0 stops it.
func (p *Proxy) CorruptWrites(n int) { p.writes.Store(int64(n)) }

// InjectReply makes the proxy drop the next reply frame the server sends
// on a queue connection, send the client b in its place, and close that
// connection: b stands for whatever a broken or hostile server might say,
// and the close ends whatever b leaves the client waiting for. A nil b
// takes back an injection not yet made; an empty one sends nothing.
func (p *Proxy) InjectReply(b []byte) {
	if b == nil {
		p.inject.Store(nil)
		return
	}
	p.inject.Store(&b)
}

// Corrupted returns how many READ and WRITE payloads the proxy has
// corrupted so far.
func (p *Proxy) Corrupted() (reads, writes int64) {
	return p.corrupted[0].Load(), p.corrupted[1].Load()
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

// track records c for Close, or closes it and reports false once the
// proxy is closing.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			p.serve(c)
		}()
	}
}

// serve completes both handshakes for the client's raw connection c and
// forwards between the two channels until either side ends.
func (p *Proxy) serve(c net.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	want := p.cfg.ClientKey.Public()
	cc, err := crypto.Server(ctx, c, &crypto.ServerConfig{
		PrivateKey: p.cfg.ServerKey,
		Authorize: func(k crypto.PublicKey) error {
			if k != want {
				return errors.New("tamper: not the client key the proxy holds")
			}
			return nil
		},
		Replay: p.replay,
	})
	if err != nil {
		return
	}
	var d net.Dialer
	s, err := d.DialContext(ctx, "tcp", p.cfg.Target)
	if err != nil || !p.track(s) {
		return
	}
	defer p.untrack(s)
	sc, err := crypto.Client(ctx, s, &crypto.ClientConfig{PrivateKey: p.cfg.ClientKey, ServerKey: p.cfg.ServerKey.Public()})
	if err != nil {
		return
	}
	// The first message says what the connection is; a queue's is
	// answered by OPENED (or ERROR) before its frames begin.
	t, body, err := wire.ReadMessage(cc)
	if err != nil || write(sc, wire.AppendMessage(nil, t, body)) != nil {
		return
	}
	pumps := [2]func(){
		func() { io.Copy(sc, cc) },
		func() { io.Copy(cc, sc) },
	}
	if t == wire.MsgQueue {
		rt, rbody, err := wire.ReadMessage(sc)
		if err != nil || write(cc, wire.AppendMessage(nil, rt, rbody)) != nil || rt != wire.MsgOpened {
			return
		}
		pumps = [2]func(){
			func() { p.requests(sc, cc) },
			func() {
				if p.replies(cc, sc) {
					reset(c)
				}
			},
		}
	}
	var wg sync.WaitGroup
	for _, pump := range pumps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pump()
			// Either direction ending ends the connection: the peers
			// see it close, as they would a cut.
			c.Close()
			s.Close()
		}()
	}
	wg.Wait()
}

// requests forwards request frames from the client to the server,
// corrupting WRITE payloads while asked to.
func (p *Proxy) requests(dst, src io.ReadWriter) {
	var hb [wire.RequestSize]byte
	for {
		if _, err := io.ReadFull(src, hb[:]); err != nil {
			return
		}
		r, err := wire.DecodeRequest(hb[:])
		if err != nil {
			return
		}
		frame := make([]byte, wire.RequestSize+r.PayloadLen())
		copy(frame, hb[:])
		if _, err := io.ReadFull(src, frame[wire.RequestSize:]); err != nil {
			return
		}
		if r.PayloadLen() > 0 && take(&p.writes) {
			flip(frame[wire.RequestSize:])
			p.corrupted[1].Add(1)
		}
		if write(dst, frame) != nil {
			return
		}
	}
}

// replies forwards reply frames from the server to the client, corrupting
// READ payloads while asked to. It reports whether it ended after putting
// a test's bytes in the place of a reply.
func (p *Proxy) replies(dst, src io.ReadWriter) (injected bool) {
	var hb [wire.ReplySize]byte
	for {
		if _, err := io.ReadFull(src, hb[:]); err != nil {
			return
		}
		r, err := wire.DecodeReply(hb[:])
		if err != nil || r.Length > wire.MaxPayload {
			return
		}
		frame := make([]byte, wire.ReplySize+int(r.Length))
		copy(frame, hb[:])
		if _, err := io.ReadFull(src, frame[wire.ReplySize:]); err != nil {
			return
		}
		if b := p.inject.Swap(nil); b != nil {
			write(dst, *b)
			return true
		}
		if r.Cmd == wire.CmdRead && r.Length > 0 && take(&p.reads) {
			flip(frame[wire.ReplySize:])
			p.corrupted[0].Add(1)
		}
		if write(dst, frame) != nil {
			return
		}
	}
}

// reset makes closing c send a reset, as a crash would, rather than an
// orderly end the client would give the control stream time to explain.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
}

// take uses up one of n's corruptions, reporting whether there was one.
func take(n *atomic.Int64) bool {
	for {
		v := n.Load()
		if v <= 0 {
			return false
		}
		if n.CompareAndSwap(v, v-1) {
			return true
		}
	}
}

// flip changes one bit in the middle of a payload.
func flip(payload []byte) { payload[len(payload)/2] ^= 0x10 }

func write(w io.Writer, b []byte) error {
	_, err := w.Write(b)
	return err
}
