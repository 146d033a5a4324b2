package client

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/wire"
)

// AttachConfig says what to attach and how wide to make the path.
type AttachConfig struct {
	Config
	// Export is the export's name; empty picks a server's only export.
	Export string
	// Connections is the number of TCP sessions; each has its own channel,
	// so crypto spreads over cores. Zero means 1.
	Connections int
	// Queues is the number of data streams per connection. Zero means 2.
	Queues int
	// IOTimeout is every transaction's deadline, counted from its
	// submission: a transaction without a reply by then completes with
	// EIO and is never sent again. Zero waits forever.
	IOTimeout time.Duration
	// KeepaliveInterval is how often each session is probed; zero means
	// 1s. KeepaliveTimeout is how long a session may go without answering
	// before it is declared dead and redialed; zero means 5s.
	KeepaliveInterval time.Duration
	KeepaliveTimeout  time.Duration
	// ReplayBuffer bounds the bytes of acknowledged, unflushed writes kept
	// to replay to a restarted server. Zero means 256 MiB; negative turns
	// replay off.
	ReplayBuffer int64
}

// Defaults for AttachConfig's zero values.
const (
	DefaultKeepaliveInterval = time.Second
	DefaultKeepaliveTimeout  = 5 * time.Second
	DefaultReplayBuffer      = 256 << 20
)

// maxTries bounds how often one transaction is sent when its payload keeps
// failing its checksum.
const maxTries = 3

// Attachment carries block requests to one export, across reconnects. It
// implements nbd.Device.
//
// Every request becomes a transaction with an id and a deadline. The table
// maps ids to pending transactions; a transaction leaves it exactly once:
// when its reply arrives, when its deadline passes, or when the attachment
// closes, and whoever takes it out completes it. That is the only rule
// that keeps a request from completing twice. A lost connection does not
// take transactions out: they wait in the table and are sent again on the
// next generation of sessions (gen.go).
type Attachment struct {
	cfg    AttachConfig
	log    *slog.Logger
	id     wire.Identity // names the attachment to servers, for fencing
	export wire.ExportInfo
	replay *replayLog // nil when replay is off

	nextID atomic.Uint64
	epoch  atomic.Uint64 // the latest session epoch dialed

	mu       sync.Mutex
	pending  map[uint64]*tx
	gen      *generation // carries new transactions; nil while reconnecting
	instance wire.Identity
	closed   bool
	failed   error // set once the attachment can never carry requests again

	stats    counters
	ctx      context.Context // cancelled by Close
	cancel   context.CancelFunc
	lost     chan struct{} // closed when the attachment fails for good
	lostOnce sync.Once
	wg       sync.WaitGroup
}

// tx is one transaction: a request and its wire header.
type tx struct {
	hdr      wire.Request
	req      *nbd.Request
	q        *queue // where it was last sent; nil while waiting for a session
	deadline time.Time
	tries    int    // sends after a checksum failure count here
	mark     uint64 // FLUSH: the replay log sequence it covers
	replay   bool   // a replayed write, owned by the reconnect
}

// Attach dials the server, autoconfigures and opens the queues. The first
// connection is not retried: an error here is reported at once.
func Attach(ctx context.Context, cfg *AttachConfig) (*Attachment, error) {
	a := &Attachment{
		cfg:     *cfg,
		log:     cfg.logger(),
		pending: make(map[uint64]*tx),
		lost:    make(chan struct{}),
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	c := &a.cfg
	c.Connections = max(c.Connections, 1)
	if c.Queues <= 0 {
		c.Queues = 2
	}
	if c.KeepaliveInterval <= 0 {
		c.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if c.KeepaliveTimeout <= 0 {
		c.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	if c.ReplayBuffer == 0 {
		c.ReplayBuffer = DefaultReplayBuffer
	}
	if c.ReplayBuffer > 0 {
		a.replay = newReplayLog(c.ReplayBuffer)
	}
	if _, err := rand.Read(a.id[:]); err != nil {
		a.cancel()
		return nil, fmt.Errorf("client: choosing attachment id: %w", err)
	}
	g, err := a.connect(ctx, a.epoch.Add(1), true)
	if err != nil {
		a.cancel()
		return nil, err
	}
	a.gen, a.instance = g, g.info.Instance
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.supervise(g) }()
	if c.IOTimeout > 0 {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.reap() }()
	}
	return a, nil
}

// Lost is closed when the attachment has failed for good (the export's
// identity changed): every request since fails with EIO.
func (a *Attachment) Lost() <-chan struct{} { return a.lost }

// Err says why the attachment failed for good, or is nil.
func (a *Attachment) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.failed
}

