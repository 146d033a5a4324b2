package rawio

import (
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func sendBuffer(t *testing.T, c net.Conn) int {
	t.Helper()
	if w, ok := c.(*Conn); ok {
		c = w.Conn
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		n, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return n
}

// mayForce reports whether this process may set SO_SNDBUFFORCE (root with
// CAP_NET_ADMIN), on a scratch socket.
func mayForce(t *testing.T) bool {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	return syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, 4096) == nil
}

// TestGrowSendBuffer: a unix socket, wrapped or not, gets at least the
// asked-for send buffer, or net.core.wmem_max when the process may not
// exceed it; a TCP socket keeps its own.
func TestGrowSendBuffer(t *testing.T) {
	const want = 2 << 20
	limit := want
	if !mayForce(t) {
		b, err := os.ReadFile("/proc/sys/net/core/wmem_max")
		if err != nil {
			t.Fatal(err)
		}
		wmemMax, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		limit = min(want, wmemMax)
	}
	w, peer := socketPair(t)
	for _, c := range []net.Conn{w, peer} {
		before := sendBuffer(t, c)
		if err := GrowSendBuffer(c, want); err != nil {
			t.Fatalf("GrowSendBuffer(%T): %v", c, err)
		}
		// The kernel doubles what it is asked for.
		if got := sendBuffer(t, c); got < 2*limit || got <= before {
			t.Errorf("%T: send buffer %d bytes (was %d), want at least %d", c, got, before, 2*limit)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	before := sendBuffer(t, tc)
	if err := GrowSendBuffer(Wrap(tc), want); err != nil {
		t.Fatal(err)
	}
	if got := sendBuffer(t, tc); got != before {
		t.Errorf("TCP send buffer changed from %d to %d; TCP sizes its own", before, got)
	}
}
