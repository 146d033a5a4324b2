package client

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/server/servertest"
	"github.com/dstproject/dst/wire"
)

// restartEnv is a server that a test can stop and start again, as a new
// instance over the same file (servertest.Restartable).
type restartEnv struct{ *servertest.Restartable }

func newRestartEnv(t *testing.T, size int64, volatile bool) *restartEnv {
	t.Helper()
	return &restartEnv{servertest.NewRestartable(t, servertest.RestartOptions{Size: size, Volatile: volatile})}
}

// config is how the tests attach: two queues, and a dead session noticed
// within half a second.
func (e *restartEnv) config(t *testing.T, replay int64) *AttachConfig {
	return &AttachConfig{
		Config: Config{Server: e.Addr, PrivateKey: e.ClientKey, ServerKey: e.ServerKey.Public(),
			Dialer: e.Dialer(), Logger: testsupport.Logger(t), DialTimeout: 2 * time.Second},
		Export:            "disk",
		Connections:       2,
		IOTimeout:         30 * time.Second,
		KeepaliveInterval: 50 * time.Millisecond,
		KeepaliveTimeout:  500 * time.Millisecond,
		ReplayBuffer:      replay,
	}
}

func (e *restartEnv) attach(t *testing.T, replay int64) *Attachment {
	t.Helper()
	return attachWith(t, e.config(t, replay))
}

func attachWith(t *testing.T, cfg *AttachConfig) *Attachment {
	t.Helper()
	a, err := Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// submit starts a request and returns the channel its result arrives on.
func submit(a *Attachment, cmd wire.Cmd, off uint64, data []byte) chan error {
	ch := make(chan error, 1)
	a.Submit(Request{Cmd: cmd, Offset: off, Length: uint32(len(data)), Data: data,
		Done: CompleteFunc(func(err error) { ch <- err })})
	return ch
}

func wait(t *testing.T, ch chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no completion in 20s", what)
	}
	return nil
}

func TestReconnectResends(t *testing.T) {
	testsupport.Synctest(t, func(t *testing.T) {
		testsupport.LeakCheck(t)
		e := &restartEnv{servertest.NewRestartable(t, servertest.RestartOptions{Size: 1 << 20, Pipe: true})}
		cfg := e.config(t, 0)
		p := newPathDialer(cfg.Dialer)
		cfg.Dialer = p.Dial
		a := attachWith(t, cfg)
		first := bytes.Repeat([]byte{'a'}, 4096)
		if err := do(a, wire.CmdWrite, 0, 0, 4096, first); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		e.Stop()
		// Submitted while the server is down: it waits, and goes out on
		// the next session.
		second := bytes.Repeat([]byte{'b'}, 4096)
		ch := submit(a, wire.CmdWrite, 4096, second)
		time.Sleep(20 * time.Second) // long enough for the redials to back off to the cap
		started := time.Now()
		e.Start()
		if err := wait(t, ch, "write across a restart"); err != nil {
			t.Fatalf("write across a restart: %v", err)
		}
		got := make([]byte, 8192)
		if err := do(a, wire.CmdRead, 0, 0, 8192, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:4096], first) || !bytes.Equal(got[4096:], second) {
			t.Fatal("data differs after the reconnect")
		}
		if s := a.Stats(); s.Reconnects != 1 || s.Resent != 1 {
			t.Errorf("stats %+v: want a reconnect and the write resent", s)
		}
		checkRedials(t, p.times()[1+cfg.Connections:], stopped, started)
	})
}

