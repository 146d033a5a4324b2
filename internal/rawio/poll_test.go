package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/testsupport"
)

// socketPair returns the two ends of a unix stream socketpair as net.Conns,
// the first wrapped.
func socketPair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		cs[i] = c
	}
	w, ok := Wrap(cs[0]).(*Conn)
	if !ok {
		t.Fatalf("Wrap(%T) did not wrap", cs[0])
	}
	t.Cleanup(func() { w.Close(); cs[1].Close() })
	return w, cs[1]
}

// readAsync reads len(want) bytes from c in a goroutine and checks them.
func readAsync(t *testing.T, c net.Conn, want string) <-chan error {
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, len(want))
		_, err := io.ReadFull(c, buf)
		if err == nil && string(buf) != want {
			err = errors.New("read " + string(buf) + ", want " + want)
		}
		done <- err
	}()
	return done
}

// waitFor waits until cond holds (or fails the test after 10s).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestPollerReadsOwnData: a reader whose socket is empty polls, and data
// written meanwhile ends its round as its own, without it parking.
func TestPollerReadsOwnData(t *testing.T) {
	testsupport.LeakCheck(t)
	p := NewPoller(time.Hour)
	a, peer := socketPair(t)
	if !p.Add(a) {
		t.Fatal("Add refused a wrapped socket")
	}
	done := readAsync(t, a, "ping")
	waitFor(t, "the reader to poll", func() bool { return p.Stats().Rounds == 1 })
	if _, err := peer.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Data != 1 || st.Other != 0 || st.Expired != 0 {
		t.Fatalf("stats %+v: want the one round ended by the reader's own data", st)
	}
}

// TestPollerYieldsToParkedReader: one goroutine polls at a time; when data
// arrives for another socket of the set, whose reader parked, the poller
// stops and parks, so that the runtime hands that reader its data.
func TestPollerYieldsToParkedReader(t *testing.T) {
	testsupport.LeakCheck(t)
	// One P, as dst attach runs: with more, an idle P's thread waiting on
	// the runtime's poller could hand b's reader its data before the
	// poller sees it.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	p := NewPoller(time.Hour)
	a, peerA := socketPair(t)
	b, peerB := socketPair(t)
	p.Add(a)
	p.Add(b)
	doneA := readAsync(t, a, "a")
	waitFor(t, "a's reader to poll", func() bool { return p.Stats().Rounds == 1 })
	doneB := readAsync(t, b, "b") // finds the poller busy, and parks
	time.Sleep(20 * time.Millisecond)
	if st := p.Stats(); st.Rounds != 1 {
		t.Fatalf("stats %+v: a second goroutine polled", st)
	}
	if _, err := peerB.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	if err := <-doneB; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the poller to stop", func() bool { return p.Stats().Other == 1 })
	// a's reader parked too: its data still reaches it.
	if _, err := peerA.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := <-doneA; err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Data != 0 || st.Expired != 0 {
		t.Fatalf("stats %+v: want no round ended by own data or the budget", st)
	}
}

// TestPollerBudget: a round ends when the budget runs out, and the reader
// then sleeps until its data comes.
func TestPollerBudget(t *testing.T) {
	testsupport.LeakCheck(t)
	p := NewPoller(2 * time.Millisecond)
	a, peer := socketPair(t)
	p.Add(a)
	done := readAsync(t, a, "late")
	waitFor(t, "the round to expire", func() bool { return p.Stats().Expired == 1 })
	if _, err := peer.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Rounds != 1 || st.Data != 0 {
		t.Fatalf("stats %+v: want one round, expired", st)
	}
}

// TestPollerGate: a shut gate sends readers straight to sleep.
func TestPollerGate(t *testing.T) {
	testsupport.LeakCheck(t)
	p := NewPoller(time.Hour)
	open := make(chan bool, 1)
	open <- false
	calls := 0
	p.Gate(func() bool { calls++; return <-open })
	a, peer := socketPair(t)
	p.Add(a)
	done := readAsync(t, a, "x")
	waitFor(t, "the gate to be asked", func() bool { return len(open) == 0 })
	if _, err := peer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Rounds != 0 || calls != 1 {
		t.Fatalf("stats %+v, gate asked %d times: want no round, one question", st, calls)
	}
}

