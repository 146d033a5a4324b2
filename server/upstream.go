package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dstproject/dst/internal/nbdclient"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/qconn"
	"github.com/dstproject/dst/wire"
)

// An export's storage may be another NBD server on the same host (a
// qemu-storage-daemon in front of qcow2 or Ceph RBD, nbdkit and its
// plugins), reached over a unix socket or TCP: the upstream. dst then adds
// what such servers lack across a network (pinned keys, resend, fencing,
// replay, expiry) without a plugin per storage engine.
//
// The request path is asynchronous: the queue connection's reader checks
// a request and sends it upstream itself, and no worker holds a request
// while the upstream works on it. At queue depth one the reader then reads
// the upstream's reply itself (nbdclient.GoWait), as the file path runs a
// lone request inline; with more requests already decrypted it queues
// them and writes them upstream together (nbdclient.Queue, then push).
// Otherwise the upstream connection's reader completes the replies it
// read together, gathering them in their queues' writers, and flushes
// each writer once before it reads again (upConn.drain): a burst of
// replies goes to the client in one record and one system call.
//
// Semantics kept end to end:
//   - FLUSH is answered after the upstream answers its FLUSH; FUA travels
//     as FUA, or as the write then a FLUSH where the upstream lacks FUA.
//   - An upstream error is the client's error on that transaction.
//   - A request is sent upstream only before its expiry: one that waits
//     for a lost upstream to come back and outlives its deadline fails
//     with ETIMEDOUT and never reaches the storage, so no zombie write
//     lands after its client gave up.
//   - A lost upstream connection may mean a restarted upstream that lost
//     its write cache (qemu-storage-daemon with cache=writeback). So a
//     loss resets the storage: the server takes a new instance id, and
//     every session that was told the old one ends at its next request on
//     the export (without a reply: its client resends) or queue it opens.
//     Its client reconnects, sees the new instance, and replays what was
//     acknowledged but not flushed before anything else, as after a
//     server restart. Meanwhile the upstream is dialled again with
//     backoff, and requests of new sessions wait for it within their
//     deadlines.

// Upstream connection defaults.
const (
	// upstreamDialTimeout bounds one attempt to connect and open the
	// export.
	upstreamDialTimeout = 2 * time.Second
	// upstreamStartWait is how long New waits for an upstream that is not
	// up yet (started by the same systemd transaction, say).
	upstreamStartWait = 15 * time.Second
	// upstreamBackoffMax bounds the wait between reconnect attempts.
	upstreamBackoffMax = 2 * time.Second
	// upstreamTick is how often requests waiting for a lost upstream are
	// checked for expiry.
	upstreamTick = 50 * time.Millisecond
)

var (
	// errStorageReset fails a request whose session was told an instance
	// id from before the upstream was lost: it is not answered, and its
	// session ends.
	errStorageReset = errors.New("server: the upstream connection was lost; its write cache may be gone")
	// errExpired fails a request that outlived its deadline before it
	// could be sent upstream.
	errExpired = errors.New("server: request expired before it could be sent upstream")
)

// UpstreamTarget is a parsed upstream address.
type UpstreamTarget struct {
	Network, Addr, Export string
}