// checkRedials checks the times of the dials after a server stopped: one
// per failed attempt, then those of the attempt that reconnected. The
// first attempt comes at once, the others after the backoff schedule's
// delays, and the first one after the server started again reconnects.
func checkRedials(t *testing.T, dials []time.Time, stopped, started time.Time) {
	t.Helper()
	var attempts []time.Time
	for _, d := range dials {
		if len(attempts) == 0 || !d.Equal(attempts[len(attempts)-1]) {
			attempts = append(attempts, d)
		}
	}
	t.Logf("redials %v after the stop; server back at %v", sinceEach(attempts, stopped), started.Sub(stopped))
	if len(attempts) < 2 {
		t.Fatalf("redials at %v: want failed attempts, then one that reconnects", attempts)
	}
	if !attempts[0].Equal(stopped) {
		t.Errorf("first redial %v after the server stopped, want at once", attempts[0].Sub(stopped))
	}
	nominal := backoffMin
	for i := 1; i < len(attempts); i++ {
		if gap := attempts[i].Sub(attempts[i-1]); gap < nominal/2 || gap >= nominal*3/2 {
			t.Errorf("redial %d came %v after the one before, want [%v, %v)", i, gap, nominal/2, nominal*3/2)
		}
		nominal = min(2*nominal, backoffMax)
	}
	if last := attempts[len(attempts)-1]; last.Before(started) || !attempts[len(attempts)-2].Before(started) {
		t.Errorf("redials at %v after the stop, server back at %v: want the first one after it to reconnect",
			sinceEach(attempts, stopped), started.Sub(stopped))
	}
}

func sinceEach(ts []time.Time, t0 time.Time) []time.Duration {
	ds := make([]time.Duration, len(ts))
	for i, t := range ts {
		ds[i] = t.Sub(t0)
	}
	return ds
}

// TestReplayAfterCrash writes without flushing to a server whose export
// has a volatile cache, crashes it, and checks that every acknowledged
// write is there afterwards. With replay off the same run loses writes,
// which shows the check can fail.
func TestReplayAfterCrash(t *testing.T) {
	for _, replay := range []bool{true, false} {
		t.Run(map[bool]string{true: "replay", false: "no-replay"}[replay], func(t *testing.T) {
			e := newRestartEnv(t, 4<<20, true)
			limit := int64(0)
			if !replay {
				limit = -1
			}
			a := e.attach(t, limit)
			const blocks = 256
			want := make([]byte, blocks*4096)
			rnd := rand.New(rand.NewPCG(1, 2))
			for i := 0; i < 600; i++ {
				b := rnd.IntN(blocks)
				p := make([]byte, 4096)
				for j := range p {
					p[j] = byte(rnd.Uint32())
				}
				if err := do(a, wire.CmdWrite, 0, uint64(b)*4096, 4096, p); err != nil {
					t.Fatal(err)
				}
				copy(want[b*4096:], p)
				if i == 300 {
					if err := do(a, wire.CmdFlush, 0, 0, 0, nil); err != nil {
						t.Fatal(err)
					}
				}
			}
			e.Stop() // a crash: the volatile cache is lost
			e.Start()
			got := make([]byte, len(want))
			if err := do(a, wire.CmdRead, 0, 0, uint32(len(got)), got); err != nil {
				t.Fatal(err)
			}
			lost := 0
			for b := 0; b < blocks; b++ {
				if !bytes.Equal(got[b*4096:(b+1)*4096], want[b*4096:(b+1)*4096]) {
					lost++
				}
			}
			s := a.Stats()
			t.Logf("blocks lost %d, stats %+v", lost, s)
			switch {
			case replay && lost > 0:
				t.Fatalf("%d acknowledged blocks lost despite replay", lost)
			case replay && s.Replayed == 0:
				t.Fatal("nothing replayed")
			case !replay && lost == 0:
				t.Fatal("without replay the crash lost nothing: the test cannot tell")
			}
		})
	}
}

