package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/internal/qconn"
	"github.com/dstproject/dst/wire"
)

// A generation is one control session to the server and the queue
// connections bound to it, all of one epoch. A fault anywhere in it (a
// connection error, a keepalive without answer, an authentication failure
// on a channel) kills the whole generation; the attachment's supervisor
// then dials the next one with a higher epoch, which makes the server
// fence this one, and sends again every transaction still in the table.
type generation struct {
	a      *Attachment
	epoch  uint64
	info   wire.ServerInfo
	sess   *Session
	queues []*queue
	// controlRead is set once readControl runs on sess.
	controlRead bool

	dead     chan struct{}
	deadOnce sync.Once
	err      error
	wg       sync.WaitGroup // receive loops, keepalive
}

func (g *generation) kill(err error) {
	g.deadOnce.Do(func() {
		g.err = err
		close(g.dead)
	})
}

func (g *generation) isDead() bool {
	select {
	case <-g.dead:
		return true
	default:
		return false
	}
}

// pick returns the queue a transaction goes out on: the one with the
// fewest transactions in the table, the first of those on a tie. Called
// with the table's mu held.
//
// Why not in turn: requests that come one at a time would then alternate
// between the connections, and each would find its connection's
// goroutines, buffers and socket cold on both ends. Taking the least
// loaded keeps such requests on the first connection, and spreads a deep
// queue's over all of them as evenly as round-robin does. Measured (hand
// rig, fio random 4 KiB reads over two connections, rounds in ABBA order,
// 2026-12-05): QD1 13,380 → 14,310 reads/s (medians of 8 rounds, attach
// 32.3 → 29.9 µs and serve 15.9 → 14.7 µs of CPU per request), QD32
// 116,800 → 125,300 (4 rounds).
func (g *generation) pick() *queue {
	best := g.queues[0]
	for _, q := range g.queues[1:] {
		if q.load < best.load {
			best = q
		}
	}
	return best
}

// controlLinger bounds the wait for a control stream's last messages
// when a generation ends because the server closed a connection.
const controlLinger = 200 * time.Millisecond

// shutdown kills the generation, closes its connections (with a reset
// unless graceful) and waits for its goroutines and for any goroutine
// still writing on its queues. After it, nothing of the generation
// touches the transaction table or a transaction's request.
func (g *generation) shutdown(err error, graceful bool) {
	g.kill(err)
	if g.sess != nil && g.controlRead && !graceful && errors.Is(g.err, io.EOF) {
		// The server closed a connection in order (it is restarting or
		// stopping): its control stream may still hold an EVENT saying
		// why, ahead of its own end. Read it before the reset.
		g.sess.awaitControl(controlLinger)
	}
	if g.sess != nil {
		if err == errClosedGen {
			g.sess.bye() // the attachment closes: its writer lease may go at once
		}
		if graceful {
			g.sess.Close()
		} else {
			g.sess.abort()
		}
	}
	for _, q := range g.queues {
		q.close(graceful)
	}
	g.wg.Wait()
}

// connect dials a generation: the control session, then every queue
// connection. The first generation learns the export; later ones must
// find the same disk.
func (a *Attachment) connect(ctx context.Context, epoch uint64, first bool) (*generation, error) {
	c := &a.cfg
	g := &generation{a: a, epoch: epoch, dead: make(chan struct{})}
	fail := func(err error) (*generation, error) {
		g.shutdown(err, false)
		return nil, err
	}
	s, err := dial(ctx, &c.Config, a.id, epoch)
	if err != nil {
		return fail(err)
	}
	g.sess, g.info = s, s.Info()
	if err := a.checkExport(g.info, first); err != nil {
		return fail(err)
	}
	var flags wire.QueueFlags
	if c.ReadOnly {
		flags |= wire.QueueReadOnly
	}
	if c.TakeOver && first {
		flags |= wire.QueueTakeOver
	}
	for i := 0; i < c.Connections; i++ {
		conn, raw, err := dialQueue(ctx, &c.Config, s, a.export, flags)
		if err != nil {
			return fail(err)
		}
		g.queues = append(g.queues, newQueue(g, conn, raw, i))
	}
	for _, q := range g.queues {
		g.wg.Add(1)
		go func() { defer g.wg.Done(); q.recvLoop() }()
	}
	s.onEvent = a.serverEvent
	g.controlRead = true
	g.wg.Add(3)
	go func() { defer g.wg.Done(); s.keepalive(c.KeepaliveInterval, c.KeepaliveTimeout) }()
	go func() { defer g.wg.Done(); s.readControl() }()
	go func() {
		defer g.wg.Done()
		select {
		case <-s.dead:
			g.kill(s.deadErr)
		case <-g.dead:
			s.kill(errSessionDead)
		}
	}()
	return g, nil
}

