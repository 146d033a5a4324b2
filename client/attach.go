package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dstproject/dst/client/nbd"
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

// maxTries bounds how often one transaction is sent when its payload keeps
// failing its checksum.
const maxTries = 3

// Attachment carries block requests to one export. It implements
// nbd.Device.
//
// Every request becomes a transaction with an id. The table maps ids to
// pending transactions; a transaction leaves it exactly once, when its
// reply arrives, when its queue dies, or when the attachment closes, and
// whoever takes it out completes it. That is the only rule that keeps a
// request from completing twice.
type Attachment struct {
	cfg      AttachConfig
	log      *slog.Logger
	export   wire.ExportInfo
	info     wire.ServerInfo
	sessions []*Session
	queues   []*queue

	nextID    atomic.Uint64
	nextQueue atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]*tx
	closed  bool

	stop     chan struct{} // closed by Close
	lost     chan struct{} // closed when every queue has died
	lostOnce sync.Once
	wg       sync.WaitGroup
}

// tx is one transaction: a request and its wire header.
type tx struct {
	hdr   wire.Request
	req   *nbd.Request
	q     *queue
	tries int
}

// Attach dials the server, autoconfigures and opens the queues.
func Attach(ctx context.Context, cfg *AttachConfig) (*Attachment, error) {
	conns := max(cfg.Connections, 1)
	queues := cfg.Queues
	if queues <= 0 {
		queues = 2
	}
	a := &Attachment{
		cfg:     *cfg,
		log:     cfg.logger(),
		pending: make(map[uint64]*tx),
		stop:    make(chan struct{}),
		lost:    make(chan struct{}),
	}
	for i := 0; i < conns; i++ {
		s, err := Dial(ctx, &cfg.Config)
		if err != nil {
			a.Close()
			return nil, err
		}
		a.sessions = append(a.sessions, s)
		if i == 0 {
			a.info = s.Info()
			a.export, err = FindExport(a.info, cfg.Export)
			if err != nil {
				a.Close()
				return nil, err
			}
		} else if s.Info().Instance != a.info.Instance {
			a.Close()
			return nil, fmt.Errorf("client: connection %d reached a different server instance", i)
		}
		for j := 0; j < queues; j++ {
			st, err := s.openQueue(ctx, a.export)
			if err != nil {
				a.Close()
				return nil, fmt.Errorf("client: opening queue on %s: %w", cfg.Server, err)
			}
			q := newQueue(a, st, len(a.queues))
			a.queues = append(a.queues, q)
			a.wg.Add(2)
			go func() { defer a.wg.Done(); q.sendLoop() }()
			go func() { defer a.wg.Done(); q.recvLoop() }()
		}
	}
	return a, nil
}

// Lost is closed when every queue has died: the attachment can carry no
// more requests, and fails them all with EIO. (Reconnecting is the work of
// the transaction layer that builds on this one.)
func (a *Attachment) Lost() <-chan struct{} { return a.lost }

// queueDied closes lost once no queue is left alive.
func (a *Attachment) queueDied() {
	for _, q := range a.queues {
		if !q.dead.Load() {
			return
		}
	}
	a.lostOnce.Do(func() { close(a.lost) })
}

// Export is what autoconfiguration learned about the attached export.
func (a *Attachment) Export() wire.ExportInfo { return a.export }

// Sessions returns the attachment's sessions.
func (a *Attachment) Sessions() []*Session { return a.sessions }

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
		a.send(t, a.pickQueue(), false)
	}
}

// SubmitBatch starts transactions for requests a client sent together and
// writes them with as few stream writes as the queues allow. It implements
// nbd.BatchDevice.
func (a *Attachment) SubmitBatch(rs []*nbd.Request) {
	for _, r := range rs {
		if t := a.newTx(r); t != nil {
			a.send(t, a.pickQueue(), true)
		}
	}
	for _, q := range a.queues {
		q.kick()
	}
}

// newTx makes the transaction for r, or completes r with an error.
func (a *Attachment) newTx(r *nbd.Request) *tx {
	if int(r.Cmd) >= len(cmdToWire) || cmdToWire[r.Cmd] == 0 {
		r.Complete(syscall.EINVAL)
		return nil
	}
	t := &tx{req: r}
	t.hdr = wire.Request{
		Cmd:    cmdToWire[r.Cmd],
		Length: r.Length,
		ID:     a.nextID.Add(1),
		Offset: r.Offset,
	}
	if r.Flags&nbd.FlagFUA != 0 && t.hdr.Cmd != wire.CmdRead && t.hdr.Cmd != wire.CmdFlush {
		t.hdr.Flags |= wire.FlagFUA
	}
	if r.Flags&nbd.FlagNoHole != 0 && t.hdr.Cmd == wire.CmdWriteZeroes {
		t.hdr.Flags |= wire.FlagNoHole
	}
	if t.hdr.Cmd == wire.CmdWrite {
		t.hdr.Checksum = wire.Checksum(r.Data)
	}
	return t
}

// pickQueue spreads transactions round-robin over live queues.
func (a *Attachment) pickQueue() *queue {
	n := uint64(len(a.queues))
	start := a.nextQueue.Add(1)
	for i := uint64(0); i < n; i++ {
		q := a.queues[(start+i)%n]
		if !q.dead.Load() {
			return q
		}
	}
	return a.queues[start%n]
}

// send enters t in the table and hands it to q; with hold, q only queues
// it, and the caller kicks q once it has queued the rest of its batch.
func (a *Attachment) send(t *tx, q *queue, hold bool) {
	t.q = q
	t.tries++
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		t.req.Complete(syscall.ESHUTDOWN)
		return
	}
	a.pending[t.hdr.ID] = t
	a.mu.Unlock()
	q.push(t, hold)
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

// failQueue completes every transaction pending on q with err.
func (a *Attachment) failQueue(q *queue, err error) {
	a.mu.Lock()
	var failed []*tx
	for id, t := range a.pending {
		if t.q == q {
			delete(a.pending, id)
			failed = append(failed, t)
		}
	}
	a.mu.Unlock()
	for _, t := range failed {
		t.req.Complete(err)
	}
}

// complete finishes t with the server's status.
func (a *Attachment) complete(t *tx, st wire.Status) {
	switch st {
	case wire.StatusOK:
		t.req.Complete(nil)
	case wire.StatusBadChecksum:
		a.retry(t, "server saw a bad payload checksum")
	default:
		t.req.Complete(statusError(st))
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
	a.log.Warn("resending transaction", "id", t.hdr.ID, "cmd", t.hdr.Cmd, "offset", t.hdr.Offset, "reason", why)
	// Not from the caller, a queue's recvLoop: a writer blocked on the
	// stream's window must not stop the replies that would open it.
	go a.send(t, a.pickQueue(), false)
}

// statusError maps a reply status to the errno an NBD client sees.
func statusError(st wire.Status) error {
	if st < 0x100 {
		return syscall.Errno(st)
	}
	return syscall.EIO
}

// Close fails pending transactions with ESHUTDOWN and ends every session.
func (a *Attachment) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	pending := a.pending
	a.pending = make(map[uint64]*tx)
	a.mu.Unlock()
	close(a.stop)
	var errs []error
	for _, s := range a.sessions {
		errs = append(errs, s.Close())
	}
	a.wg.Wait()
	for _, t := range pending {
		t.req.Complete(syscall.ESHUTDOWN)
	}
	return errors.Join(errs...)
}
