package client

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/rawio"
	"github.com/dstproject/dst/wire"
)

// AttachConfig says what to attach and how wide to make the path.
type AttachConfig struct {
	Config
	// Export is the export's name; empty picks a server's only export.
	Export string
	// Connections is the number of queue connections, each a TCP
	// connection with its own channel, so crypto spreads over cores and
	// requests go out in parallel. Zero means DefaultConnections.
	Connections int
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
	// ReadOnly attaches for reading only: the attachment takes no writer
	// lease, so it may join an export another attachment writes, and its
	// writes fail with EPERM.
	ReadOnly bool
	// TakeOver takes the export's writer lease even if another attachment
	// holds it: the server fences that attachment first. Only the first
	// connection asks; a reconnect that finds the lease taken by another
	// fails the attachment for good.
	TakeOver bool
	// Resume continues an attachment a process that ended had made (its
	// id, kept by the caller): the server takes the new sessions for newer
	// ones of it, fences the old, and keeps its writer lease. Zero: a new
	// attachment.
	Resume wire.Identity
	// BusyPoll, when positive, has the attachment's goroutines poll its
	// sockets (the queue connections and the NBD front end's) for up to
	// this long before they sleep, while requests come one at a time (at
	// most one in flight, and no deeper queue since the last look): each
	// request and reply then finds the process awake, and nobody pays for
	// waking it, at the price of a CPU kept busy meanwhile. Each socket's
	// reader polls only while the waits it sees fit this budget, so a link
	// slower than it, or an idle device, stops the polling
	// (internal/rawio, Poller). Zero sleeps at once.
	BusyPoll time.Duration
	// BulkLoad, when set, is called with true when the attachment starts
	// carrying bulk transfers (READs and WRITEs of 64 KiB or more, several
	// in flight) and with false once it has carried none for a quarter of
	// a second, or is closed; calls never overlap. dst attach gives the Go
	// runtime a second P meanwhile (bulk.go).
	BulkLoad func(on bool)
}

// DefaultConnections is the number of queue connections when
// AttachConfig.Connections is zero: two per CPU, up to 4, so that sealing
// and opening records spread over the cores, and the server's readers and
// flushers overlap. Requests that come one at a time all take the first
// (generation.pick), so the others cost them nothing. On 2 vCPUs, fresh
// serve and attach per round, nbdcopy 1 GiB, 8 rounds alternating
// (scripts/PERFORMANCE.md, "Where a request's time goes"): four
// connections read 4–8% faster than two, at 7% less of attach's CPU per
// GiB, wrote within ±3%, and fio's QD1 and QD32 random 4 KiB I/O moved
// within noise.
func DefaultConnections() int { return min(2*runtime.NumCPU(), 4) }

// Defaults for AttachConfig's zero values.
const (
	DefaultKeepaliveInterval = time.Second
	DefaultKeepaliveTimeout  = 5 * time.Second
	DefaultReplayBuffer      = 256 << 20
)

// maxTries bounds how often one transaction is sent when its payload keeps
// failing its checksum.
const maxTries = 3

// Attachment carries block requests to one export, across reconnects.
// Submit takes Requests; NBDExport puts an NBD front end in front of it.
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
	id     wire.Identity   // names the attachment to servers, for fencing
	export wire.ExportInfo // as first attached; the size is size's
	replay *replayLog      // nil when replay is off
	poller *rawio.Poller   // nil unless BusyPoll
	// replaying is the progress of a replay while one runs.
	replaying replayProgress

	size    atomic.Uint64 // the export's size now (resize.go)
	resized chan struct{}

	nextID atomic.Uint64
	epoch  atomic.Uint64 // the latest session epoch dialed
	table  table

	stats    counters
	state    stateTracker
	latency  latencies
	events   events
	ctx      context.Context // cancelled by Close
	cancel   context.CancelFunc
	lost     chan struct{} // closed when the attachment fails for good
	lostOnce sync.Once
	wg       sync.WaitGroup
}

