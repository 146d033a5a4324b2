package faultproxy_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/faultproxy"
	"github.com/dstproject/dst/internal/testsupport"
)

// echoServer echoes every connection until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// start returns a proxy to an echo server; the test fails if any of the
// proxy's goroutines outlive its Close.
func start(t *testing.T) *faultproxy.Proxy {
	t.Helper()
	target := echoServer(t)
	testsupport.LeakCheck(t) // registered before Close, so it checks after it
	p, err := faultproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

func dial(t *testing.T, p *faultproxy.Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and reads back len(msg) bytes within timeout.
func roundTrip(c net.Conn, msg []byte, timeout time.Duration) ([]byte, error) {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	return got, err
}

func TestForward(t *testing.T) {
	p := start(t)
	c := dial(t, p)
	msg := bytes.Repeat([]byte("0123456789"), 10000)
	got, err := roundTrip(c, msg, 5*time.Second)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("round trip: %v, equal %v", err, bytes.Equal(got, msg))
	}
	s := p.Stats()
	if s.Accepted != 1 || s.ClientToServer != int64(len(msg)) || s.ServerToClient != int64(len(msg)) {
		t.Errorf("stats %+v", s)
	}
}

func TestHalfClose(t *testing.T) {
	p := start(t)
	c := dial(t, p)
	c.Write([]byte("bye"))
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Errorf("after half close read %q, %v", got, err)
	}
}

func TestCut(t *testing.T) {
	p := start(t)
	c1, c2 := dial(t, p), dial(t, p)
	for _, c := range []net.Conn{c1, c2} {
		if _, err := roundTrip(c, []byte("ping"), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	p.Cut()
	for i, c := range []net.Conn{c1, c2} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Errorf("conn %d after Cut: read err %v, want reset or EOF", i, err)
		}
	}
	if s := p.Stats(); s.Cut != 2 {
		t.Errorf("stats %+v, want Cut 2", s)
	}
	// The proxy keeps accepting.
	if _, err := roundTrip(dial(t, p), []byte("again"), 5*time.Second); err != nil {
		t.Errorf("after Cut: %v", err)
	}
}

func TestStall(t *testing.T) {
	for _, dir := range []faultproxy.Direction{faultproxy.ClientToServer, faultproxy.ServerToClient, faultproxy.Both} {
		t.Run(dir.String(), func(t *testing.T) {
			p := start(t)
			c := dial(t, p)
			p.Stall(dir)
			if _, err := roundTrip(c, []byte("held"), 100*time.Millisecond); err == nil {
				t.Fatal("bytes crossed a stalled proxy")
			}
			p.Resume(dir)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got := make([]byte, 4)
			if _, err := io.ReadFull(c, got); err != nil || string(got) != "held" {
				t.Errorf("after Resume: %q, %v", got, err)
			}
		})
	}
}