// checkExport finds the attachment's export in a server's answer. The
// first time it learns it; after that the disk must be the same one.
func (a *Attachment) checkExport(info wire.ServerInfo, first bool) error {
	name := a.cfg.Export
	if !first {
		name = a.export.Name
	}
	e, err := FindExport(info, name)
	if err != nil {
		return err
	}
	if first {
		if a.cfg.ReadOnly {
			e.Flags |= wire.ExportReadOnly
			e.Flags &^= wire.ExportTrim | wire.ExportWriteZeroes
		}
		a.export = e
		a.size.Store(e.Size)
		return nil
	}
	if e.Identity != a.export.Identity {
		return fmt.Errorf("%w: export %q was disk %v, the server now has disk %v behind that name",
			ErrIdentityChanged, e.Name, a.export.Identity, e.Identity)
	}
	a.grow(e.Size) // it may have grown while we were away
	return nil
}

// Reconnect backoff: the first retry comes at once, later ones after
// delays doubling from backoffMin to backoffMax, each jittered by ±50%
// so clients that lost the same server do not return in step.
const (
	backoffMin = 50 * time.Millisecond
	backoffMax = 5 * time.Second
)

// backoff is one reconnect's schedule; the zero value starts it.
type backoff struct{ delay time.Duration }

// next returns how long to wait before the next attempt.
func (b *backoff) next() time.Duration {
	var wait time.Duration
	if b.delay > 0 {
		wait = b.delay/2 + rand.N(b.delay)
	}
	b.delay = min(max(2*b.delay, backoffMin), backoffMax)
	return wait
}

// supervise watches the current generation and replaces it when it dies,
// until the attachment closes or fails.
func (a *Attachment) supervise(g *generation) {
	for {
		select {
		case <-g.dead:
		case <-a.ctx.Done():
			g.shutdown(errClosedGen, true)
			return
		}
		lostAt := time.Now()
		a.table.mu.Lock()
		if a.table.gen == g {
			a.table.gen = nil
		}
		n := len(a.table.pending)
		a.table.mu.Unlock()
		a.state.set(StateReconnecting, g.err)
		a.events.emit(Event{Type: EventLost, Epoch: g.epoch, Detail: g.err.Error()})
		a.log.Warn("connection to server lost; reconnecting", "server", a.cfg.Server, "err", g.err, "pending", n)
		g.shutdown(g.err, false)
		if g = a.reconnect(); g == nil {
			if a.ctx.Err() != nil {
				// Closed between sessions: say BYE all the same.
				a.farewell()
			}
			return
		}
		a.state.set(StateConnected, nil)
		a.log.Info("reconnected", "server", a.cfg.Server, "epoch", g.epoch,
			"after", time.Since(lostAt).Round(time.Millisecond))
	}
}

var errClosedGen = errors.New("client: attachment closed")

// reconnect dials generations until one is up and has resumed the
// attachment's work. It returns nil when the attachment closed or failed.
func (a *Attachment) reconnect() *generation {
	ctx := a.ctx
	var b backoff
	for attempt := 1; ; attempt++ {
		if wait := b.next(); wait > 0 {
			select {
			case <-time.After(wait):
			case <-a.ctx.Done():
				return nil
			}
		}
		g, err := a.connect(ctx, a.epoch.Add(1), false)
		if err == nil {
			if err = a.resume(g); err == nil {
				return g
			}
			g.shutdown(err, false)
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrIdentityChanged), errors.Is(err, ErrLeaseHeld):
			// Another disk, or another writer took over: this attachment
			// must never write again.
			a.fail(err)
			return nil
		}
		a.log.Warn("reconnect failed", "server", a.cfg.Server, "attempt", attempt, "err", err)
		a.events.emit(Event{Type: EventReconnectFailed, Count: attempt, Detail: err.Error()})
	}
}

// farewellTimeout bounds the one dial of farewell.
const farewellTimeout = 2 * time.Second

// farewell says BYE for an attachment that closed between sessions, as
// shutdown does for one that closes while connected: one session of a
// new epoch, dialed once, that says only that. The server then frees the
// attachment's writer lease at once, rather than keep it for its grace
// (2 minutes by default) for a reconnect that will not come, refusing
// every other writer meanwhile. Best effort: a server it cannot reach
// keeps the lease for its grace. A read-only attachment holds no lease.
func (a *Attachment) farewell() {
	if a.cfg.ReadOnly {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(a.cfg.dialTimeout(), farewellTimeout))
	defer cancel()
	s, err := dial(ctx, &a.cfg.Config, a.id, a.epoch.Add(1))
	if err != nil {
		a.log.Warn("closing between sessions: could not tell the server; it keeps the writer lease for its grace",
			"server", a.cfg.Server, "err", err)
		return
	}
	s.bye()
	s.Close()
}