// ParseUpstream parses an NBD URI as the NBD URI standard writes it
// (doc/uri.md in the nbd project): nbd+unix:///EXPORT?socket=PATH for a
// unix socket, nbd://HOST[:PORT]/EXPORT for TCP (port 10809 by default).
// TLS (nbds) is refused: an upstream is local or on a trusted LAN, and dst
// carries its data onwards encrypted.
func ParseUpstream(uri string) (UpstreamTarget, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return UpstreamTarget{}, fmt.Errorf("upstream %q: %w", uri, err)
	}
	export := strings.TrimPrefix(u.Path, "/")
	q := u.Query()
	switch u.Scheme {
	case "nbd+unix":
		sock := q.Get("socket")
		if u.Host != "" || sock == "" || len(q) != 1 {
			return UpstreamTarget{}, fmt.Errorf("upstream %q: want nbd+unix:///EXPORT?socket=PATH", uri)
		}
		return UpstreamTarget{Network: "unix", Addr: sock, Export: export}, nil
	case "nbd":
		if u.Host == "" || len(q) != 0 {
			return UpstreamTarget{}, fmt.Errorf("upstream %q: want nbd://HOST[:PORT]/EXPORT", uri)
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "10809")
		}
		return UpstreamTarget{Network: "tcp", Addr: host, Export: export}, nil
	case "nbds", "nbds+unix":
		return UpstreamTarget{}, fmt.Errorf("upstream %q: TLS to an upstream is not supported; use a unix socket or a trusted network", uri)
	}
	return UpstreamTarget{}, fmt.Errorf("upstream %q: scheme %q: want nbd+unix or nbd", uri, u.Scheme)
}

// Upstream is an export's storage on another NBD server. It implements
// Backend (its blocking methods serve callers other than queue
// connections) and Identifier.
type Upstream struct {
	target UpstreamTarget
	uri    string
	// want is how many connections to open if the upstream announces
	// CAN_MULTI_CONN; one otherwise, since a FLUSH then covers only its
	// own connection's writes.
	want int
	log  *slog.Logger
	seed []byte // the persisted id and the export's name, for the identity
	// onReset is called, under mu, when a connection is lost and before
	// the generation moves on (the server takes a new instance id).
	onReset func(error)

	mu      sync.Mutex
	conns   []*upConn        // nil while the upstream is lost
	gen     uint64           // counts losses
	info    nbdclient.Export // of the first connection
	waiting []*op            // requests waiting for the upstream to come back
	closed  bool
	stop    chan struct{} // closed by Close: the reconnect loop returns
	loopWG  sync.WaitGroup

	next atomic.Uint32 // picks a connection
	// identity is set at the first connection, and changed when a
	// reconnect finds another export (smaller, or with other block sizes
	// or description), which also sets replaced.
	identity atomic.Pointer[wire.Identity]
	replaced atomic.Bool
}

// OpenUpstream connects to the upstream of the export named name, waiting
// up to upstreamStartWait for it to come up, with conns connections if it
// announces multi-conn (0 means 1). idFile holds the persisted random id
// the export's identity derives from (created if missing); with an empty
// idFile the identity is random at every start.
func OpenUpstream(uri, name string, conns int, idFile string, log *slog.Logger) (*Upstream, error) {
	t, err := ParseUpstream(uri)
	if err != nil {
		return nil, err
	}
	u := &Upstream{target: t, uri: uri, want: max(conns, 1), log: log.With("export", name, "upstream", uri),
		stop: make(chan struct{})}
	id, err := upstreamID(idFile)
	if err != nil {
		return nil, err
	}
	u.seed = append(append(id, 0), name...)
	deadline := time.Now().Add(upstreamStartWait)
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, upstreamBackoffMax) {
		conns, info, err := u.dial()
		if err == nil {
			u.conns, u.info = conns, info
			if u.want > 1 && len(conns) == 1 {
				u.log.Warn("the upstream does not announce multi-conn: one connection, not the configured", "connections", u.want)
			}
			id := u.identityOf(info)
			u.identity.Store(&id)
			u.log.Info("upstream connected", "size", info.Size, "flags", info.Flags, "connections", len(conns),
				"structured_replies", info.Structured, "block_min", info.MinBlock, "block_preferred", info.PreferredBlock,
				"block_max", info.MaxBlock)
			return u, nil
		}
		if time.Now().Add(backoff).After(deadline) {
			return nil, fmt.Errorf("upstream %s: %w", uri, err)
		}
		u.log.Warn("upstream not reachable yet; retrying", "err", err)
		time.Sleep(backoff)
	}
}

