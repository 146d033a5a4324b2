package server

// Admission control for handshakes.
//
// Until a client has authenticated, the server knows two things about it:
// where it connects from, and whether it has said anything. A real client
// sends its preamble and first message in one write right after
// connecting, so its bytes are in the socket's receive buffer almost as
// soon as it is accepted, and its handshake reads them as soon as its
// goroutine runs. A connection that is only held open (silent, or dripping
// bytes that its handshake consumes as they come) has nothing waiting to be
// read, until handshakeFirstTimeout.
//
// Admission keeps a table of the connections in their handshake. It bounds
// the silent ones per source, and all of them in total. When a new
// connection finds a bound full, the oldest silent connection goes (from
// the same source if that source is at its bound, otherwise from anywhere)
// instead of the newcomer. So an attacker holding connections open keeps
// each one only until newer connections push it out, one source cannot
// take more than its share, and a client whose first message has arrived
// is never pushed out, even when the accept loop runs ahead of the
// handshakes' goroutines. A client is exposed only between its connect and
// the arrival of its first message (its Diffie-Hellman and half a round
// trip): it is pushed out if, in that time, maxHandshakesPerSource newer
// silent connections arrive from its source, or maxHandshakes from
// anywhere. (Many clients of one host connecting at the same instant can
// push each other out that way; a reconnecting client tries again.) A
// newcomer is refused only when the table is full of clients whose first
// message has arrived, which lasts as long as their Diffie-Hellman.
//
// Refusals, evictions and failed handshakes are logged at most once per
// logEvery each, with counts, so a flood cannot flood the log.

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/dstproject/dst/crypto"
	"golang.org/x/sys/unix"
)

const (
	// handshakeTimeout bounds a connection's whole handshake.
	handshakeTimeout = 10 * time.Second
	// handshakeFirstTimeout bounds the wait for the preamble and the first
	// message (118 bytes, sent in one write), counted from the accept.
	handshakeFirstTimeout = 2 * time.Second
	// maxHandshakes bounds the connections in their handshake, and with
	// them the goroutines and descriptors that connections which never
	// authenticate can hold.
	maxHandshakes = 256
	// maxHandshakesPerSource bounds the silent connections (whose first
	// message has not arrived) from one source: an IPv4 address, or an
	// IPv6 /64 (what one host or site is usually given). A client host
	// starting its attachments at boot dials a control connection and a
	// few queue connections each, one after another; 32 leaves room for
	// several attachments of one host dialing at the same instant.
	maxHandshakesPerSource = 32
	// logEvery is the least time between two WARN lines about one kind of
	// admission event.
	logEvery = 5 * time.Second
)

// admission is the table of connections in their handshake. Its methods
// are safe for concurrent use; admit runs in accept loops, the ticket
// methods in the connections' goroutines.
type admission struct {
	max, perSource int

	mu      sync.Mutex
	n       int                      // tickets admitted and not yet gone
	sources map[netip.Addr][]*ticket // by source, oldest first
	oldest  *ticket                  // of the waiting tickets, in admission order
	newest  *ticket
	evicted uint64 // counters, for tests and for the log
	refused uint64
	failed  uint64 // handshakes that failed (not evicted, not unauthorized, not shutdown)

	evictLog, refuseLog   *rateLog
	failLog, unauthorized *rateLog
}

// ticket is one admitted connection's place in the table.
type ticket struct {
	a       *admission
	c       net.Conn
	src     netip.Addr // invalid when the peer has no IP address (pipes)
	waiting bool       // its handshake has not read its first message
	gone    bool       // evicted or done: no longer in the table
	evicted bool
	// prev and next link the waiting tickets, oldest first.
	prev, next *ticket
}