// Export is what autoconfiguration learned about the attached export.
func (a *Attachment) Export() wire.ExportInfo { return a.export }

// Cipher is the channel cipher of the current sessions.
func (a *Attachment) Cipher() crypto.Cipher {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gen == nil {
		return crypto.CipherAuto
	}
	return a.gen.sessions[0].Cipher()
}

// NBDExport describes the attachment to an NBD front end.
func (a *Attachment) NBDExport() *nbd.Export {
	e := a.export
	maxBlock := min(e.MaxTransfer, wire.MaxPayload)
	return &nbd.Export{
		Name:               e.Name,
		Description:        fmt.Sprintf("dst export %s on %s", e.Name, a.cfg.Server),
		Size:               e.Size,
		MinBlockSize:       e.LogicalBlock,
		PreferredBlockSize: e.PhysicalBlock,
		MaxBlockSize:       maxBlock,
		ReadOnly:           e.Flags&wire.ExportReadOnly != 0,
		Flush:              e.Flags&wire.ExportFlush != 0,
		FUA:                e.Flags&wire.ExportFUA != 0,
		Trim:               e.Flags&wire.ExportTrim != 0,
		WriteZeroes:        e.Flags&wire.ExportWriteZeroes != 0,
		Rotational:         e.Flags&wire.ExportRotational != 0,
		MultiConn:          e.Flags&wire.ExportMultiConn != 0,
		Device:             a,
	}
}

var cmdToWire = [...]wire.Cmd{
	nbd.CmdRead:        wire.CmdRead,
	nbd.CmdWrite:       wire.CmdWrite,
	nbd.CmdFlush:       wire.CmdFlush,
	nbd.CmdTrim:        wire.CmdTrim,
	nbd.CmdWriteZeroes: wire.CmdWriteZeroes,
}

// Submit starts a transaction for r. It implements nbd.Device.
func (a *Attachment) Submit(r *nbd.Request) {
	if t := a.newTx(r); t != nil {
		a.start(t, false)
	}
}

// SubmitBatch starts transactions for requests a client sent together and
// writes them with as few stream writes as the queues allow. It implements
// nbd.BatchDevice.
func (a *Attachment) SubmitBatch(rs []*nbd.Request) {
	var g *generation
	for _, r := range rs {
		if t := a.newTx(r); t != nil {
			g = a.start(t, true)
		}
	}
	if g != nil {
		g.kick()
	}
}

// newTx makes the transaction for r, or completes r with an error.
func (a *Attachment) newTx(r *nbd.Request) *tx {
	if int(r.Cmd) >= len(cmdToWire) || cmdToWire[r.Cmd] == 0 {
		r.Complete(syscall.EINVAL)
		return nil
	}
	t := &tx{req: r, tries: 1}
	t.hdr = wire.Request{
		Cmd:    cmdToWire[r.Cmd],
		Length: r.Length,
		ID:     a.nextID.Add(1),
		Offset: r.Offset,
	}
	if a.cfg.IOTimeout > 0 {
		t.deadline = time.Now().Add(a.cfg.IOTimeout)
	}
	if r.Flags&nbd.FlagFUA != 0 && t.hdr.Cmd != wire.CmdRead && t.hdr.Cmd != wire.CmdFlush {
		t.hdr.Flags |= wire.FlagFUA
	}
	if r.Flags&nbd.FlagNoHole != 0 && t.hdr.Cmd == wire.CmdWriteZeroes {
		t.hdr.Flags |= wire.FlagNoHole
	}
	switch t.hdr.Cmd {
	case wire.CmdWrite:
		t.hdr.Checksum = wire.Checksum(r.Data)
		if a.replay != nil && a.replay.full() {
			// No room to keep it for replay: make it durable instead.
			t.hdr.Flags |= wire.FlagFUA
		}
	case wire.CmdFlush:
		if a.replay != nil {
			t.mark = a.replay.mark()
		}
	}
	return t
}

