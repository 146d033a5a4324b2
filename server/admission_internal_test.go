package server

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestSourceOf(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want string // "" for no source
	}{
		{"192.0.2.7:7700", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:7700", "192.0.2.7"},
		{"[2001:db8:1:2:3:4:5:6]:7700", "2001:db8:1:2::"},
		{"[2001:db8:1:2:ffff::1]:1", "2001:db8:1:2::"}, // same /64
		{"[2001:db8:1:3::1]:1", "2001:db8:1:3::"},
		{"[fe80::1%eth0]:1", "fe80::"},
	} {
		src, ok := sourceOf(net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tc.addr)))
		if !ok || src.String() != tc.want {
			t.Errorf("sourceOf(%s) = %v, %v; want %s", tc.addr, src, ok, tc.want)
		}
	}
	if src, ok := sourceOf(&net.UnixAddr{Name: "pipe", Net: "pipe"}); ok {
		t.Errorf("sourceOf(pipe) = %v, want none", src)
	}
}

// fakeConn is a connection from addr that records its Close.
type fakeConn struct {
	net.Conn // nil: only RemoteAddr and Close are used
	addr     net.Addr
	mu       sync.Mutex
	closed   bool
}

func (c *fakeConn) RemoteAddr() net.Addr { return c.addr }
func (c *fakeConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}
func (c *fakeConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func from(ip string) *fakeConn {
	return &fakeConn{addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: 1}}
}

// checkClosed checks that admission closed exactly the named conns.
func checkClosed(t *testing.T, what string, conns map[string]*fakeConn, closed ...string) {
	t.Helper()
	want := make(map[string]bool)
	for _, name := range closed {
		want[name] = true
	}
	for name, c := range conns {
		if c.isClosed() != want[name] {
			t.Errorf("%s: %s closed %v, want %v", what, name, c.isClosed(), want[name])
		}
	}
}

func testAdmission(max, perSource int) (*admission, *bytes.Buffer) {
	var log bytes.Buffer
	return newAdmission(slog.New(slog.NewTextHandler(&log, nil)), max, perSource), &log
}

// TestAdmissionPerSourceOrder: a source at its bound of silent
// connections loses the oldest of them; one whose first message was read
// no longer counts, and is never pushed out.
func TestAdmissionPerSourceOrder(t *testing.T) {
	a, _ := testAdmission(10, 2)
	c := map[string]*fakeConn{"a1": from("192.0.2.1"), "a2": from("192.0.2.1"), "a3": from("192.0.2.1"),
		"a4": from("192.0.2.1"), "a5": from("192.0.2.1"), "b1": from("192.0.2.2")}
	tk := make(map[string]*ticket)
	admit := func(name string) {
		if tk[name] = a.admit(c[name]); tk[name] == nil {
			t.Fatalf("%s refused", name)
		}
	}
	admit("a1")
	admit("a2")
	admit("b1")
	checkClosed(t, "within bounds", c)
	admit("a3")
	checkClosed(t, "a3 over A's bound", c, "a1")
	tk["a2"].arrived()
	admit("a4")
	checkClosed(t, "a4, with a2's first message read", c, "a1")
	admit("a5")
	checkClosed(t, "a5 over A's bound", c, "a1", "a3")
	if n, ev, ref := a.counts(); n != 4 || ev != 2 || ref != 0 {
		t.Errorf("counts %d in progress, %d evicted, %d refused; want 4, 2, 0", n, ev, ref)
	}
	if !tk["a1"].done() || tk["a2"].done() {
		t.Error("done does not tell the evicted a1 from a2")
	}
	for _, name := range []string{"a3", "a4", "a5", "b1"} {
		tk[name].done()
	}
	if n, _, _ := a.counts(); n != 0 || len(a.sources) != 0 || a.oldest != nil || a.newest != nil {
		t.Errorf("table not empty after every done: %d, %v, %p, %p", n, a.sources, a.oldest, a.newest)
	}
}

