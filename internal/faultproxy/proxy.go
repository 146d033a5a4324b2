package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Direction selects which way bytes travel through the proxy. The values
// are bits, so Both applies a fault to each direction.
type Direction int

const (
	ClientToServer Direction = 1 << iota
	ServerToClient
	Both = ClientToServer | ServerToClient
)

func (d Direction) String() string {
	switch d {
	case ClientToServer:
		return "client-to-server"
	case ServerToClient:
		return "server-to-client"
	case Both:
		return "both"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// ways lists the single directions in d, as indexes into per-direction state.
func (d Direction) ways() []int {
	var w []int
	if d&ClientToServer != 0 {
		w = append(w, 0)
	}
	if d&ServerToClient != 0 {
		w = append(w, 1)
	}
	return w
}

// chunkSize bounds what a pump reads at once, and so what a stalled
// direction absorbs before flow control pushes back on the sender.
const chunkSize = 32 << 10

// Stats counts what the proxy has done since New.
type Stats struct {
	Accepted    int64 // connections accepted and forwarded (not refused)
	Refused     int64 // connections reset on accept because of Refuse
	Cut         int64 // connections ended by Cut
	Corruptions int64 // bytes flipped by CorruptAt

	// Bytes forwarded in each direction, over all connections.
	ClientToServer, ServerToClient int64
}

type corruption struct {
	off int64
	xor byte
}

// way is the fault state of one direction, guarded by Proxy.mu.
type way struct {
	stalled bool
	delay   time.Duration
	corrupt []corruption // offsets in one connection's stream (CorruptAt)
	soon    []corruption // offsets in all connections' bytes together (CorruptSoon)
	read    int64        // bytes read in this direction, over all connections
}

// Proxy forwards TCP connections to a target and injects faults on demand.
type Proxy struct {
	target string
	ln     net.Listener
	ctx    context.Context // cancelled by Close, aborts dials to the target
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every connection

	mu          sync.Mutex
	flowing     *sync.Cond // broadcast when a stall ends or a link closes
	ways        [2]way
	refuseUntil time.Time
	links       map[*link]struct{}
	closed      bool

	accepted, refused, cut, corruptions atomic.Int64
	bytes                               [2]atomic.Int64
}

// link is one proxied connection: the client's side and the target's.
type link struct {
	client, server net.Conn
	closed         bool          // guarded by Proxy.mu
	done           chan struct{} // closed with closed, wakes a delayed pump
}

// New starts a proxy on 127.0.0.1 with a free port, forwarding to target
// (host:port).
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{target: target, ln: ln, ctx: ctx, cancel: cancel, links: make(map[*link]struct{})}
	p.flowing = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the address clients should dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops accepting, resets every connection and waits for all of the
// proxy's goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	err := p.ln.Close()
	p.resetAll()
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("faultproxy: close: %w", err)
	}
	return nil
}

// Cut resets every current connection on both sides: each peer sees
// ECONNRESET (or EOF if it was not reading), as after a crash or a
// middlebox dropping state. New connections are accepted as before.
func (p *Proxy) Cut() {
	p.cut.Add(int64(p.resetAll()))
}

func (p *Proxy) resetAll() int {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	n := 0
	for _, l := range links {
		if p.closeLink(l) {
			n++
		}
	}
	return n
}

// Stall stops forwarding in dir without closing anything. The pump stops
// reading its source, so after at most one chunk (32 KiB) held by the
// proxy plus the socket buffers, the sender's writes block.
func (p *Proxy) Stall(dir Direction) { p.setStalled(dir, true) }

// Resume undoes Stall: held bytes are forwarded and reading resumes.
func (p *Proxy) Resume(dir Direction) { p.setStalled(dir, false) }

func (p *Proxy) setStalled(dir Direction, stalled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range dir.ways() {
		p.ways[w].stalled = stalled
	}
	p.flowing.Broadcast()
}

// SetDelay holds every chunk forwarded in dir for d before writing it on;
// zero removes the delay. Chunks of one direction stay in order, so the
// delay also limits that direction's throughput.
func (p *Proxy) SetDelay(dir Direction, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range dir.ways() {
		p.ways[w].delay = d
	}
}

// CorruptAt XORs the byte at offset off of a connection's stream in dir with
// xor, once. Offsets count from the start of each connection's stream in
// that direction; the corruption applies to the first connection, current
// or later, that forwards the byte at off. Connections already past off
// when CorruptAt is called do not take it, so it stays pending for the next.
// With Both, each direction gets its own corruption.
func (p *Proxy) CorruptAt(dir Direction, off int64, xor byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range dir.ways() {
		p.ways[w].corrupt = append(p.ways[w].corrupt, corruption{off, xor})
	}
}

