package client

import (
	"bytes"
	"context"
	"github.com/dstproject/dst/wire"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/testsupport"
)

// Tests of the client's timing. Those that wait run on testing/synctest's
// clock, over net.Pipe: time passes only when every goroutine waits, so
// deadlines, keepalives and backoff delays are exact, and a test that
// waits minutes takes none.
//
// In a bubble the server's clock (server/clock.go) does not follow the
// fake clock: it mixes fake time with readings of CLOCK_BOOTTIME and the
// process's start, which are real. No test here depends on the server
// expiring a request.

// TestBackoffSchedule checks the reconnect schedule: at once, then each
// delay within ±50% of a nominal one that doubles from backoffMin up to
// backoffMax, with the jitter really spreading.
func TestBackoffSchedule(t *testing.T) {
	for run := range 20 {
		var b backoff
		if w := b.next(); w != 0 {
			t.Fatalf("first retry after %v, want at once", w)
		}
		nominal := backoffMin
		for i := 1; i < 20; i++ {
			if w := b.next(); w < nominal/2 || w >= nominal*3/2 {
				t.Fatalf("run %d, retry %d: waited %v, want [%v, %v)", run, i, w, nominal/2, nominal*3/2)
			}
			nominal = min(2*nominal, backoffMax)
		}
	}
	b := backoff{delay: backoffMax}
	lo, hi := backoffMax, time.Duration(0)
	for range 200 {
		w := b.next()
		lo, hi = min(lo, w), max(hi, w)
	}
	if lo > backoffMax*3/4 || hi < backoffMax*5/4 {
		t.Errorf("200 delays at the cap all within [%v, %v]: the jitter does not spread clients", lo, hi)
	}
}

// TestClockMapExpires maps deadlines with local times that are exact, so
// each expiry is too: the server's reading in the sample, plus the time
// from the sample to the deadline less 1000 ppm of it if it is ahead, less
// the slack.
func TestClockMapExpires(t *testing.T) {
	testsupport.Synctest(t, func(t *testing.T) {
		var c clockMap
		if got := c.expires(time.Time{}); got != 0 {
			t.Fatalf("no deadline maps to %d, want 0 (none)", got)
		}
		if got := c.expires(time.Now().Add(time.Hour)); got != 1 {
			t.Fatalf("without a sample a deadline maps to %d, want 1 (passed)", got)
		}
		const server = 1e12 // the server's clock in the first sample
		c.sample(server, time.Now())
		if got, want := c.expires(time.Now().Add(10*time.Second)), uint64(server+10e9-10e6-1e6); got != want {
			t.Fatalf("deadline 10s after the sample maps to %d, want %d", got, want)
		}
		// Ten seconds on, without a new sample, the same 10s reach 20s
		// past the sample.
		time.Sleep(10 * time.Second)
		if got, want := c.expires(time.Now().Add(10*time.Second)), uint64(server+20e9-20e6-1e6); got != want {
			t.Fatalf("deadline 20s after the sample maps to %d, want %d", got, want)
		}
		// A new sample replaces the old: its server reading is 1ms less
		// than the old sample's mapping of now.
		c.sample(server+10e9-1e6, time.Now())
		if got, want := c.expires(time.Now().Add(10*time.Second)), uint64(server+20e9-1e6-10e6-1e6); got != want {
			t.Fatalf("after a new sample, 10s ahead maps to %d, want %d", got, want)
		}
		if got, want := c.expires(time.Now().Add(-time.Second)), uint64(server+9e9-1e6-1e6); got != want {
			t.Fatalf("a deadline 1s past maps to %d, want %d (no rate margin, the slack)", got, want)
		}
		c.sample(5, time.Now())
		if got := c.expires(time.Now().Add(-time.Hour)); got != 1 {
			t.Fatalf("deadline before the server clock's origin maps to %d, want 1", got)
		}
	})
}

// pathDialer dials through dial, records when, and can stall the
// connections made so far: their reads stop returning what the server
// sends, as when the server process is frozen (stopped, or stuck) while
// its kernel still takes what the client sends.
type pathDialer struct {
	dial func(ctx context.Context, addr string) (net.Conn, error)

	mu    sync.Mutex
	dials []time.Time
	gate  chan struct{} // closed by stall
}

func newPathDialer(dial func(ctx context.Context, addr string) (net.Conn, error)) *pathDialer {
	return &pathDialer{dial: dial, gate: make(chan struct{})}
}

func (p *pathDialer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	p.mu.Lock()
	p.dials = append(p.dials, time.Now())
	gate := p.gate
	p.mu.Unlock()
	c, err := p.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	return &stallConn{Conn: c, stalled: gate, closed: make(chan struct{})}, nil
}

// stall freezes the connections dialed so far; later ones work.
func (p *pathDialer) stall() {
	p.mu.Lock()
	close(p.gate)
	p.gate = make(chan struct{})
	p.mu.Unlock()
}

// times returns when each dial was made.
func (p *pathDialer) times() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.dials...)
}

type stallConn struct {
	net.Conn
	stalled <-chan struct{}
	closed  chan struct{}
	once    sync.Once
}