// start enters t in the table and sends it on the current generation, or
// leaves it to wait for the next one. With hold the queue only queues it;
// the caller kicks the returned generation after the rest of its batch.
func (a *Attachment) start(t *tx, hold bool) *generation {
	a.mu.Lock()
	if err := a.refusal(); err != nil {
		a.mu.Unlock()
		t.req.Complete(err)
		return nil
	}
	a.pending[t.hdr.ID] = t
	g := a.gen
	var q *queue
	if g != nil {
		q = g.pick()
	}
	t.q = q
	a.mu.Unlock()
	if q != nil {
		q.push(t, hold)
	}
	return g
}

// take removes a transaction from the table. It returns nil if the
// transaction already left it.
func (a *Attachment) take(id uint64) *tx {
	a.mu.Lock()
	t := a.pending[id]
	delete(a.pending, id)
	a.mu.Unlock()
	return t
}

// complete finishes t, which its reply took out of the table, with the
// server's status.
func (a *Attachment) complete(t *tx, st wire.Status) {
	switch st {
	case wire.StatusOK:
		if a.replay != nil && !t.replay {
			a.remember(t)
		}
		t.req.Complete(nil)
	case wire.StatusBadChecksum:
		a.retry(t, "server saw a bad payload checksum")
	case wire.StatusESTALE:
		// The server fenced the session before starting t: a newer
		// session has taken over, and t goes out again on it.
		a.requeue(t)
	case wire.StatusETIMEDOUT:
		a.stats.timeouts.Add(1)
		a.log.Error("transaction expired before the server could start it; not applied",
			"id", t.hdr.ID, "cmd", t.hdr.Cmd, "offset", t.hdr.Offset, "length", t.hdr.Length)
		t.req.Complete(syscall.EIO)
	default:
		t.req.Complete(statusError(st))
	}
}

// remember records a successful transaction in the replay log: a write
// not yet durable is kept, a FLUSH drops what it covered.
func (a *Attachment) remember(t *tx) {
	switch t.hdr.Cmd {
	case wire.CmdWrite, wire.CmdTrim, wire.CmdWriteZeroes:
		if t.hdr.Flags&wire.FlagFUA != 0 {
			a.replay.durable(t.hdr.Offset, t.hdr.Length)
		} else if a.replay.add(&t.hdr, t.req.Data, t.req.TakeBuffer()) {
			a.autoFlush()
		}
	case wire.CmdFlush:
		a.replay.flushed(t.mark)
	}
}

// autoFlush sends a FLUSH of the attachment's own to trim the replay log.
func (a *Attachment) autoFlush() {
	r := nbd.NewRequest(nbd.CmdFlush, 0, 0, 0, nil, func(_ *nbd.Request, err error) {
		a.replay.flushDone()
		if err != nil {
			a.log.Warn("flush to trim the replay buffer failed", "err", err)
		}
	})
	if t := a.newTx(r); t != nil {
		go a.start(t, false) // not on a queue's recvLoop, which may be the caller
	}
}

// retry sends t again, or fails it once it has used up its tries.
func (a *Attachment) retry(t *tx, why string) {
	if t.tries >= maxTries {
		a.log.Error("transaction failed", "id", t.hdr.ID, "cmd", t.hdr.Cmd, "offset", t.hdr.Offset,
			"tries", t.tries, "reason", why)
		t.req.Complete(syscall.EIO)
		return
	}
	t.tries++
	a.stats.checksumRetries.Add(1)
	a.log.Warn("resending transaction", "id", t.hdr.ID, "cmd", t.hdr.Cmd, "offset", t.hdr.Offset, "reason", why)
	// Not from the caller, a queue's recvLoop: a writer blocked on the
	// stream's window must not stop the replies that would open it.
	go a.requeue(t)
}

// requeue puts a transaction its reply took out of the table back in,
// and sends it on the generation it was on if that still lives; else it
// waits for the next.
func (a *Attachment) requeue(t *tx) {
	a.mu.Lock()
	if err := a.refusal(); err != nil {
		a.mu.Unlock()
		t.req.Complete(err)
		return
	}
	a.pending[t.hdr.ID] = t
	var q *queue
	if t.q != nil {
		if g := t.q.g; !g.isDead() && (g == a.gen || t.replay) {
			q = g.pick()
		}
	}
	t.q = q
	a.mu.Unlock()
	if q != nil {
		q.push(t, false)
	}
}

