package server_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dstclient "github.com/dstproject/dst/client"
	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/wire"
)

// flood plays an attacker that holds connections open at a server's port
// without ever authenticating: silent ones send nothing, slow ones send a
// byte of a plausible preamble every second (slowloris). Each one dials
// again a moment after the server drops it, so the pressure lasts.
type flood struct {
	addr    string
	stop    chan struct{}
	wg      sync.WaitGroup
	dials   atomic.Int64
	dropped atomic.Int64 // connections the server closed

	mu    sync.Mutex
	conns map[net.Conn]bool
}

// floodRedial is how long a dropped attacker waits before dialing again,
// on average: long enough to keep the test's CPU use modest on two cores,
// short enough that the server's table stays full (about 1100 attackers
// redialing every 2 s, each held up to the 2 s first-message timeout).
const floodRedial = 2 * time.Second

// startFlood opens silent and slow connections to addr, spread round-robin
// over sources, and returns once each has been dialed once.
func startFlood(t *testing.T, addr string, sources []net.IP, silent, slow int) *flood {
	t.Helper()
	f := &flood{addr: addr, stop: make(chan struct{}), conns: make(map[net.Conn]bool)}
	var ready sync.WaitGroup
	for i := range silent + slow {
		ready.Add(1)
		f.wg.Add(1)
		go f.hold(sources[i%len(sources)], i >= silent, &ready)
	}
	ready.Wait()
	t.Cleanup(f.close)
	return f
}

func (f *flood) close() {
	select {
	case <-f.stop:
		return
	default:
	}
	close(f.stop)
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *flood) hold(src net.IP, slow bool, ready *sync.WaitGroup) {
	defer f.wg.Done()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
	for first := true; ; first = false {
		c, err := d.Dial("tcp", f.addr)
		if first {
			ready.Done()
		}
		f.dials.Add(1)
		if err == nil && f.track(c) {
			if f.linger(c, slow) {
				f.dropped.Add(1)
			}
			f.untrack(c)
		}
		select {
		case <-f.stop:
			return
		case <-time.After(floodRedial/2 + rand.N(floodRedial)):
		}
	}
}

// track registers c for close, unless the flood is stopping.
func (f *flood) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.stop:
		c.Close()
		return false
	default:
	}
	f.conns[c] = true
	return true
}

func (f *flood) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

// linger holds c until the server closes it (true) or the flood stops
// (false). A dst server sends nothing before the client's first message,
// so any end of a read means one or the other.
func (f *flood) linger(c net.Conn, slow bool) bool {
	drip := []byte("DSTN\x01\x01\x00\x00\x00\x6c") // a preamble, then a length of 108
	buf := make([]byte, 1)
	for i := 0; ; i++ {
		if slow {
			c.SetReadDeadline(time.Now().Add(time.Second))
		}
		_, err := c.Read(buf)
		if slow && errors.Is(err, os.ErrDeadlineExceeded) {
			if _, err := c.Write(drip[i%len(drip) : i%len(drip)+1]); err == nil {
				continue
			}
		}
		select {
		case <-f.stop:
			return false
		default:
			return true
		}
	}
}

// loopbackSources returns n distinct loopback addresses in 127.0.first.0/24
// and up, for connections that must look like they come from different
// hosts. Linux routes all of 127.0.0.0/8 to lo.
func loopbackSources(t *testing.T, first, n int) []net.IP {
	t.Helper()
	ips := make([]net.IP, n)
	for i := range ips {
		ips[i] = net.IPv4(127, byte(first+(i+1)/256), byte((i+1)%256), 1)
	}
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ips[n-1]}}).Dial("tcp", "127.0.0.1:1")
	if c != nil {
		c.Close()
	}
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Skipf("cannot bind to loopback address %v: %v", ips[n-1], err)
	}
	return ips
}