// upstreamID reads the 16 random bytes in idFile, creating it if needed.
func upstreamID(idFile string) ([]byte, error) {
	id := make([]byte, 16)
	if idFile == "" {
		_, err := rand.Read(id)
		return id, err
	}
	b, err := os.ReadFile(idFile)
	if err == nil {
		id, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(id) != 16 {
			return nil, fmt.Errorf("upstream id file %s: want 32 hexadecimal digits", idFile)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("upstream id file: %w", err)
	}
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(idFile), 0o755); err != nil {
		return nil, fmt.Errorf("upstream id file: %w", err)
	}
	if err := os.WriteFile(idFile, []byte(hex.EncodeToString(id)+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("upstream id file: %w", err)
	}
	return id, nil
}

// identityOf derives the export identity: a hash of the persisted id, the
// export's name, the upstream's address and export name, and what the
// upstream says of the export that names it (its description).
func (u *Upstream) identityOf(info nbdclient.Export) wire.Identity {
	h := sha256.New()
	h.Write([]byte("dst upstream identity\x00"))
	h.Write(u.seed)
	fmt.Fprintf(h, "\x00%s\x00%s\x00%s\x00%s", u.target.Network, u.target.Addr, u.target.Export, info.Description)
	var id wire.Identity
	copy(id[:], h.Sum(nil))
	return id
}

// upConn is one connection to the upstream. Its reader completes a burst
// of replies it read together by gathering them in their queue
// connections' writers (qconn.Gather), then flushing each of those
// writers once (drain): the burst goes out in few records and system
// calls instead of one of each per reply.
type upConn struct {
	*nbdclient.Client
	gathered []gathered // the reader role's
}

// gathered is a queue connection whose writer holds replies gathered
// since the last drain, and the bytes of their payloads.
type gathered struct {
	q     *queueConn
	bytes int
}

// sealAway is the payload, in one queue's share of a burst, from which
// the queue's own flusher seals and writes it instead of the upstream's
// reader: sealing large reads is most of their cost, and one reader
// sealing for every queue would serialize it on one CPU (sequential reads
// through one upstream connection measured 0.66–0.82 of a file export
// that way). Below it, a hand-off would cost more than the sealing.
const sealAway = 128 << 10

func dialUp(ctx context.Context, t UpstreamTarget) (*upConn, error) {
	nc, err := nbdclient.Dial(ctx, t.Network, t.Addr, t.Export)
	if err != nil {
		return nil, err
	}
	c := &upConn{Client: nc}
	nc.OnDrain(c.drain)
	return c, nil
}

// answer ends o, which the upstream completed without error, on c's
// reader: its reply is gathered in its queue's writer, to go out at c's
// next drain.
func (c *upConn) answer(o *op) {
	q := o.q
	q.se.end()
	o.encodeRead()
	n := 0
	if o.req.Cmd == wire.CmdRead {
		n = int(o.req.Length)
	}
	q.w.Send(o, qconn.Gather) // from here o may be answered and reused
	for i := range c.gathered {
		if g := &c.gathered[i]; g.q == q {
			g.bytes += n
			return
		}
	}
	c.gathered = append(c.gathered, gathered{q, n})
}

// drain writes the replies gathered since the last drain, or has their
// queues' flushers write them when they are large.
func (c *upConn) drain() {
	for i, g := range c.gathered {
		if g.bytes >= sealAway {
			g.q.w.Flush(qconn.Defer)
		} else {
			g.q.w.Flush(qconn.NoBlock)
		}
		c.gathered[i] = gathered{}
	}
	c.gathered = c.gathered[:0]
}

// dial opens the upstream's connections: several if it allows multi-conn.
func (u *Upstream) dial() ([]*upConn, nbdclient.Export, error) {
	ctx, cancel := context.WithTimeout(context.Background(), upstreamDialTimeout)
	defer cancel()
	first, err := dialUp(ctx, u.target)
	if err != nil {
		return nil, nbdclient.Export{}, err
	}
	info := first.Export()
	conns := []*upConn{first}
	if info.Flags&nbdwire.TransCanMultiConn != 0 {
		for len(conns) < u.want {
			c, err := dialUp(ctx, u.target)
			if err == nil && c.Export() != info {
				c.Close()
				err = errors.New("connections to one export disagree about it")
			}
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return nil, nbdclient.Export{}, err
			}
			conns = append(conns, c)
		}
	}
	return conns, info, nil
}