// TestPollerClose: closing a socket takes it out of the set, once, and a
// reader polling on a socket being closed gets net.ErrClosed.
func TestPollerClose(t *testing.T) {
	testsupport.LeakCheck(t)
	p := NewPoller(50 * time.Millisecond)
	a, _ := socketPair(t)
	b, _ := socketPair(t)
	p.Add(a)
	p.Add(b)
	done := make(chan error, 1)
	go func() {
		_, err := a.Read(make([]byte, 1))
		done <- err
	}()
	waitFor(t, "a's reader to poll", func() bool { return p.Stats().Rounds == 1 })
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read of a closed socket: %v, want net.ErrClosed", err)
	}
	p.mu.Lock()
	set := append([]*Conn(nil), p.set...)
	p.mu.Unlock()
	if len(set) != 1 || set[0] != b {
		t.Fatalf("set %v after closing a: want only b", set)
	}
}

// TestPollerAddRefuses: a Poller takes only sockets Wrap wrapped, and a
// nil or budgetless one takes none.
func TestPollerAddRefuses(t *testing.T) {
	a, peer := socketPair(t)
	if NewPoller(time.Millisecond).Add(peer) {
		t.Error("Add took an unwrapped connection")
	}
	var nilPoller *Poller
	if nilPoller.Add(a) {
		t.Error("a nil Poller took a connection")
	}
	if NewPoller(0).Add(a) {
		t.Error("a Poller with no budget took a connection")
	}
	if a.poller != nil {
		t.Error("a refused connection points at a Poller")
	}
}

// TestPollerScore: a reader whose rounds run out eleven times in a row
// stops beginning them, but for one in every probeEvery; a probe that finds
// data opens them again, and seven more that run out shut them. A few that
// run out among many that found data do not.
func TestPollerScore(t *testing.T) {
	p := NewPoller(time.Millisecond)
	a, _ := socketPair(t)
	p.Add(a)
	polls := func() bool { return a.score.Load() >= scorePoll }
	// shutAfter checks that n rounds in a row that run out, and not n-1,
	// shut the rounds.
	shutAfter := func(n int, since string) {
		t.Helper()
		for i := 1; i <= n; i++ {
			a.tally(false)
			if polls() != (i < n) {
				t.Fatalf("%d rounds ran out %s: polling %v (score %d)", i, since, polls(), a.score.Load())
			}
		}
	}
	shutAfter(11, "from the start")
	if st := p.Stats(); st.Polling != 0 || st.Sockets != 1 {
		t.Fatalf("stats %+v: want one socket, not polling", st)
	}
	// Shut: only every probeEvery-th call begins a round. Each of these
	// finds the socket empty and runs out.
	for i := 1; i <= 2*probeEvery; i++ {
		p.poll(a)
		if got, want := p.Stats().Rounds, uint64(i/probeEvery); got != want {
			t.Fatalf("after %d calls with the rounds shut: %d rounds begun, want %d", i, got, want)
		}
	}
	a.tally(true) // a probe found data
	if !polls() {
		t.Fatalf("a probe found data: not polling (score %d)", a.score.Load())
	}
	shutAfter(7, "after a probe found data")
	for range 100 {
		a.tally(true)
	}
	if s := a.score.Load(); s < scoreAll*15/16 {
		t.Fatalf("score %d after 100 rounds that found data, want near %d", s, scoreAll)
	}
	for range 10 {
		for range 3 {
			a.tally(false)
		}
		for range 20 {
			a.tally(true)
		}
	}
	if !polls() {
		t.Fatalf("3 rounds in 23 ran out: not polling (score %d)", a.score.Load())
	}
}

// TestPollerStopsOnLongWaits: a reader whose data keeps coming later than
// the budget stops polling, and data that comes within it again starts it.
func TestPollerStopsOnLongWaits(t *testing.T) {
	testsupport.LeakCheck(t)
	const budget = 2 * time.Millisecond
	p := NewPoller(budget)
	a, peer := socketPair(t)
	p.Add(a)
	exchange := func(delay time.Duration) {
		t.Helper()
		done := readAsync(t, a, "x")
		time.Sleep(delay)
		if _, err := peer.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	for range 11 {
		exchange(3 * budget)
	}
	st := p.Stats()
	if st.Polling != 0 || st.Expired != 11 {
		t.Fatalf("stats %+v after 11 waits longer than the budget: want 11 rounds run out, not polling", st)
	}
	for range probeEvery {
		exchange(3 * budget)
	}
	if st2 := p.Stats(); st2.Rounds != st.Rounds+1 {
		t.Fatalf("stats %+v, then %+v after %d more waits: want one round begun (the probe)", st, st2, probeEvery)
	}
	// Data within the budget: the next probe finds it, and polling resumes.
	for i := 0; p.Stats().Polling == 0; i++ {
		if i > probeEvery {
			t.Fatalf("stats %+v: %d waits within the budget did not resume polling", p.Stats(), i)
		}
		exchange(budget / 20)
	}
}