// putBack returns a transaction its reply took out of the table to wait
// for the next generation: the reply was unusable and the queue is dying.
func (a *Attachment) putBack(t *tx) {
	a.mu.Lock()
	err := a.refusal()
	if err == nil {
		t.q = nil
		a.pending[t.hdr.ID] = t
	}
	a.mu.Unlock()
	if err != nil {
		t.req.Complete(err)
	}
}

// refusal is the error a transaction entering the table gets instead:
// ESHUTDOWN once the attachment is closed, EIO once it has failed for
// good (fail emptied the table, and nothing would ever send it). Called
// with a.mu held.
func (a *Attachment) refusal() error {
	switch {
	case a.closed:
		return syscall.ESHUTDOWN
	case a.failed != nil:
		return syscall.EIO
	}
	return nil
}

// statusError maps a reply status to the errno an NBD client sees.
func statusError(st wire.Status) error {
	if st < 0x100 {
		return syscall.Errno(st)
	}
	return syscall.EIO
}

// reap completes transactions whose deadline has passed with EIO. They
// leave the table, so a reply that arrives later finds nothing, and a
// reconnect does not send them again.
func (a *Attachment) reap() {
	tick := min(max(a.cfg.IOTimeout/10, 10*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		var expired []*tx
		a.mu.Lock()
		for id, t := range a.pending {
			if !t.deadline.IsZero() && now.After(t.deadline) {
				delete(a.pending, id)
				expired = append(expired, t)
			}
		}
		a.mu.Unlock()
		a.stats.timeouts.Add(uint64(len(expired)))
		for i, t := range expired {
			if i < 8 {
				a.log.Error("transaction timed out", "id", t.hdr.ID, "cmd", t.hdr.Cmd,
					"offset", t.hdr.Offset, "length", t.hdr.Length, "io-timeout", a.cfg.IOTimeout)
			}
			t.req.Complete(syscall.EIO)
		}
		if n := len(expired); n > 8 {
			a.log.Error("transactions timed out", "count", n, "io-timeout", a.cfg.IOTimeout)
		}
	}
}

// fail ends the attachment for good: pending transactions and every later
// one complete with EIO.
func (a *Attachment) fail(err error) {
	a.mu.Lock()
	if a.failed == nil {
		a.failed = err
	}
	pending := a.pending
	a.pending = make(map[uint64]*tx)
	a.mu.Unlock()
	a.log.Error("attachment failed; every request now fails with EIO", "err", err, "pending", len(pending))
	for _, t := range pending {
		t.req.Complete(syscall.EIO)
	}
	a.lostOnce.Do(func() { close(a.lost) })
}

// Close fails pending transactions with ESHUTDOWN and ends every session.
func (a *Attachment) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	a.wg.Wait()
	a.mu.Lock()
	pending := a.pending
	a.pending = make(map[uint64]*tx)
	a.mu.Unlock()
	for _, t := range pending {
		t.req.Complete(syscall.ESHUTDOWN)
	}
	return nil
}

// Stats counts what the transaction layer did.
type Stats struct {
	Reconnects      uint64 // generations of sessions after the first
	Resent          uint64 // transactions sent again after a reconnect
	Replayed        uint64 // acknowledged writes written again to a restarted server
	Timeouts        uint64 // transactions failed at their deadline
	ChecksumRetries uint64 // transactions sent again after a checksum failure
	ReplayEntries   int    // writes held for replay now
	ReplayBytes     int64
}

type counters struct {
	reconnects, resent, replayed, timeouts, checksumRetries atomic.Uint64
}

// Stats returns the attachment's counters.
func (a *Attachment) Stats() Stats {
	s := Stats{
		Reconnects:      a.stats.reconnects.Load(),
		Resent:          a.stats.resent.Load(),
		Replayed:        a.stats.replayed.Load(),
		Timeouts:        a.stats.timeouts.Load(),
		ChecksumRetries: a.stats.checksumRetries.Load(),
	}
	if a.replay != nil {
		s.ReplayEntries, s.ReplayBytes = a.replay.stats()
	}
	return s
}
