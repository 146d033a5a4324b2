package main

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/nbdclient"
	"github.com/dstproject/dst/internal/nbdwire"
)

// chain starts an end and a relay in front of it, and returns the relay's
// socket.
func chain(t *testing.T, size uint64) string {
	t.Helper()
	el, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "floor.sock")
	rl, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { el.Close(); rl.Close() })
	go serveEnd(el, size)
	go relayFrom(rl, el.Addr().String())
	return path
}

// TestChain: a client through the relay finds the export the end offers,
// and every kind of request the bench makes, alone and many in flight,
// gets a successful reply with the data it promises.
func TestChain(t *testing.T) {
	const size = 64 << 20
	path := chain(t, size)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nbdclient.Dial(ctx, "unix", path, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A request that gets no reply fails when this closes the client.
	watchdog := time.AfterFunc(10*time.Second, func() { c.Close() })
	defer watchdog.Stop()
	if c.Size() != size {
		t.Errorf("size %d, want %d", c.Size(), size)
	}
	for _, f := range []nbdwire.TransFlags{nbdwire.TransSendFlush, nbdwire.TransSendFUA, nbdwire.TransCanMultiConn} {
		if c.Flags()&f == 0 {
			t.Errorf("flags %#x lack %#x", c.Flags(), f)
		}
	}
	buf := make([]byte, 256<<10)
	if err := c.WriteAt(buf, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	if err := c.ReadAt(buf, size-int64(len(buf))); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	// 64 requests in flight, so that the end gets them in bursts.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		cmd := nbdwire.CmdRead
		if i%2 == 1 {
			cmd = nbdwire.CmdWrite
		}
		wg.Add(1)
		cl := &nbdclient.Call{Cmd: cmd, Offset: uint64(i) << 12, Length: 4096, Data: make([]byte, 4096),
			Done: func(cl *nbdclient.Call) { errs <- cl.Err; wg.Done() }}
		if err := c.Go(cl); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// TestRelayWithoutEnd: a client of a relay whose end is gone is
// disconnected, and the relay goes on serving others.
func TestRelayWithoutEnd(t *testing.T) {
	el, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := el.Addr().String()
	el.Close()
	path := filepath.Join(t.TempDir(), "floor.sock")
	rl, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer rl.Close()
	go relayFrom(rl, addr)
	for range 2 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
			t.Errorf("read %d bytes, err %v; want the connection closed", n, err)
		}
		c.Close()
	}
}

// TestBadUsage: a wrong role, size or argument count is refused with a
// message naming it.
func TestBadUsage(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "nbdfloor")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"middle", "a", "b"}, "unknown role"},
		{[]string{"end", "127.0.0.1:0", "lots"}, "SIZE"},
		{[]string{"end", "127.0.0.1:0", "0"}, "SIZE"},
		{[]string{"relay"}, "usage"},
	} {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("nbdfloor %q: err %v, output %q; want an error saying %q", c.args, err, out, c.want)
		}
	}
}