// Attach dials the server, autoconfigures and opens the queues. The first
// connection is not retried: an error here is reported at once.
func Attach(ctx context.Context, cfg *AttachConfig) (*Attachment, error) {
	a := &Attachment{
		cfg:     *cfg,
		log:     cfg.logger(),
		table:   table{pending: make(map[uint64]*tx)},
		lost:    make(chan struct{}),
		resized: make(chan struct{}, 1),
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.table.bulk = newBulkWatch(cfg.BulkLoad)
	c := &a.cfg
	if c.BusyPoll > 0 {
		a.poller = rawio.NewPoller(c.BusyPoll)
		a.poller.Gate(a.table.quiet)
		c.Config.poller = a.poller
	}
	if c.Connections <= 0 {
		c.Connections = DefaultConnections()
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
	first := uint64(1)
	if c.Resume.IsZero() {
		if _, err := rand.Read(a.id[:]); err != nil {
			a.cancel()
			return nil, fmt.Errorf("client: choosing attachment id: %w", err)
		}
	} else {
		// Newer than any epoch the ended process used: it counted from 1,
		// one per reconnect, and earlier resumptions from their own clock.
		a.id, first = c.Resume, uint64(time.Now().UnixNano())
	}
	a.epoch.Store(first - 1)
	g, err := a.connect(ctx, a.epoch.Add(1), true)
	if err != nil {
		a.cancel()
		return nil, err
	}
	a.table.gen, a.table.instance = g, g.info.Instance
	a.state.set(StateConnected, nil)
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.supervise(g) }()
	if c.IOTimeout > 0 {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.reap() }()
	}
	return a, nil
}

// ID names the attachment to servers; a process that takes the attachment
// over after this one ends passes it as AttachConfig.Resume.
func (a *Attachment) ID() wire.Identity { return a.id }

// Lost is closed when the attachment has failed for good (the export's
// identity changed, or another attachment took its writer lease): every
// request since fails with EIO.
func (a *Attachment) Lost() <-chan struct{} { return a.lost }

// Err says why the attachment failed for good, or is nil.
func (a *Attachment) Err() error {
	a.table.mu.Lock()
	defer a.table.mu.Unlock()
	return a.table.failed
}

// Export is what autoconfiguration learned about the attached export.
func (a *Attachment) Export() wire.ExportInfo { return a.export }

// Cipher is the channel cipher of the current sessions.
func (a *Attachment) Cipher() crypto.Cipher {
	a.table.mu.Lock()
	defer a.table.mu.Unlock()
	if a.table.gen == nil {
		return crypto.CipherAuto
	}
	return a.table.gen.sess.Cipher()
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
		expired := a.table.expire(time.Now())
		a.stats.timeouts.Add(uint64(len(expired)))
		if len(expired) > 0 {
			a.events.emit(Event{Type: EventTimeout, Count: len(expired), Detail: "no reply within io-timeout " + a.cfg.IOTimeout.String()})
		}
		for i, t := range expired {
			if i < 8 {
				a.log.Error("transaction timed out", "id", t.hdr.ID, "cmd", t.hdr.Cmd,
					"offset", t.hdr.Offset, "length", t.hdr.Length, "io-timeout", a.cfg.IOTimeout)
			}
			t.finish(syscall.EIO)
		}
		if n := len(expired); n > 8 {
			a.log.Error("transactions timed out", "count", n, "io-timeout", a.cfg.IOTimeout)
		}
	}
}

// fail ends the attachment for good: pending transactions and every later
// one complete with EIO.
func (a *Attachment) fail(err error) {
	a.table.mu.Lock()
	if a.table.failed == nil {
		a.table.failed = err
	}
	a.table.mu.Unlock()
	pending := a.table.drain()
	a.state.set(StateFailed, err)
	a.events.emit(Event{Type: EventFailed, Detail: err.Error()})
	a.log.Error("attachment failed; every request now fails with EIO", "err", err, "pending", len(pending))
	for _, t := range pending {
		t.finish(syscall.EIO)
	}
	a.lostOnce.Do(func() { close(a.lost) })
}

// Close fails pending transactions with ESHUTDOWN and ends every session.
func (a *Attachment) Close() error {
	a.table.mu.Lock()
	if a.table.closed {
		a.table.mu.Unlock()
		return nil
	}
	a.table.closed = true
	a.table.mu.Unlock()
	a.state.set(StateClosed, nil)
	a.events.emit(Event{Type: EventClosed})
	a.cancel()
	a.wg.Wait()
	for _, t := range a.table.drain() {
		t.finish(syscall.ESHUTDOWN)
	}
	a.table.bulk.stop()
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