// Identity implements Identifier.
func (u *Upstream) Identity() wire.Identity { return *u.identity.Load() }

// has reports whether the upstream announced f.
func (u *Upstream) has(f nbdwire.TransFlags) bool { return u.info.Flags&f != 0 }

// exportInfo passes what the upstream announced through to dst's clients:
// block sizes (NBD_INFO_BLOCK_SIZE's minimum as the logical block, its
// preferred size as the physical one, its maximum as the largest
// transfer), read-only, rotational, TRIM and WRITE_ZEROES. FLUSH and FUA
// are always offered (see flush and fua), and so is MULTI_CONN: with one
// upstream connection, or several the upstream allows, a FLUSH covers
// every write the upstream answered.
func (u *Upstream) exportInfo(e *wire.ExportInfo) {
	i := u.info
	e.LogicalBlock = max(512, min(i.MinBlock, 64<<10))
	e.PhysicalBlock = max(e.LogicalBlock, min(i.PreferredBlock, 64<<10))
	if i.MaxBlock != 0 && i.MaxBlock < e.MaxTransfer {
		e.MaxTransfer = i.MaxBlock / e.LogicalBlock * e.LogicalBlock
	}
	e.Flags &^= wire.ExportTrim | wire.ExportWriteZeroes | wire.ExportRotational
	if u.has(nbdwire.TransReadOnly) {
		e.Flags |= wire.ExportReadOnly
	}
	if e.Flags&wire.ExportReadOnly == 0 {
		if u.has(nbdwire.TransSendTrim) {
			e.Flags |= wire.ExportTrim
		}
		if u.has(nbdwire.TransSendWriteZeroes) {
			e.Flags |= wire.ExportWriteZeroes
		}
	}
	if u.has(nbdwire.TransRotational) {
		e.Flags |= wire.ExportRotational
	}
}

// generation returns how many times the upstream was lost so far.
func (u *Upstream) generation() uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.gen
}

// start sends o upstream, or parks it until the upstream is back. o has
// passed its session's begin; whatever happens, o ends in finish.
func (u *Upstream) start(o *op) {
	u.mu.Lock()
	switch {
	case u.closed:
		u.mu.Unlock()
		u.finish(o, nil, errShutdownUp)
		return
	case o.q.upGen != u.gen:
		u.mu.Unlock()
		u.finish(o, nil, errStorageReset)
		return
	case u.replaced.Load():
		u.mu.Unlock()
		u.finish(o, nil, errReplaced)
		return
	case u.conns == nil:
		u.waiting = append(u.waiting, o)
		u.mu.Unlock()
		return
	}
	c := u.conns[int(u.next.Add(1))%len(u.conns)]
	u.mu.Unlock()
	u.send(c, o)
}

var (
	errShutdownUp = errors.New("server: the export is closing")
	errReplaced   = errors.New("server: the upstream export was replaced by another")
)