// TestStallPushesBack checks that a stalled proxy stops reading, so a
// sender's writes block instead of piling up in the proxy.
func TestStallPushesBack(t *testing.T) {
	p := start(t)
	c := dial(t, p)
	p.Stall(faultproxy.ClientToServer)
	const total = 64 << 20
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, total))
		wrote <- err
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-wrote:
		t.Fatalf("a %d byte write through a stalled proxy returned (%v)", total, err)
	default:
	}
	if s := p.Stats(); s.ClientToServer != 0 {
		t.Errorf("stalled proxy forwarded %d bytes", s.ClientToServer)
	}
	p.Resume(faultproxy.ClientToServer)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := io.CopyN(io.Discard, c, total); err != nil {
		t.Fatalf("echo after Resume: %d bytes, %v", n, err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
}

func TestDelay(t *testing.T) {
	p := start(t)
	c := dial(t, p)
	const d = 80 * time.Millisecond
	p.SetDelay(faultproxy.Both, d)
	t0 := time.Now()
	if _, err := roundTrip(c, []byte("slow"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(t0); rtt < 2*d {
		t.Errorf("round trip %v with %v each way", rtt, d)
	}
	p.SetDelay(faultproxy.Both, 0)
	t0 = time.Now()
	roundTrip(c, []byte("fast"), 5*time.Second)
	if rtt := time.Since(t0); rtt >= d {
		t.Errorf("round trip %v after removing the delay", rtt)
	}
}

// TestCorruptSoon: the n-th byte from now counts over every connection, so
// it strikes the one that carries it, wherever its own stream is.
func TestCorruptSoon(t *testing.T) {
	p := start(t)
	msg := bytes.Repeat([]byte{0x55}, 100)
	a, b := dial(t, p), dial(t, p)
	if _, err := roundTrip(a, msg, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// a is 100 bytes into its stream each way; the 150th byte from now,
	// after 100 more of a's, is byte 49 of b's.
	p.CorruptSoon(faultproxy.ClientToServer, 150, 0xff)
	if got, _ := roundTrip(a, msg, 5*time.Second); !bytes.Equal(got, msg) {
		t.Errorf("a got % x, corrupted early", got[:16])
	}
	got, err := roundTrip(b, msg, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, flipped(msg, 49, 0xff)) {
		t.Errorf("b got % x, want byte 49 flipped", got[40:56])
	}
	if got, _ := roundTrip(a, msg, 5*time.Second); !bytes.Equal(got, msg) {
		t.Error("corrupted twice")
	}
	if s := p.Stats(); s.Corruptions != 1 {
		t.Errorf("stats %+v, want 1 corruption", s)
	}
}

func TestCorruptAt(t *testing.T) {
	p := start(t)
	msg := bytes.Repeat([]byte{0x55}, 100)
	c := dial(t, p)
	p.CorruptAt(faultproxy.ClientToServer, 10, 0xff)
	got, err := roundTrip(c, msg, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, flipped(msg, 10, 0xff)) {
		t.Errorf("got % x", got[:16])
	}
	// Once only: the next bytes and the next connection are clean.
	if got, _ := roundTrip(c, msg, 5*time.Second); !bytes.Equal(got, msg) {
		t.Error("corrupted twice")
	}
	// This connection is past offset 5, so the next one takes it, in the
	// other direction.
	p.CorruptAt(faultproxy.ServerToClient, 5, 0x01)
	roundTrip(c, msg, 5*time.Second)
	got, _ = roundTrip(dial(t, p), msg, 5*time.Second)
	if !bytes.Equal(got, flipped(msg, 5, 0x01)) {
		t.Errorf("second connection got % x", got[:16])
	}
	if s := p.Stats(); s.Corruptions != 2 {
		t.Errorf("stats %+v, want 2 corruptions", s)
	}
}

// flipped returns a copy of msg with byte i XORed with x.
func flipped(msg []byte, i int, x byte) []byte {
	want := bytes.Clone(msg)
	want[i] ^= x
	return want
}

func TestRefuse(t *testing.T) {
	p := start(t)
	p.Refuse(300 * time.Millisecond)
	if c, err := net.Dial("tcp", p.Addr()); err == nil {
		// The reset may come before or after connect returns.
		if _, err := roundTrip(c, []byte("x"), 5*time.Second); err == nil {
			t.Error("refused connection carried data")
		}
		c.Close()
	}
	time.Sleep(350 * time.Millisecond)
	if _, err := roundTrip(dial(t, p), []byte("x"), 5*time.Second); err != nil {
		t.Errorf("after the refusal: %v", err)
	}
	if s := p.Stats(); s.Refused != 1 || s.Accepted != 1 {
		t.Errorf("stats %+v", s)
	}
}

// TestCloseWhileStalled checks that Close ends pumps blocked by a stall or a
// delay.
func TestCloseWhileStalled(t *testing.T) {
	p := start(t)
	c := dial(t, p)
	roundTrip(c, []byte("up"), 5*time.Second)
	p.Stall(faultproxy.ServerToClient)
	p.SetDelay(faultproxy.ClientToServer, time.Hour)
	c.Write([]byte("stuck"))
	time.Sleep(20 * time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung")
	}
}

func TestTargetDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	p, err := faultproxy.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if c, err := net.Dial("tcp", p.Addr()); err == nil {
		if _, err := roundTrip(c, []byte("x"), 5*time.Second); err == nil {
			t.Error("data through a proxy whose target is down")
		}
		c.Close()
	}
}
