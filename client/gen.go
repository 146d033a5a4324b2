package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/wire"
)

// A generation is one set of sessions to the server, all dialed with the
// same epoch, and their queues. A fault anywhere in it (a stream error, a
// keepalive without answer, an authentication failure on the channel)
// kills the whole generation; the attachment's supervisor then dials the
// next one with a higher epoch, which makes the server fence this one,
// and sends again every transaction still in the table.
type generation struct {
	a        *Attachment
	epoch    uint64
	info     wire.ServerInfo
	sessions []*Session
	queues   []*queue
	next     atomic.Uint64

	dead     chan struct{}
	deadOnce sync.Once
	err      error
	wg       sync.WaitGroup // queue loops and keepalives
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

// pick spreads transactions round-robin over the queues.
func (g *generation) pick() *queue {
	return g.queues[g.next.Add(1)%uint64(len(g.queues))]
}

// kick writes what is queued on every queue.
func (g *generation) kick() {
	for _, q := range g.queues {
		q.kick()
	}
}

// shutdown kills the generation, ends its sessions (with a reset unless
// graceful) and waits for its goroutines. After it, nothing of the
// generation touches the transaction table.
func (g *generation) shutdown(err error, graceful bool) {
	g.kill(err)
	for _, s := range g.sessions {
		if graceful {
			s.Close()
		} else {
			s.abort()
		}
	}
	g.wg.Wait()
}

// connect dials a generation: every connection, every queue. The first
// generation learns the export; later ones must find the same disk.
func (a *Attachment) connect(ctx context.Context, epoch uint64, first bool) (*generation, error) {
	c := &a.cfg
	g := &generation{a: a, epoch: epoch, dead: make(chan struct{})}
	fail := func(err error) (*generation, error) {
		g.shutdown(err, false)
		return nil, err
	}
	for i := 0; i < c.Connections; i++ {
		s, err := dial(ctx, &c.Config, a.id, epoch)
		if err != nil {
			return fail(err)
		}
		g.sessions = append(g.sessions, s)
		if i == 0 {
			g.info = s.Info()
			if err := a.checkExport(g.info, first); err != nil {
				return fail(err)
			}
		} else if s.Info().Instance != g.info.Instance {
			return fail(fmt.Errorf("client: connection %d reached a different server instance", i))
		}
		for j := 0; j < c.Queues; j++ {
			st, err := s.openQueue(ctx, a.export)
			if err != nil {
				return fail(fmt.Errorf("client: opening queue on %s: %w", c.Server, err))
			}
			g.queues = append(g.queues, newQueue(g, s, st, len(g.queues)))
		}
	}
	for _, q := range g.queues {
		g.wg.Add(2)
		go func() { defer g.wg.Done(); q.sendLoop() }()
		go func() { defer g.wg.Done(); q.recvLoop() }()
	}
	for _, s := range g.sessions {
		g.wg.Add(2)
		go func() { defer g.wg.Done(); s.keepalive(c.KeepaliveInterval, c.KeepaliveTimeout) }()
		go func() {
			defer g.wg.Done()
			select {
			case <-s.dead:
				g.kill(s.deadErr)
			case <-g.dead:
				s.kill(errSessionDead)
			}
		}()
	}
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
		a.export = e
		return nil
	}
	if e.Identity != a.export.Identity {
		return fmt.Errorf("%w: export %q was disk %v, the server now has disk %v behind that name",
			ErrIdentityChanged, e.Name, a.export.Identity, e.Identity)
	}
	return nil
}