func TestIdentityChanged(t *testing.T) {
	e := newRestartEnv(t, 1<<20, false)
	a := e.attach(t, 0)
	if err := do(a, wire.CmdWrite, 0, 0, 512, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	e.Stop()
	// Another disk at the same path.
	if err := os.Remove(e.Path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.Path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	ch := submit(a, wire.CmdWrite, 0, bytes.Repeat([]byte{'z'}, 512))
	e.Start()
	if err := wait(t, ch, "write pending when the disk changed"); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write pending when the disk changed: %v, want EIO", err)
	}
	select {
	case <-a.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("Lost not closed")
	}
	if !errors.Is(a.Err(), ErrIdentityChanged) {
		t.Fatalf("Err() = %v, want ErrIdentityChanged", a.Err())
	}
	if err := do(a, wire.CmdRead, 0, 0, 512, make([]byte, 512)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read after the change: %v, want EIO", err)
	}
	if b, _ := os.ReadFile(e.Path); b[0] != 0 {
		t.Fatal("the pending write reached the new disk")
	}
}

func TestWaves(t *testing.T) {
	e := func(off uint64, n uint32) replayEntry { return replayEntry{cmd: wire.CmdWrite, offset: off, length: n} }
	in := []replayEntry{e(0, 4096), e(1<<20, 4096), e(2048, 512), e(2<<20, 4096), e(0, 4096), e(0, 64<<20), e(8<<20, 4096)}
	got := waves(in)
	var shape [][]uint64
	for _, w := range got {
		var offs []uint64
		for _, x := range w {
			offs = append(offs, x.offset)
		}
		shape = append(shape, offs)
	}
	want := [][]uint64{{0, 1 << 20}, {2048, 2 << 20}, {0}, {0}, {8 << 20}}
	if len(shape) != len(want) {
		t.Fatalf("waves %v, want %v", shape, want)
	}
	for i := range want {
		if !slicesEqual(shape[i], want[i]) {
			t.Fatalf("waves %v, want %v", shape, want)
		}
	}
}

func slicesEqual(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestReplayLogDurableCuts(t *testing.T) {
	l := newReplayLog(1 << 30)
	w := func(off uint64, n int, b byte) {
		h := wire.Request{Cmd: wire.CmdWrite, Offset: off, Length: uint32(n)}
		l.add(&h, bytes.Repeat([]byte{b}, n), nil)
	}
	w(0, 8192, 'a')
	w(4096, 8192, 'b')
	w(1<<20, 4096, 'c')
	l.durable(2048, 4096)  // inside a, the head of b
	l.durable(1<<20, 4096) // all of c
	type piece struct {
		off  uint64
		n    uint32
		fill byte
	}
	var got []piece
	for _, e := range l.snapshot() {
		if len(e.data) != int(e.length) || bytes.Count(e.data, e.data[:1]) != len(e.data) {
			t.Fatalf("piece at %d: %d bytes of data for length %d, or mixed", e.offset, len(e.data), e.length)
		}
		got = append(got, piece{e.offset, e.length, e.data[0]})
	}
	want := []piece{{0, 2048, 'a'}, {6144, 2048, 'a'}, {6144, 6144, 'b'}}
	if len(got) != len(want) {
		t.Fatalf("pieces %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("pieces %v, want %v", got, want)
		}
	}
	if n, b := l.stats(); n != 2 || b != 8192+8192+2*entryOverhead {
		t.Fatalf("stats %d entries, %d bytes; want 2 and the two live copies", n, b)
	}
	l.flushed(3)
	if n, b := l.stats(); n != 0 || b != 0 || len(l.index) != 0 {
		t.Fatalf("after a flush covering all: %d entries, %d bytes, %d index chunks", n, b, len(l.index))
	}
}

// TestReplayLogOwnsOrCopies checks that the log keeps a buffer handed to it
// as is, and copies a payload it was not given.
func TestReplayLogOwnsOrCopies(t *testing.T) {
	l := newReplayLog(1 << 30)
	owned := replayBufs.Get(4096)
	copy(*owned, bytes.Repeat([]byte{'o'}, 4096))
	h := wire.Request{Cmd: wire.CmdWrite, Offset: 0, Length: 4096}
	l.add(&h, *owned, owned)
	lent := bytes.Repeat([]byte{'c'}, 4096)
	h2 := wire.Request{Cmd: wire.CmdWrite, Offset: 8192, Length: 4096}
	l.add(&h2, lent, nil)
	lent[0] = 'X' // the caller reuses its buffer

	snap := l.snapshot()
	if len(snap) != 2 {
		t.Fatalf("%d entries, want 2", len(snap))
	}
	if &snap[0].data[0] != &(*owned)[0] {
		t.Error("the log copied a buffer it was given")
	}
	if snap[1].data[0] != 'c' {
		t.Error("the log kept the caller's buffer instead of a copy")
	}
	l.flushed(l.mark())
	if n, b := l.stats(); n != 0 || b != 0 {
		t.Errorf("after FLUSH: %d entries, %d bytes", n, b)
	}
}

// TestReplayLogAsksForFlush: the log asks for a FLUSH of the attachment's
// own once it holds more than half its limit or maxAutoFlush, whichever
// is less, asks once while that FLUSH is in flight, and again after it.
func TestReplayLogAsksForFlush(t *testing.T) {
	const n = 1 << 20
	for _, c := range []struct {
		limit int64
		at    int // the write, counted from 1, past which it asks
	}{
		{8 << 20, 4},              // half of 8 MiB: 4 writes fill it, the 4th's overhead tips it
		{DefaultReplayBuffer, 32}, // maxAutoFlush, not 128 MiB
	} {
		l := newReplayLog(c.limit)
		asked := 0
		for i := 1; i <= 2*c.at; i++ {
			h := wire.Request{Cmd: wire.CmdWrite, Offset: uint64(i) * n, Length: n}
			if l.add(&h, make([]byte, n), nil) {
				asked++
				if i != c.at {
					t.Errorf("limit %d: asked for a FLUSH at write %d, want %d", c.limit, i, c.at)
				}
			}
		}
		if asked != 1 {
			t.Errorf("limit %d: asked %d times while the FLUSH was in flight, want once", c.limit, asked)
		}
		l.flushed(l.mark())
		l.flushDone()
		h := wire.Request{Cmd: wire.CmdWrite, Offset: 0, Length: n}
		for i := 0; i < c.at; i++ {
			if l.add(&h, make([]byte, n), nil) {
				asked++
			}
		}
		if asked != 2 {
			t.Errorf("limit %d: %d FLUSHes asked for after refilling, want 2", c.limit, asked)
		}
		if l.full() {
			t.Errorf("limit %d: full at %d bytes", c.limit, l.bytes.Load())
		}
	}
}

// TestReplayLogRefillsItsArray: after a FLUSH empties the log, filling it
// again reuses the entries' array instead of growing a new one, whose
// fresh pages were most of attach's page faults under QD1 writes; entries
// a FLUSH does not cover move to the front and keep their order; and an
// array grown far past entriesKept is given back.
func TestReplayLogRefillsItsArray(t *testing.T) {
	l := newReplayLog(1 << 40)
	trim := func(off uint64) {
		h := wire.Request{Cmd: wire.CmdTrim, Offset: off, Length: 4096}
		l.add(&h, nil, nil)
	}
	fill := func(n int) {
		for i := range n {
			trim(uint64(i) << 12)
		}
	}
	fill(1000)
	l.flushed(l.mark())
	if allocs := testing.AllocsPerRun(10, func() { fill(1000); l.flushed(l.mark()) }); allocs != 0 {
		t.Errorf("refilling the log after a flush: %v allocations, want 0", allocs)
	}

	fill(10)
	mark := l.mark()
	trim(1 << 30)
	trim(1<<30 + 4096)
	l.flushed(mark)
	if len(l.entries) != 2 || l.entries[0].offset != 1<<30 || l.entries[1].offset != 1<<30+4096 ||
		l.entries[1].seq != l.entries[0].seq+1 {
		t.Fatalf("entries after a partial flush: %+v, want the two newest in order", l.entries)
	}

	fill(4 * entriesKept)
	l.flushed(l.mark())
	if c := cap(l.entries); c > entriesKept {
		t.Errorf("after a storm of %d entries and a flush, room for %d kept, want at most %d", 4*entriesKept, c, entriesKept)
	}
}