// send fills o's call for its request's step and sends it on c, unless
// the request has expired.
func (u *Upstream) send(c *upConn, o *op) {
	r := &o.req
	if r.Expires != 0 && serverClock() >= r.Expires {
		u.finish(o, nil, errExpired)
		return
	}
	cl := &o.call
	*cl = nbdclient.Call{Offset: r.Offset, Length: r.Length, Done: upstreamDone, Owner: o}
	fua := r.Flags&wire.FlagFUA != 0
	switch {
	case o.flushStep:
		cl.Cmd, cl.Offset, cl.Length = nbdwire.CmdFlush, 0, 0
	case r.Cmd == wire.CmdRead:
		cl.Cmd = nbdwire.CmdRead
		o.buf = bufs.Get(wire.ReplySize + int(r.Length))
		cl.Data = (*o.buf)[wire.ReplySize:]
	case r.Cmd == wire.CmdWrite:
		cl.Cmd, cl.Data = nbdwire.CmdWrite, *o.buf
	case r.Cmd == wire.CmdFlush:
		if !u.has(nbdwire.TransSendFlush) {
			// An upstream that offers no FLUSH has nothing to flush: its
			// writes are durable when answered.
			u.finish(o, nil, nil)
			return
		}
		cl.Cmd = nbdwire.CmdFlush
		cl.Offset, cl.Length = 0, 0
	case r.Cmd == wire.CmdTrim:
		cl.Cmd = nbdwire.CmdTrim
	case r.Cmd == wire.CmdWriteZeroes:
		cl.Cmd = nbdwire.CmdWriteZeroes
		if r.Flags&wire.FlagNoHole != 0 {
			cl.Flags |= nbdwire.FlagNoHole
		}
	default:
		u.finish(o, nil, fmt.Errorf("server: %v cannot go upstream", r.Cmd))
		return
	}
	if fua && !o.flushStep && r.Cmd != wire.CmdRead && r.Cmd != wire.CmdFlush {
		if u.has(nbdwire.TransSendFUA) {
			cl.Flags |= nbdwire.FlagFUA
		} else {
			o.needFlush = u.has(nbdwire.TransSendFlush)
		}
	}
	o.upConn = c
	var err error
	switch {
	case o.flushStep:
		err = c.Go(cl)
	case o.wait:
		err = c.GoWait(cl)
	case o.batch:
		// Only the queue's reader sets batch, so only it is here. Once
		// queued, o may be answered (another writer on c pushes it) and
		// reused at any moment: q is taken first.
		q := o.q
		if err = c.Queue(cl); err == nil {
			q.queuedOn(c.Client)
		}
	default:
		err = c.Go(cl)
	}
	if err != nil {
		u.finish(o, c, err)
	}
}

// upstreamDone completes a call on its connection's reader goroutine.
func upstreamDone(cl *nbdclient.Call) {
	o := cl.Owner.(*op)
	u := o.q.exp.up
	switch {
	case cl.Err != nil:
		// Maybe not from the reader role (the connection ended): answered
		// at once.
		u.finish(o, o.upConn, cl.Err)
	case o.needFlush:
		// FUA without FUA upstream: the write, then a FLUSH. Sent from
		// another goroutine: the reader must not block on a write.
		o.needFlush, o.flushStep = false, true
		go u.send(o.upConn, o)
	default:
		o.upConn.answer(o)
	}
}

// finish ends o: a lost connection resets the storage and ends o's
// session without a reply; anything else is answered.
func (u *Upstream) finish(o *op, c *upConn, err error) {
	r := &o.req
	var re *nbdclient.ReplyError
	switch {
	case err == nil:
	case errors.As(err, &re) && re.Errno != syscall.ESHUTDOWN:
		// The upstream answered with an error: the client's error.
	case errors.Is(err, errExpired):
	case errors.Is(err, errShutdownUp), errors.Is(err, errReplaced):
		// Answered: ESTALE, or EIO for another disk (sessions from before
		// the loss end anyway, and learn the new identity when their
		// clients reconnect).
	default:
		// The connection broke (or the upstream is shutting down): nobody
		// knows what became of the request, or of the upstream's cache.
		if c != nil {
			u.lost(c, err)
		}
		err = errStorageReset
	}
	q := o.q
	q.se.end()
	switch {
	case errors.Is(err, errStorageReset):
		q.log.Warn("ending session: the upstream was lost while it had this request; its client resends it after replaying",
			"cmd", r.Cmd, "offset", r.Offset, "length", r.Length)
		q.done(o)
		q.se.closeQueues()
		q.se.close()
		return
	case errors.Is(err, errExpired):
		o.status = wire.StatusETIMEDOUT
		q.log.Warn("request expired before it could be sent upstream; not applied", "cmd", r.Cmd,
			"offset", r.Offset, "length", r.Length)
	case err != nil:
		o.status = errStatus(err)
		if errors.Is(err, errShutdownUp) {
			o.status = wire.StatusESTALE // not applied: the client resends
		}
		q.log.Warn("request failed upstream", "cmd", r.Cmd, "offset", r.Offset, "length", r.Length,
			"status", o.status, "err", err)
	default:
		o.encodeRead()
	}
	q.w.Send(o, qconn.NoBlock)
}