func newAdmission(log *slog.Logger, max, perSource int) *admission {
	return &admission{
		max:       max,
		perSource: perSource,
		sources:   make(map[netip.Addr][]*ticket),
		evictLog: newRateLog(log, logEvery,
			"dropped a connection that had not sent its first handshake message, to admit a newer one"),
		refuseLog: newRateLog(log, logEvery,
			"refusing connection: every handshake slot is busy with a client that has sent its first message"),
		failLog:      newRateLog(log, logEvery, "handshake failed"),
		unauthorized: newRateLog(log, logEvery, "refused client key"),
	}
}

// sourceOf returns the source an address counts against: the IPv4
// address, or the /64 of an IPv6 one. It reports false for addresses
// without an IP.
func sourceOf(addr net.Addr) (netip.Addr, bool) {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip := ta.AddrPort().Addr().Unmap().WithZone("")
	if !ip.IsValid() {
		return netip.Addr{}, false
	}
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		ip = p.Addr()
	}
	return ip, true
}

// admit takes c into the table, evicting (and closing) an older silent
// connection if a bound is full. It returns nil if c must be refused.
func (a *admission) admit(c net.Conn) *ticket {
	t := &ticket{a: a, c: c, waiting: true}
	src, hasSrc := sourceOf(c.RemoteAddr())
	if hasSrc {
		t.src = src
	}
	var victim *ticket
	why := ""
	a.mu.Lock()
	if hasSrc && len(a.sources[src]) >= a.perSource {
		victim = a.silentFrom(src)
		if victim != nil {
			why = "its source is at its limit"
		}
	}
	if victim == nil && a.n >= a.max {
		why = "the server is at its limit"
		for o := a.oldest; o != nil && victim == nil; o = o.next {
			if !o.unread() {
				victim = o
			}
		}
		if victim == nil {
			a.refused++
			a.mu.Unlock()
			a.refuseLog.warn("remote", c.RemoteAddr(), "max", a.max)
			return nil
		}
	}
	if victim != nil {
		a.remove(victim)
		victim.evicted = true
		a.evicted++
	}
	a.n++
	if hasSrc {
		a.sources[src] = append(a.sources[src], t)
	}
	t.prev = a.newest
	if a.newest != nil {
		a.newest.next = t
	} else {
		a.oldest = t
	}
	a.newest = t
	a.mu.Unlock()
	if victim != nil {
		victim.c.Close()
		a.evictLog.warn("dropped", victim.c.RemoteAddr(), "for", c.RemoteAddr(), "reason", why,
			"max", a.max, "max_per_source", a.perSource)
	}
	return t
}

// silentFrom returns the oldest silent connection from src if src has
// perSource of them, else nil. Called with a.mu held.
func (a *admission) silentFrom(src netip.Addr) *ticket {
	var oldest *ticket
	silent := 0
	for _, o := range a.sources[src] {
		if o.waiting && !o.unread() {
			if oldest == nil {
				oldest = o
			}
			silent++
		}
	}
	if silent < a.perSource {
		return nil
	}
	return oldest
}

// unread reports whether t's socket holds bytes its handshake has not read
// yet: a client that has spoken, whose goroutine has not run. The
// handshake consumes whatever arrives while it waits, so a connection that
// drips bytes shows none here.
func (t *ticket) unread() bool {
	c := t.c
	if w, ok := c.(interface{ Unwrap() net.Conn }); ok {
		c = w.Unwrap()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n > 0
}

// remove takes t out of the table. Called with a.mu held.
func (a *admission) remove(t *ticket) {
	t.gone = true
	a.n--
	a.unlink(t)
	if !t.src.IsValid() {
		return
	}
	ts := a.sources[t.src]
	for i, o := range ts {
		if o == t {
			ts = append(ts[:i], ts[i+1:]...)
			break
		}
	}
	if len(ts) == 0 {
		delete(a.sources, t.src)
	} else {
		a.sources[t.src] = ts
	}
}

// unlink takes t off the waiting list. Called with a.mu held.
func (a *admission) unlink(t *ticket) {
	if !t.waiting {
		return
	}
	t.waiting = false
	if t.prev != nil {
		t.prev.next = t.next
	} else {
		a.oldest = t.next
	}
	if t.next != nil {
		t.next.prev = t.prev
	} else {
		a.newest = t.prev
	}
	t.prev, t.next = nil, nil
}

// arrived marks t's first message as read: it is no longer evicted for
// newer connections. It is crypto.ServerConfig.OnFirstMessage.
func (t *ticket) arrived() {
	t.a.mu.Lock()
	t.a.unlink(t)
	t.a.mu.Unlock()
}

// done takes t out of the table once its handshake is over, and reports
// whether it had been evicted (the handshake failed because of that).
func (t *ticket) done() (evicted bool) {
	t.a.mu.Lock()
	defer t.a.mu.Unlock()
	if !t.gone {
		t.a.remove(t)
	}
	return t.evicted
}

// counts returns the handshakes in progress and the connections evicted
// and refused so far.
func (a *admission) counts() (inProgress int, evicted, refused uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n, a.evicted, a.refused
}

// failures returns how many handshakes have failed, not counting evicted
// connections, refused keys and shutdown.
func (a *admission) failures() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.failed
}