// Read withholds whatever arrives once the connection is stalled, until
// the client closes it.
func (c *stallConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	select {
	case <-c.stalled:
		<-c.closed
		return 0, net.ErrClosed
	default:
		return n, err
	}
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestKeepaliveKeepsAnsweredSession: a server that answers every PING
// keeps its session through minutes of idleness, however short the
// keepalive timeout.
func TestKeepaliveKeepsAnsweredSession(t *testing.T) {
	testsupport.Synctest(t, func(t *testing.T) {
		testsupport.LeakCheck(t)
		env := newEnv(t, "pipe", 1<<20)
		p := newPathDialer(env.dial)
		cfg := env.config()
		cfg.Dialer = p.Dial
		a, err := Attach(context.Background(), &AttachConfig{Config: *cfg, Export: "disk", Connections: 2,
			KeepaliveInterval: 50 * time.Millisecond, KeepaliveTimeout: 120 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		time.Sleep(5 * time.Minute)
		if err := do(a, wire.CmdRead, 0, 0, 512, make([]byte, 512)); err != nil {
			t.Fatal(err)
		}
		if s, n := a.Stats(), len(p.times()); s.Reconnects != 0 || n != 3 {
			t.Fatalf("after 5 idle minutes: stats %+v, %d dials; want no reconnect and the first 3 dials", s, n)
		}
	})
}

// TestKeepaliveDetectsFrozenServer: when the server stops answering, the
// session is declared dead at the first keepalive tick past the timeout
// since the last PONG, replaced at once, and a request that was waiting
// on the frozen one goes out on the new one.
func TestKeepaliveDetectsFrozenServer(t *testing.T) {
	testsupport.Synctest(t, func(t *testing.T) {
		testsupport.LeakCheck(t)
		const interval, timeout = 50 * time.Millisecond, 300 * time.Millisecond
		env := newEnv(t, "pipe", 1<<20)
		p := newPathDialer(env.dial)
		cfg := env.config()
		cfg.Dialer = p.Dial
		a, err := Attach(context.Background(), &AttachConfig{Config: *cfg, Export: "disk", Connections: 2,
			KeepaliveInterval: interval, KeepaliveTimeout: timeout})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		// Off the ticks, so the last PONG is the one of the tick before.
		time.Sleep(3*interval + interval/2)
		lastPong := time.Now().Add(-interval / 2)
		p.stall()
		data := bytes.Repeat([]byte{'k'}, 4096)
		ch := submit(a, wire.CmdWrite, 0, data)
		if err := wait(t, ch, "write to a frozen server"); err != nil {
			t.Fatalf("write to a frozen server: %v", err)
		}
		dials := p.times()
		if len(dials) != 6 {
			t.Fatalf("%d dials, want 3 for the first sessions and 3 for the second", len(dials))
		}
		// The ticks come every interval: the first one more than timeout
		// after the last PONG.
		want := lastPong.Add(timeout + interval)
		if dead := dials[3]; !dead.Equal(want) {
			t.Errorf("frozen session replaced %v after the last PONG, want %v",
				dead.Sub(lastPong), want.Sub(lastPong))
		}
		if s := a.Stats(); s.Reconnects != 1 || s.Resent != 1 {
			t.Errorf("stats %+v: want one reconnect and the write resent", s)
		}
		got := make([]byte, 4096)
		if err := do(a, wire.CmdRead, 0, 0, 4096, got); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read back after the reconnect: %v, same data %v", err, bytes.Equal(got, data))
		}
	})
}

// TestSilenceSparesALateTick: a keepalive tick that comes late (the
// process did not run: a starved CPU, a paused VM) does not kill a
// silent session, whose PONGs may be waiting unread; the next tick does
// if the silence goes on, and a tick on time kills as before. The
// process-level test is TestPausedAttachKeepsSession (tests/).
func TestSilenceSparesALateTick(t *testing.T) {
	const interval, timeout = time.Second, 5 * time.Second
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	for _, tc := range []struct {
		name  string
		ticks []time.Duration // when each tick came
		pong  time.Duration   // the last PONG
		want  []bool          // dead at each tick
	}{
		{"answered", []time.Duration{1, 2, 3}, 3, []bool{false, false, false}},
		{"silent, ticks on time", []time.Duration{1, 2, 3, 4, 5, 6, 7}, 0, []bool{false, false, false, false, false, true, true}},
		{"silent, a late tick spares once", []time.Duration{1, 8, 9}, 0, []bool{false, false, true}},
		{"late ticks in a row spare only the first", []time.Duration{1, 8, 11, 14}, 0, []bool{false, false, true, true}},
		{"a late tick, then the PONG it hid", []time.Duration{1, 8}, 8, []bool{false, false}},
	} {
		j := silence{interval: interval, timeout: timeout, lastTick: t0}
		for i, tick := range tc.ticks {
			if got := j.dead(at(tick*time.Second), at(tc.pong*time.Second)); got != tc.want[i] {
				t.Errorf("%s: tick %d at %ds: dead %v, want %v", tc.name, i, tick, got, tc.want[i])
			}
		}
	}
}