// resume puts a new generation to work: if the server restarted, it first
// replays what the old instance acknowledged but may have lost; then it
// makes the generation current and sends every transaction in the table
// on it, oldest first.
func (a *Attachment) resume(g *generation) error {
	if g.info.Instance != a.table.instance {
		a.events.emit(Event{Type: EventServerRestarted, Epoch: g.epoch, Detail: "instance " + g.info.Instance.String()})
		if a.replay == nil {
			a.log.Warn("server restarted; writes it acknowledged but had not flushed may be lost (replay is off)")
		} else if err := a.replayTo(g); err != nil {
			return err
		}
	}
	tb := &a.table
	tb.mu.Lock()
	if tb.closed {
		tb.mu.Unlock()
		return errClosedGen
	}
	tb.gen, tb.instance = g, g.info.Instance
	resend := make([]*tx, 0, len(tb.pending))
	for _, t := range tb.pending {
		if !t.replay {
			resend = append(resend, t)
		}
	}
	slices.SortFunc(resend, func(x, y *tx) int { return cmpID(x.hdr.ID, y.hdr.ID) })
	byQueue := make(map[*queue][]*tx)
	for _, t := range resend {
		tb.place(t, g.pick())
		byQueue[t.q] = append(byQueue[t.q], t)
	}
	tb.mu.Unlock()
	// Counted before they go out, so that whoever sees a resent request
	// complete also sees it counted.
	a.stats.reconnects.Add(1)
	a.events.emit(Event{Type: EventReconnected, Epoch: g.epoch, Count: len(resend)})
	if len(resend) > 0 {
		a.stats.resent.Add(uint64(len(resend)))
		a.log.Info("resending transactions", "count", len(resend), "epoch", g.epoch)
	}
	for q, ts := range byQueue {
		q.w.SendAll(ts, qconn.Defer)
	}
	return nil
}

func cmpID(x, y uint64) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// replayTo writes the replay log to a restarted server, in waves that
// keep overlapping writes in order. Only when every wave is done may new
// and resent transactions go out. A failed replayed write is logged and
// skipped: the server answered, so trying again would fail again.
func (a *Attachment) replayTo(g *generation) error {
	entries := a.replay.snapshot()
	if len(entries) == 0 {
		return nil
	}
	var bytes int64
	for _, e := range entries {
		bytes += int64(e.length)
	}
	a.log.Warn("server restarted; replaying writes it acknowledged but had not flushed",
		"writes", len(entries), "bytes", bytes, "epoch", g.epoch)
	p := &a.replaying
	p.start(len(entries), bytes)
	defer p.stop()
	a.events.emit(Event{Type: EventReplaying, Epoch: g.epoch, Count: len(entries), Size: uint64(bytes)})
	var failed int
	for _, wave := range waves(entries) {
		var wg sync.WaitGroup
		var bad atomic.Int64
		ids := make([]uint64, 0, len(wave))
		for i := range wave {
			wg.Add(1)
			n := int64(wave[i].length)
			r := wave[i].request(CompleteFunc(func(err error) {
				if err != nil {
					bad.Add(1)
				}
				if done, tenth, ok := p.advance(n); ok {
					a.events.emit(Event{Type: EventReplayProgress, Epoch: g.epoch, Count: done,
						Detail: fmt.Sprintf("%d%%", 10*tenth)})
				}
				wg.Done()
			}))
			t := a.newTx(r)
			t.deadline, t.replay = time.Time{}, true
			t.hdr.Flags &^= wire.FlagFUA
			ids = append(ids, t.hdr.ID)
			a.table.mu.Lock()
			a.table.add(t, g.pick())
			a.table.mu.Unlock()
			t.q.send(t, qconn.Defer)
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-g.dead:
			a.dropReplay(ids)
			<-done
			return fmt.Errorf("client: connection lost while replaying: %w", g.err)
		case <-a.ctx.Done():
			a.dropReplay(ids)
			<-done
			return errClosedGen
		}
		failed += int(bad.Load())
		a.stats.replayed.Add(uint64(len(wave)))
	}
	a.events.emit(Event{Type: EventReplayed, Epoch: g.epoch, Count: len(entries)})
	if failed > 0 {
		a.log.Error("replayed writes failed on the server; data acknowledged earlier may be lost", "failed", failed)
	}
	return nil
}

// dropReplay takes the given replay transactions out of the table and
// completes them, so the replay that sent them can give up.
func (a *Attachment) dropReplay(ids []uint64) {
	for _, id := range ids {
		if t := a.table.take(id); t != nil {
			t.finish(errSessionDead)
		}
	}
}
