package verify_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/client/nbd/nbdtest"
	"github.com/dstproject/dst/internal/faultproxy"
	"github.com/dstproject/dst/internal/nbdclient"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/verify"
)

// nbdBehindProxy serves a MemDevice with dst's NBD front end on TCP and
// puts a fault proxy in front of it.
func nbdBehindProxy(t *testing.T, size int) (*faultproxy.Proxy, *nbdtest.MemDevice) {
	t.Helper()
	dev := nbdtest.NewMemDevice(size)
	e := &nbd.Export{Name: "mem", Size: uint64(size), Flush: true, FUA: true, MultiConn: true, Device: dev}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := &nbd.Server{Exports: []*nbd.Export{e}, Logger: slog.New(slog.DiscardHandler)}
		s.Serve(ctx, l)
	}()
	p, err := faultproxy.New(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Close()
		cancel()
		<-done
	})
	return p, dev
}

func dialNBD(t *testing.T, addr string) *nbdclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := nbdclient.Dial(ctx, "tcp", addr, "mem")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestDemoCut runs the workload through nbdclient, the proxy and dst's NBD
// front end, cuts the connection mid-run, and verifies over a new one.
// Plain NBD does not reconnect, so everything after the cut fails; the
// record must account for those failures and find no violation, since
// every acknowledged write reached the (non-volatile) device.
func TestDemoCut(t *testing.T) {
	const blocks = 256
	p, _ := nbdBehindProxy(t, blocks*4096)
	c := dialNBD(t, p.Addr())
	w := &verify.Workload{Blocks: blocks, Depth: 16, Ops: 3000, Rule: verify.RequireAcked}
	ran := make(chan error, 1)
	go func() { ran <- w.Run(context.Background(), c) }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if w.Report().Writes.OK >= 500 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("workload made no progress")
		}
	}
	p.Cut()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	rep, err := w.Verify(dialNBD(t, p.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("proxy %+v; %v", p.Stats(), &rep)
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	if rep.Failed() == 0 || rep.Writes.OK < 500 || rep.Checked != blocks {
		t.Errorf("expected acknowledged writes, then failures: %v", &rep)
	}
	var n int64
	for _, v := range rep.Errors {
		n += v
	}
	if n != rep.Failed() || p.Stats().Cut != 1 {
		t.Errorf("errors %v do not add up to %d failures; proxy %+v", rep.Errors, rep.Failed(), p.Stats())
	}
}

// TestDemoCorruption flips one bit of a write's payload on the wire; NBD
// has no integrity check, so the device stores it and acknowledges, and
// the checker must notice.
func TestDemoCorruption(t *testing.T) {
	const blocks = 16
	p, _ := nbdBehindProxy(t, blocks*4096)
	// One write at a time, nothing else, so stream offsets are known: the
	// client's handshake (flags, then NBD_OPT_GO for "mem") and then a
	// request header and 4096 bytes per write.
	handshake := nbdwire.ClientFlagsSize + nbdwire.OptHeaderSize + nbdwire.InfoRequest{Name: "mem"}.Len()
	const victim = 10
	const write = nbdwire.RequestSize + 4096
	p.CorruptAt(faultproxy.ClientToServer, int64(handshake+victim*write+nbdwire.RequestSize+100), 0x40)
	c := dialNBD(t, p.Addr())
	w := &verify.Workload{Blocks: blocks, Depth: 1, Ops: victim + 1, ReadPercent: 0, FlushPercent: 0, FUAPercent: 1}
	if err := w.Run(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	rep, err := w.Verify(c)
	if err != nil {
		t.Fatal(err)
	}
	if p.Stats().Corruptions != 1 || rep.Writes.Issued != victim+1 || rep.Failed() != 0 {
		t.Fatalf("setup went wrong: proxy %+v; %v", p.Stats(), &rep)
	}
	if rep.Violated != 1 || !strings.Contains(rep.Violations[0].Found, "corrupt") {
		t.Fatalf("corruption not caught: %v", rep.Err())
	}
}