// lost handles a broken connection c: once per loss, it resets the
// storage, closes the other connections and starts reconnecting.
func (u *Upstream) lost(c *upConn, err error) {
	u.mu.Lock()
	found := false
	for _, x := range u.conns {
		found = found || x == c
	}
	if !found || u.closed {
		u.mu.Unlock()
		return
	}
	conns := u.conns
	u.conns = nil
	if u.onReset != nil {
		u.onReset(err)
	}
	u.gen++
	u.loopWG.Add(1)
	u.mu.Unlock()
	u.log.Warn("upstream connection lost: sessions end and reconnect, and their clients replay what the upstream acknowledged but may not have flushed",
		"err", err)
	// Not on this goroutine: it may be c's reader, which Close waits for.
	go func() {
		for _, x := range conns {
			x.Close()
		}
	}()
	go u.reconnect()
}

// reconnect dials the upstream with backoff until it answers, failing
// waiting requests that expire or whose session ends meanwhile.
func (u *Upstream) reconnect() {
	defer u.loopWG.Done()
	tick := time.NewTicker(upstreamTick)
	defer tick.Stop()
	backoff := upstreamTick
	next := time.Now()
	for attempt := 1; ; {
		select {
		case <-u.stop:
			return
		case <-tick.C:
		}
		u.expireWaiting()
		if time.Now().Before(next) {
			continue
		}
		conns, info, err := u.dial()
		if err == nil {
			err = u.sameExport(info)
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
			}
		}
		if err != nil {
			if attempt == 1 || attempt%20 == 0 {
				u.log.Warn("upstream still unreachable", "attempt", attempt, "err", err)
			}
			attempt++
			backoff = min(2*backoff, upstreamBackoffMax)
			next = time.Now().Add(backoff)
			continue
		}
		u.mu.Lock()
		if u.closed {
			u.mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
			return
		}
		u.conns = conns
		waiting := u.waiting
		u.waiting = nil
		u.mu.Unlock()
		u.log.Info("upstream reconnected", "attempts", attempt, "waiting", len(waiting), "connections", len(conns))
		for _, o := range waiting {
			o.wait, o.batch = false, false // not the queue's reader
			u.start(o)
		}
		return
	}
}

// sameExport checks that a reconnect found the export it lost, as far as
// dst can see: not smaller, same block sizes and description. Another one
// is refused and logged, and the export fails its requests until dst serve
// is restarted (which gives it its new identity).
func (u *Upstream) sameExport(info nbdclient.Export) error {
	was := u.info
	switch {
	case info.Size < was.Size, info.Description != was.Description,
		info.MinBlock != was.MinBlock, info.MaxBlock != was.MaxBlock:
		if !u.replaced.Swap(true) {
			// Another disk gets another identity: clients that reconnect
			// see it and stop, as for a replaced file.
			h := sha256.New()
			old := u.Identity()
			h.Write(old[:])
			fmt.Fprintf(h, "\x00replaced\x00%d\x00%d\x00%d\x00%s", info.Size, info.MinBlock, info.MaxBlock, info.Description)
			var id wire.Identity
			copy(id[:], h.Sum(nil))
			u.identity.Store(&id)
			u.log.Error("the upstream export was replaced by another (smaller, or other block sizes or description): "+
				"it gets a new identity, so clients stop using it; its requests fail until dst serve is restarted",
				"size_was", was.Size, "size", info.Size, "description_was", was.Description, "description", info.Description,
				"identity", id)
		}
		return errReplaced
	}
	return nil
}