// CorruptSoon XORs with xor the n-th byte that the proxy forwards in dir
// from now on (the next byte for n ≤ 1), on whichever connection carries
// it, once. Unlike CorruptAt it needs no knowledge of where each
// connection's stream is, so it strikes traffic spread over several
// connections. With Both, each direction gets its own corruption.
func (p *Proxy) CorruptSoon(dir Direction, n int64, xor byte) {
	n = max(n, 1)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range dir.ways() {
		p.ways[w].soon = append(p.ways[w].soon, corruption{p.ways[w].read + n - 1, xor})
	}
}

// Refuse resets every connection accepted during the next d, before it
// reaches the target, as a restarting server would.
func (p *Proxy) Refuse(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuseUntil = time.Now().Add(d)
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Accepted:       p.accepted.Load(),
		Refused:        p.refused.Load(),
		Cut:            p.cut.Load(),
		Corruptions:    p.corruptions.Load(),
		ClientToServer: p.bytes[0].Load(),
		ServerToClient: p.bytes[1].Load(),
	}
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and friends pass
			continue
		}
		if p.refusing() {
			p.refused.Add(1)
			reset(c)
			continue
		}
		p.accepted.Add(1)
		// The accept loop's own count keeps the group above zero, so this
		// Add cannot race with Close's Wait.
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) refusing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Now().Before(p.refuseUntil)
}

// serve dials the target for client c and runs the two pumps until both
// directions have ended.
func (p *Proxy) serve(c net.Conn) {
	defer p.wg.Done()
	var d net.Dialer
	s, err := d.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		reset(c)
		return
	}
	l := &link{client: c, server: s, done: make(chan struct{})}
	if !p.add(l) {
		reset(c)
		reset(s)
		return
	}
	var pumps sync.WaitGroup
	pumps.Add(1)
	go func() {
		defer pumps.Done()
		p.pump(l, 1, s, c)
	}()
	p.pump(l, 0, c, s)
	pumps.Wait()
	p.closeLink(l)
}

func (p *Proxy) add(l *link) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.links[l] = struct{}{}
	return true
}

// closeLink resets both sides of l unless it was already closed, and
// reports whether it did.
func (p *Proxy) closeLink(l *link) bool {
	p.mu.Lock()
	if l.closed {
		p.mu.Unlock()
		return false
	}
	l.closed = true
	close(l.done)
	delete(p.links, l)
	p.flowing.Broadcast()
	p.mu.Unlock()
	reset(l.client)
	reset(l.server)
	return true
}

// pump copies src to dst for direction w of l. A clean EOF is passed on as
// a half close; any other failure resets the whole link, as a peer's reset
// would reach the other side through a real network path.
func (p *Proxy) pump(l *link, w int, src, dst net.Conn) {
	buf := make([]byte, chunkSize)
	var pos int64
	for {
		if !p.waitFlowing(l, w) {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			p.applyCorruption(w, pos, buf[:n])
			// A stall that began while Read was blocked holds this chunk.
			if !p.waitFlowing(l, w) || !p.sleep(l, w) {
				return
			}
			// Counted before the write, so that a peer that has seen the
			// bytes also sees them in Stats.
			p.bytes[w].Add(int64(n))
			pos += int64(n)
			if _, err := dst.Write(buf[:n]); err != nil {
				p.closeLink(l)
				return
			}
		}
		if errors.Is(err, io.EOF) {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			return
		}
		if err != nil {
			p.closeLink(l)
			return
		}
	}
}

// waitFlowing blocks while direction w is stalled, and reports whether the
// link is still open.
func (p *Proxy) waitFlowing(l *link, w int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.ways[w].stalled && !l.closed {
		p.flowing.Wait()
	}
	return !l.closed
}

// sleep waits out direction w's delay, and reports whether the link is
// still open.
func (p *Proxy) sleep(l *link, w int) bool {
	p.mu.Lock()
	d := p.ways[w].delay
	p.mu.Unlock()
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.done:
		return false
	}
}

// applyCorruption flips the pending corruptions of direction w that fall in
// chunk, which starts at stream offset pos of its connection.
func (p *Proxy) applyCorruption(w int, pos int64, chunk []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ws := &p.ways[w]
	ws.corrupt = p.flip(ws.corrupt, pos, chunk)
	ws.soon = p.flip(ws.soon, ws.read, chunk)
	ws.read += int64(len(chunk))
}

// flip applies the corruptions in cs that fall in chunk, which starts at
// offset pos, and returns those still pending.
func (p *Proxy) flip(cs []corruption, pos int64, chunk []byte) []corruption {
	pending := cs[:0]
	for _, c := range cs {
		if c.off >= pos && c.off < pos+int64(len(chunk)) {
			chunk[c.off-pos] ^= c.xor
			p.corruptions.Add(1)
			continue
		}
		pending = append(pending, c)
	}
	return pending
}

// reset closes c so that its peer sees a reset rather than an orderly EOF.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