// needFiles raises the soft limit on open files to n if it is lower.
func needFiles(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		t.Skipf("this test needs %d open files; the hard limit is %d", n, lim.Max)
	}
	old := lim
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("raising the open file limit to %d: %v", n, err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// handshakeFrom runs a client handshake from the source address src and
// returns how long it took. The handshake is what admission guards; what
// the connection carries afterwards is e.dial's business.
func (e *tcpEnv) handshakeFrom(src net.IP) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}).DialContext(ctx, "tcp", e.addr)
	if err != nil {
		return time.Since(start), err
	}
	conn, err := crypto.Client(ctx, c, &crypto.ClientConfig{PrivateKey: e.clientKey, ServerKey: e.serverKey})
	d := time.Since(start)
	if err == nil {
		conn.Close()
	}
	return d, err
}

// TestAdmissionUnderFlood holds 1000 silent and 100 slowloris connections
// open from 150 source addresses, each redialing when dropped, for longer
// than the first-message timeout. Every time, within 2 s: a new client
// from a quiet address gets in, so does one from a flooding address, and
// an established attachment whose connection is cut reconnects.
func TestAdmissionUnderFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 1100 connections")
	}
	needFiles(t, 3000)
	e := newTCPEnv(t)
	a, cut := e.attach(t)
	sources := loopbackSources(t, 1, 150)
	f := startFlood(t, e.addr, sources, 1000, 100)
	time.Sleep(200 * time.Millisecond) // let the server accept the flood
	check := func(what string, d time.Duration, err error) {
		t.Helper()
		t.Logf("%s: %v", what, d.Round(time.Millisecond))
		if err != nil || d > 2*time.Second {
			t.Errorf("%s: %v after %v", what, err, d)
		}
	}
	for i := range 3 {
		start := time.Now()
		err := e.dial(e.clientKey)
		check(fmt.Sprintf("round %d, new client from 127.0.0.1 (handshake, HELLO, OPEN, READ)", i), time.Since(start), err)

		src := sources[i*7]
		d, err := e.handshakeFrom(src)
		check(fmt.Sprintf("round %d, new client from flooding source %v (handshake)", i, src), d, err)

		start = time.Now()
		cut()
		for a.Stats().Reconnects < uint64(i+1) && time.Since(start) < 5*time.Second {
			time.Sleep(2 * time.Millisecond)
		}
		d = time.Since(start)
		if err = readBlock(a); err == nil && a.Stats().Reconnects < uint64(i+1) {
			err = errors.New("no reconnect")
		}
		check(fmt.Sprintf("round %d, attachment cut and reconnected (then a READ)", i), d, err)

		time.Sleep(time.Second) // the last round runs after the first slow ones timed out
	}
	n, evicted, refused := e.srv.AdmissionCounts()
	t.Logf("flood: %d dials, %d dropped by the server; %d handshakes in progress, %d evicted, %d refused",
		f.dials.Load(), f.dropped.Load(), n, evicted, refused)
	if n > server.MaxHandshakes {
		t.Errorf("%d handshakes in progress, more than %d", n, server.MaxHandshakes)
	}
}

// attach attaches to the export with the client package, and returns a
// function that cuts the attachment's current TCP connection.
func (e *tcpEnv) attach(t *testing.T) (*dstclient.Attachment, func()) {
	t.Helper()
	var mu sync.Mutex
	var last net.Conn
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err == nil {
			mu.Lock()
			last = c
			mu.Unlock()
		}
		return c, err
	}
	a, err := dstclient.Attach(context.Background(), &dstclient.AttachConfig{
		Config: dstclient.Config{Server: e.addr, PrivateKey: e.clientKey, ServerKey: e.serverKey,
			Dialer: dial, Logger: testsupport.Logger(t)},
		Export: "disk",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, func() {
		mu.Lock()
		defer mu.Unlock()
		last.Close()
	}
}

// waitCounts polls the server's admission counters until ok accepts them.
func waitCounts(t *testing.T, e *tcpEnv, what string, ok func(n int, evicted uint64) bool) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		n, evicted, _ := e.srv.AdmissionCounts()
		if ok(n, evicted) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d handshakes in progress, %d evicted", what, n, evicted)
		}
	}
}