// expireWaiting fails waiting requests that expired, or whose session is
// ending (it waits for them).
func (u *Upstream) expireWaiting() {
	now := serverClock()
	var gone []*op
	var reasons []error
	u.mu.Lock()
	kept := u.waiting[:0]
	for _, o := range u.waiting {
		switch {
		case o.req.Expires != 0 && now >= o.req.Expires:
			gone, reasons = append(gone, o), append(reasons, errExpired)
		case o.q.se.closing.Load():
			gone, reasons = append(gone, o), append(reasons, errShutdownUp)
		default:
			kept = append(kept, o)
		}
	}
	clear(u.waiting[len(kept):])
	u.waiting = kept
	u.mu.Unlock()
	for i, o := range gone {
		u.finish(o, nil, reasons[i])
	}
}

// Close fails waiting requests and closes the connections.
func (u *Upstream) Close() error {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil
	}
	u.closed = true
	conns, waiting := u.conns, u.waiting
	u.conns, u.waiting = nil, nil
	close(u.stop)
	u.mu.Unlock()
	u.loopWG.Wait()
	for _, o := range waiting {
		u.finish(o, nil, errShutdownUp)
	}
	for _, c := range conns {
		c.Close()
	}
	return nil
}

// conn returns a live connection, waiting up to a few seconds for a lost
// upstream to come back, for the blocking Backend methods.
func (u *Upstream) conn() (*upConn, error) {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(upstreamTick) {
		u.mu.Lock()
		conns, closed := u.conns, u.closed
		u.mu.Unlock()
		switch {
		case closed:
			return nil, errShutdownUp
		case conns != nil:
			return conns[int(u.next.Add(1))%len(conns)], nil
		case time.Now().After(deadline):
			return nil, errors.New("server: the upstream is unreachable")
		}
	}
}

// The blocking Backend methods. Queue connections do not use them (see
// start); they serve callers that need a plain Backend.

func (u *Upstream) ReadAt(p []byte, off int64) (int, error) {
	c, err := u.conn()
	if err != nil {
		return 0, err
	}
	if err := c.ReadAt(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (u *Upstream) WriteAt(p []byte, off int64) (int, error) {
	c, err := u.conn()
	if err != nil {
		return 0, err
	}
	if err := c.WriteAt(p, off, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (u *Upstream) WriteAtFUA(p []byte, off int64) error {
	c, err := u.conn()
	if err != nil {
		return err
	}
	if !u.has(nbdwire.TransSendFUA) {
		if err := c.WriteAt(p, off, false); err != nil {
			return err
		}
		return u.Sync()
	}
	return c.WriteAt(p, off, true)
}

func (u *Upstream) Sync() error {
	if !u.has(nbdwire.TransSendFlush) {
		return nil
	}
	c, err := u.conn()
	if err != nil {
		return err
	}
	return c.Flush()
}

func (u *Upstream) Trim(off, n int64) error {
	c, err := u.conn()
	if err != nil {
		return err
	}
	return c.Trim(off, n)
}

func (u *Upstream) WriteZeroes(off, n int64, noHole bool) error {
	c, err := u.conn()
	if err != nil {
		return err
	}
	var f nbdwire.CmdFlags
	if noHole {
		f = nbdwire.FlagNoHole
	}
	return c.WriteZeroes(off, n, f)
}

// Size returns the size the upstream announced, rounded down to the
// logical block.
func (u *Upstream) Size() (int64, error) {
	var e wire.ExportInfo
	u.exportInfo(&e)
	return int64(u.info.Size / uint64(e.LogicalBlock) * uint64(e.LogicalBlock)), nil
}

func (u *Upstream) Info() (logical, physical uint32, rotational, canTrim bool) {
	var e wire.ExportInfo
	u.exportInfo(&e)
	return e.LogicalBlock, e.PhysicalBlock, u.has(nbdwire.TransRotational), u.has(nbdwire.TransSendTrim)
}