// handshakeFailed logs a handshake that ended without a session. An
// evicted connection was already counted when it was evicted.
func (a *admission) handshakeFailed(ctx context.Context, remote string, err error, evicted bool) {
	switch {
	case evicted:
	case ctx.Err() != nil:
		a.failLog.log.Debug("handshake aborted by shutdown", "remote", remote, "err", err)
	case errors.Is(err, crypto.ErrUnauthorized):
		a.unauthorized.warn("remote", remote, "err", err)
	default:
		a.mu.Lock()
		a.failed++
		a.mu.Unlock()
		a.failLog.warn("remote", remote, "err", err)
	}
}

// flushLogs writes out the counts of suppressed log lines.
func (a *admission) flushLogs() {
	for _, r := range []*rateLog{a.evictLog, a.refuseLog, a.failLog, a.unauthorized} {
		r.flush()
	}
}

// rateLog writes at most one WARN line per period about one kind of event:
// the first event after a quiet period at once, with its details; then,
// while events keep coming, one line per period saying how many there were.
type rateLog struct {
	log   *slog.Logger
	every time.Duration
	msg   string

	mu         sync.Mutex
	open       bool   // a period is running: events are counted, not logged
	suppressed int    // events counted in the running period
	period     uint64 // numbers periods, so a stale timer does nothing
	timer      *time.Timer
}

func newRateLog(log *slog.Logger, every time.Duration, msg string) *rateLog {
	return &rateLog{log: log, every: every, msg: msg}
}

func (r *rateLog) warn(args ...any) {
	r.mu.Lock()
	if r.open {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	r.open = true
	r.schedule()
	r.mu.Unlock()
	r.log.Warn(r.msg, args...)
}

// schedule arms the timer that ends the running period. Called with r.mu
// held.
func (r *rateLog) schedule() {
	r.period++
	p := r.period
	r.timer = time.AfterFunc(r.every, func() { r.endPeriod(p) })
}

// endPeriod logs the count of the period's suppressed events, if any, and
// starts another period if there were some.
func (r *rateLog) endPeriod(p uint64) {
	r.mu.Lock()
	if p != r.period || !r.open {
		r.mu.Unlock()
		return
	}
	n := r.suppressed
	r.suppressed = 0
	if n == 0 {
		r.open = false
	} else {
		r.schedule()
	}
	r.mu.Unlock()
	if n > 0 {
		r.log.Warn(r.msg, "more", n, "within", r.every)
	}
}

// flush ends the running period at once, logging its count if any.
func (r *rateLog) flush() {
	r.mu.Lock()
	if !r.open {
		r.mu.Unlock()
		return
	}
	r.timer.Stop()
	r.period++
	r.open = false
	n := r.suppressed
	r.suppressed = 0
	r.mu.Unlock()
	if n > 0 {
		r.log.Warn(r.msg, "more", n)
	}
}