// holdFrom opens n connections from src, one after the other, and keeps
// them open silently until the test ends.
func holdFrom(t *testing.T, addr string, src net.IP, n int) []net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns
}

// closedByServer reports, for each connection, whether the server has
// closed it: it sends nothing before the client's first message, so a
// read ends at once if so and waits out a short deadline if not.
func closedByServer(conns []net.Conn) []bool {
	closed := make([]bool, len(conns))
	var wg sync.WaitGroup
	deadline := time.Now().Add(300 * time.Millisecond)
	for i, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(deadline)
			_, err := c.Read(make([]byte, 1))
			closed[i] = !errors.Is(err, os.ErrDeadlineExceeded)
		})
	}
	wg.Wait()
	return closed
}

// TestAdmissionPerSource: one source cannot take more than its share of
// handshakes. Its own oldest connections are dropped for its newer ones,
// another source's are untouched, and a real client gets in from either.
func TestAdmissionPerSource(t *testing.T) {
	needFiles(t, 1000)
	e := newTCPEnv(t)
	srcs := loopbackSources(t, 3, 2)
	per := server.MaxHandshakesPerSource

	fromA := holdFrom(t, e.addr, srcs[0], 3*per)
	waitCounts(t, e, "after source A's connections", func(n int, ev uint64) bool { return n == per && ev == uint64(2*per) })
	for i, closed := range closedByServer(fromA) {
		if want := i < 2*per; closed != want {
			t.Errorf("source A, connection %d of %d: closed %v, want %v (the oldest go first)", i, len(fromA), closed, want)
		}
	}

	fromB := holdFrom(t, e.addr, srcs[1], per)
	waitCounts(t, e, "after source B's connections", func(n int, ev uint64) bool { return n == 2*per })
	if _, ev, _ := e.srv.AdmissionCounts(); ev != uint64(2*per) {
		t.Errorf("source B's connections evicted %d others", ev-uint64(2*per))
	}
	for i, closed := range closedByServer(append(fromA[2*per:], fromB...)) {
		if closed {
			t.Errorf("connection %d of A's newest and B's closed; each source is within its share", i)
		}
	}

	for _, src := range srcs {
		d, err := e.handshakeFrom(src)
		t.Logf("client from %v, with %d silent connections there: %v", src, per, d.Round(time.Millisecond))
		if err != nil || d > 2*time.Second {
			t.Errorf("client from %v: %v after %v", src, err, d)
		}
	}
}

// TestAdmissionGlobalBound: with every source within its share but the
// server full, a newcomer from anywhere pushes out the oldest connection
// that has not sent its first message, and nothing else.
func TestAdmissionGlobalBound(t *testing.T) {
	needFiles(t, 1000)
	e := newTCPEnv(t)
	per := server.MaxHandshakesPerSource
	srcs := loopbackSources(t, 4, server.MaxHandshakes/per+1)
	var held []net.Conn
	for _, src := range srcs[:len(srcs)-1] {
		held = append(held, holdFrom(t, e.addr, src, per)...)
	}
	waitCounts(t, e, "server full", func(n int, ev uint64) bool { return n == server.MaxHandshakes && ev == 0 })
	holdFrom(t, e.addr, srcs[len(srcs)-1], 2)
	waitCounts(t, e, "after two newcomers", func(n int, ev uint64) bool { return n == server.MaxHandshakes && ev == 2 })
	for i, closed := range closedByServer(held) {
		if want := i < 2; closed != want {
			t.Errorf("connection %d of %d: closed %v, want %v (the oldest go first)", i, len(held), closed, want)
		}
	}
	d, err := e.handshakeFrom(srcs[len(srcs)-1])
	t.Logf("client with the server full of silent connections: %v", d.Round(time.Millisecond))
	if err != nil || d > 2*time.Second {
		t.Errorf("client: %v after %v", err, d)
	}
}