// TestAdmissionGlobalOrder: at the total bound, the oldest silent
// connection from any source goes; connections without an IP count only
// against the total; with nothing silent left, a newcomer is refused.
func TestAdmissionGlobalOrder(t *testing.T) {
	a, _ := testAdmission(3, 2)
	pipe := func() *fakeConn { return &fakeConn{addr: &net.UnixAddr{Name: "pipe", Net: "pipe"}} }
	c := map[string]*fakeConn{"p1": pipe(), "p2": pipe(), "b1": from("2001:db8::1"), "c1": from("2001:db8:0:1::1"),
		"d1": from("192.0.2.4"), "e1": from("192.0.2.5")}
	tk := make(map[string]*ticket)
	for _, name := range []string{"p1", "p2", "b1"} {
		tk[name] = a.admit(c[name])
	}
	checkClosed(t, "full", c)
	tk["p1"].arrived()
	tk["c1"] = a.admit(c["c1"])
	checkClosed(t, "c1 with the server full", c, "p2")
	tk["d1"] = a.admit(c["d1"])
	checkClosed(t, "d1 with the server full", c, "p2", "b1")
	tk["c1"].arrived()
	tk["d1"].arrived()
	if a.admit(c["e1"]) != nil {
		t.Error("e1 admitted with every slot past its first message")
	}
	checkClosed(t, "e1 refused", c, "p2", "b1")
	if n, ev, ref := a.counts(); n != 3 || ev != 2 || ref != 1 {
		t.Errorf("%d in progress, %d evicted, %d refused; want 3, 2, 1", n, ev, ref)
	}
}

// syncBuffer is a bytes.Buffer for a logger written from timers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Split(strings.TrimSpace(s.b.String()), "\n")
}

// TestRateLog: the first event logs at once with its details, the rest of
// a period make one line with their count at its end, a quiet period ends
// the cycle, and flush writes out a count at once.
func TestRateLog(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf syncBuffer
		r := newRateLog(slog.New(slog.NewTextHandler(&buf, nil)), 5*time.Second, "refusing")
		for i := range 1000 {
			r.warn("n", i)
		}
		time.Sleep(4 * time.Second)
		if l := buf.lines(); len(l) != 1 || !strings.Contains(l[0], "n=0") {
			t.Fatalf("after 1000 events: %q", l)
		}
		time.Sleep(2 * time.Second) // the period ends
		for range 10 {
			r.warn("n", -1)
		}
		time.Sleep(5 * time.Second) // another with 10 events
		time.Sleep(5 * time.Second) // a quiet one: the cycle ends
		r.warn("n", 2000)
		r.warn("n", 2001)
		r.warn("n", 2002)
		r.flush()
		r.flush()
		want := []string{"n=0", "more=999", "more=10", "n=2000", "more=2"}
		l := buf.lines()
		if len(l) != len(want) {
			t.Fatalf("lines %q, want ones with %q", l, want)
		}
		for i := range want {
			if !strings.Contains(l[i], want[i]) || !strings.Contains(l[i], "level=WARN") {
				t.Errorf("line %d %q, want it to say %s", i, l[i], want[i])
			}
		}
	})
}

// TestAdmissionSkipsUnread: a connection whose client has written, but
// whose handshake has not read it yet, is not taken for a silent one, even
// when it is the oldest.
func TestAdmissionSkipsUnread(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accept := func(payload string) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		if payload != "" {
			c.Write([]byte(payload))
			for probe := (&ticket{c: s}); !probe.unread(); {
				time.Sleep(time.Millisecond)
			}
		}
		return s
	}
	a, _ := testAdmission(2, 2)
	spoke, silent := accept("DSTN"), accept("")
	tSpoke, tSilent := a.admit(spoke), a.admit(silent)
	tNew := a.admit(accept(""))
	if tNew == nil || !tSilent.done() || tSpoke.done() {
		t.Errorf("over the source's bound: newcomer %p, silent evicted %v, spoken evicted %v",
			tNew, tSilent.evicted, tSpoke.evicted)
	}
}
