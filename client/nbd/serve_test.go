package nbd_test

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/testsupport"
)

// serveUnix runs Server.Serve on a unix socket until the test ends.
func serveUnix(t testing.TB, s *nbd.Server) (path string, stop func() error) {
	t.Helper()
	if s.Logger == nil {
		s.Logger = quietLog
	}
	path = filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	var once sync.Once
	var serr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case serr = <-done:
			case <-time.After(10 * time.Second):
				t.Error("Serve did not return")
			}
		})
		return serr
	}
	t.Cleanup(func() { stop() })
	return path, stop
}

func TestServe(t *testing.T) {
	testsupport.LeakCheck(t)
	e, dev := memExport(1 << 20)
	path, stop := serveUnix(t, &nbd.Server{Exports: []*nbd.Export{e}})
	var clients []*tclient
	for i := range 4 {
		nc, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c := newTClient(t, nc)
		c.goTransmission("mem")
		if got := c.mustDo(nbdwire.CmdWrite, 0, uint64(i)*4096, 4096, make([]byte, 4096), nil); got != 0 {
			t.Errorf("client %d write: %v", i, got)
		}
		clients = append(clients, c)
	}
	clients[0].disc()
	if err := clients[0].waitClosed(5 * time.Second); err == nil || err.Error() != "EOF" {
		t.Errorf("after DISC: %v", err)
	}
	// Shutdown closes the idle connections that are left.
	if err := stop(); err != nil {
		t.Errorf("Serve = %v", err)
	}
	for i, c := range clients[1:] {
		if err := c.waitClosed(5 * time.Second); err == nil {
			t.Errorf("client %d still connected", i+1)
		}
	}
	if dev.Writes() != 4 {
		t.Errorf("device writes %d", dev.Writes())
	}
	if _, err := net.Dial("unix", path); err == nil {
		t.Error("listener still open")
	}
}

func TestServeRejectsBadExport(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := &nbd.Server{Exports: []*nbd.Export{{Name: "x", Size: 1}}}
	if err := s.Serve(t.Context(), l); err == nil {
		t.Error("Serve accepted an export without a device")
	}
}