// logLines counts the log's lines by message.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.Split(strings.TrimSpace(string(p)), "\n")...)
	return len(p), nil
}

// sum returns the lines carrying msg and the events they stand for: one
// for a line with details, n for a line saying more=n.
func (l *logLines) sum(msg string) (lines, events int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if !strings.Contains(line, "msg=\""+msg+"\"") {
			continue
		}
		lines++
		if _, more, ok := strings.Cut(line, " more="); ok {
			n, _ := strconv.Atoi(strings.Fields(more)[0])
			events += n
		} else {
			events++
		}
	}
	return lines, events
}

// TestAdmissionLogRateLimited: a thousand connections pushed out and two
// hundred failed handshakes make a few WARN lines, whose counts add up.
func TestAdmissionLogRateLimited(t *testing.T) {
	needFiles(t, 3000)
	const nonDst = 200
	var log logLines
	start := time.Now()
	var e *tcpEnv
	// Registered first, so it runs after the server has stopped and
	// written out its counts.
	t.Cleanup(func() {
		_, evicted, _ := e.srv.AdmissionCounts()
		periods := 2 + int(time.Since(start)/server.LogEvery)
		warns := 0
		for _, line := range log.lines {
			if strings.Contains(line, "level=WARN") {
				warns++
			}
		}
		t.Logf("%d WARN lines in %v", warns, time.Since(start).Round(time.Millisecond))
		const dropped = "dropped a connection that had not sent its first handshake message, to admit a newer one"
		lines, events := log.sum(dropped)
		t.Logf("%d lines about %d connections pushed out", lines, events)
		if lines > periods || uint64(events) != evicted {
			t.Errorf("%d lines about %d evictions, want at most %d about %d", lines, events, periods, evicted)
		}
		lines, events = log.sum("handshake failed")
		t.Logf("%d lines about %d failed handshakes", lines, events)
		// The connections held open fail too, when the test closes them.
		if failed := e.srv.HandshakesFailed(); lines > periods || uint64(events) != failed || events < nonDst {
			t.Errorf("%d lines about %d failed handshakes, want at most %d about %d (at least %d)",
				lines, events, periods, failed, nonDst)
		}
		if warns > 2*periods {
			t.Errorf("%d WARN lines:\n%s", warns, strings.Join(log.lines, "\n"))
		}
	})
	e = newTCPEnvLog(t, slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelWarn})))
	per := server.MaxHandshakesPerSource
	srcs := loopbackSources(t, 5, 1+200/per)
	// From one source: all but the last few pushed out by the next.
	holdFrom(t, e.addr, srcs[0], 1000)
	// Not dst at all, from sources that stay within their share: each
	// handshake fails. The test waits for every one of them: on a loaded
	// machine (CI runs packages in parallel, under -race) the server can
	// still have some to accept when the evictions below are done, and
	// stopping it then would abort those handshakes, not fail them.
	for i := range nonDst {
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: srcs[1+i%(len(srcs)-1)]}}).Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		c.Close()
	}
	waitCounts(t, e, "after the connections", func(n int, ev uint64) bool { return ev >= uint64(1000-2*per) && n <= per })
	for deadline := time.Now().Add(20 * time.Second); e.srv.HandshakesFailed() < nonDst; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d handshakes of connections that are not dst failed", e.srv.HandshakesFailed(), nonDst)
		}
	}
}

// readBlock reads the first block of the attachment's export.
func readBlock(a *dstclient.Attachment) error {
	done := make(chan error, 1)
	a.Submit(dstclient.Request{Cmd: wire.CmdRead, Length: 4096, Data: make([]byte, 4096),
		Done: dstclient.CompleteFunc(func(err error) { done <- err })})
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		return errors.New("READ timed out")
	}
}