// Reconnect backoff: the first retry comes at once, later ones after
// delays doubling from backoffMin to backoffMax, each jittered by ±50%
// so clients that lost the same server do not return in step.
const (
	backoffMin = 50 * time.Millisecond
	backoffMax = 5 * time.Second
)

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
		a.mu.Lock()
		if a.gen == g {
			a.gen = nil
		}
		n := len(a.pending)
		a.mu.Unlock()
		a.log.Warn("connection to server lost; reconnecting", "server", a.cfg.Server, "err", g.err, "pending", n)
		g.shutdown(g.err, false)
		if g = a.reconnect(); g == nil {
			return
		}
		a.log.Info("reconnected", "server", a.cfg.Server, "epoch", g.epoch,
			"after", time.Since(lostAt).Round(time.Millisecond))
	}
}

var errClosedGen = errors.New("client: attachment closed")

// reconnect dials generations until one is up and has resumed the
// attachment's work. It returns nil when the attachment closed or failed.
func (a *Attachment) reconnect() *generation {
	ctx := a.ctx
	delay := time.Duration(0)
	for attempt := 1; ; attempt++ {
		if delay > 0 {
			jittered := delay/2 + rand.N(delay)
			select {
			case <-time.After(jittered):
			case <-a.ctx.Done():
				return nil
			}
		}
		delay = min(max(2*delay, backoffMin), backoffMax)
		g, err := a.connect(ctx, a.epoch.Add(1), false)
		if err == nil {
			if err = a.resume(g); err == nil {
				a.stats.reconnects.Add(1)
				return g
			}
			g.shutdown(err, false)
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrIdentityChanged):
			a.fail(err)
			return nil
		}
		a.log.Warn("reconnect failed", "server", a.cfg.Server, "attempt", attempt, "err", err)
	}
}

// resume puts a new generation to work: if the server restarted, it first
// replays what the old instance acknowledged but may have lost; then it
// makes the generation current and sends every transaction in the table
// on it, oldest first.
func (a *Attachment) resume(g *generation) error {
	if g.info.Instance != a.instance {
		if a.replay == nil {
			a.log.Warn("server restarted; writes it acknowledged but had not flushed may be lost (replay is off)")
		} else if err := a.replayTo(g); err != nil {
			return err
		}
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return errClosedGen
	}
	a.gen, a.instance = g, g.info.Instance
	resend := make([]*tx, 0, len(a.pending))
	for _, t := range a.pending {
		if !t.replay {
			t.q = g.pick()
			resend = append(resend, t)
		}
	}
	a.mu.Unlock()
	slices.SortFunc(resend, func(x, y *tx) int { return cmpID(x.hdr.ID, y.hdr.ID) })
	for _, t := range resend {
		t.q.push(t, true)
	}
	g.kick()
	if len(resend) > 0 {
		a.stats.resent.Add(uint64(len(resend)))
		a.log.Info("resent transactions", "count", len(resend), "epoch", g.epoch)
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
	a.log.Warn("server restarted; replaying writes it acknowledged but had not flushed",
		"writes", len(entries), "epoch", g.epoch)
	var failed int
	for _, wave := range waves(entries) {
		var wg sync.WaitGroup
		var bad atomic.Int64
		ids := make([]uint64, 0, len(wave))
		for i := range wave {
			wg.Add(1)
			r := wave[i].request(func(_ *nbd.Request, err error) {
				if err != nil {
					bad.Add(1)
				}
				wg.Done()
			})
			t := a.newTx(r)
			t.deadline, t.replay = time.Time{}, true
			t.hdr.Flags &^= wire.FlagFUA
			ids = append(ids, t.hdr.ID)
			a.mu.Lock()
			a.pending[t.hdr.ID] = t
			t.q = g.pick()
			a.mu.Unlock()
			t.q.push(t, true)
		}
		g.kick()
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
	if failed > 0 {
		a.log.Error("replayed writes failed on the server; data acknowledged earlier may be lost", "failed", failed)
	}
	return nil
}

// dropReplay takes the given replay transactions out of the table and
// completes them, so the replay that sent them can give up.
func (a *Attachment) dropReplay(ids []uint64) {
	for _, id := range ids {
		if t := a.take(id); t != nil {
			t.req.Complete(errSessionDead)
		}
	}
}
