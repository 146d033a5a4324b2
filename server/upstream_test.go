package server_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/client/nbd/nbdtest"
	"github.com/dstproject/dst/internal/nbdclient/nbdfake"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/server/servertest"
	"github.com/dstproject/dst/wire"
)

// upstreamNBD serves export over dst's own NBD front end on a unix socket,
// an upstream the test can stop and start again at the same path.
type upstreamNBD struct {
	t    *testing.T
	sock string
	exp  *nbd.Export

	mu       sync.Mutex
	stop     func()
	accepted atomic.Int32 // connections accepted
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func newUpstreamNBD(t *testing.T, e *nbd.Export) *upstreamNBD {
	u := &upstreamNBD{t: t, sock: filepath.Join(t.TempDir(), "up.sock"), exp: e}
	u.start()
	t.Cleanup(u.halt)
	return u
}

func (u *upstreamNBD) uri() string { return "nbd+unix:///" + u.exp.Name + "?socket=" + u.sock }

func (u *upstreamNBD) start() {
	u.t.Helper()
	l, err := net.Listen("unix", u.sock)
	if err != nil {
		u.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := &nbd.Server{Exports: []*nbd.Export{u.exp}, Logger: slog.New(slog.DiscardHandler)}
		s.Serve(ctx, countingListener{l, &u.accepted})
	}()
	u.mu.Lock()
	u.stop = func() { cancel(); <-done }
	u.mu.Unlock()
}

// halt stops the upstream: its listener and every connection.
func (u *upstreamNBD) halt() {
	u.mu.Lock()
	stop := u.stop
	u.stop = nil
	u.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// newUpstreamEnv starts a server with the upstream export "up" and an
// in-memory export "mem" beside it.
func newUpstreamEnv(t *testing.T, up *upstreamNBD) *env {
	t.Helper()
	return newUpstreamEnvConns(t, up, 0)
}

// newUpstreamEnvConns is newUpstreamEnv asking for conns connections to
// the upstream.
func newUpstreamEnvConns(t *testing.T, up *upstreamNBD, conns int) *env {
	t.Helper()
	leakCheck(t)
	e := &env{t: t, mem: map[string]*servertest.MemBackend{"mem": servertest.NewMemBackend(1 << 20)}}
	cfg := &server.Config{Logger: testsupport.Logger(t), Workers: 8, UpstreamID: filepath.Join(t.TempDir(), "upstream-id"),
		Exports: []server.ExportConfig{
			{Name: "up", Upstream: up.uri(), Connections: conns, Shared: true},
			{Name: "mem", Path: "mem:mem", Backend: e.mem["mem"], Shared: true},
		}}
	e.start(cfg)
	return e
}

func memExport(size int) (*nbd.Export, *nbdtest.MemDevice) {
	dev := nbdtest.NewMemDevice(size)
	return &nbd.Export{Name: "vm1", Size: uint64(size), MinBlockSize: 512, PreferredBlockSize: 4096, MaxBlockSize: 1 << 20,
		Flush: true, FUA: true, Trim: true, WriteZeroes: true, MultiConn: true, Device: dev}, dev
}

// TestUpstreamPassthrough checks autoconfiguration and the data path
// through an upstream: what it announced is what the client is told, and
// writes, FUA and FLUSH reach it.
func TestUpstreamPassthrough(t *testing.T) {
	exp, dev := memExport(8 << 20)
	exp.Rotational = true
	up := newUpstreamNBD(t, exp)
	e := newUpstreamEnv(t, up)
	c := e.open(e.cli, "up")
	i := c.info
	if i.Size != 8<<20 || i.LogicalBlock != 512 || i.PhysicalBlock != 4096 || i.MaxTransfer != 1<<20 {
		t.Fatalf("export info %+v", i)
	}
	want := wire.ExportFlush | wire.ExportFUA | wire.ExportTrim | wire.ExportWriteZeroes | wire.ExportMultiConn | wire.ExportRotational | wire.ExportShared
	if i.Flags != want {
		t.Fatalf("flags %v, want %v", i.Flags, want)
	}
	p := bytes.Repeat([]byte("upstream"), 512)
	must(t, c.write(8192, p, 0), wire.StatusOK, "WRITE")
	must(t, c.write(16384, p, wire.FlagFUA), wire.StatusOK, "WRITE FUA")
	got, st := c.read(8192, uint32(len(p)))
	must(t, st, wire.StatusOK, "READ")
	if !bytes.Equal(got, p) || !bytes.Equal(dev.Bytes()[16384:16384+len(p)], p) {
		t.Fatal("data differs")
	}
	must(t, c.do(wire.Request{Cmd: wire.CmdFlush}, nil).rep.Status, wire.StatusOK, "FLUSH")
	if dev.Flushes() != 1 || dev.FUAWrites() != 1 {
		t.Fatalf("upstream saw %d flushes and %d FUA writes, want 1 and 1", dev.Flushes(), dev.FUAWrites())
	}
	must(t, c.do(wire.Request{Cmd: wire.CmdWriteZeroes, Offset: 8192, Length: 4096}, nil).rep.Status, wire.StatusOK, "WRITE_ZEROES")
	got, _ = c.read(8192, 4096)
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("WRITE_ZEROES did not zero")
	}
	// A READ above sealAway is sealed by its queue's flusher, not by the
	// upstream connection's reader.
	big := bytes.Repeat([]byte("0123456789abcdef"), 256<<10/16)
	must(t, c.write(1<<20, big, 0), wire.StatusOK, "large WRITE")
	got, st = c.read(1<<20, uint32(len(big)))
	must(t, st, wire.StatusOK, "large READ")
	if !bytes.Equal(got, big) {
		t.Fatal("large READ differs")
	}
	// A request longer than the upstream's maximum is refused here.
	must(t, c.do(wire.Request{Cmd: wire.CmdRead, Length: 2 << 20}, nil).rep.Status, wire.StatusEINVAL, "READ past max")
}

// TestUpstreamConnections checks how many connections go upstream: one by
// default, as many as configured to an upstream that announces
// multi-conn, and one to an upstream that does not; and that requests
// spread over them arrive whole.
func TestUpstreamConnections(t *testing.T) {
	for _, tc := range []struct {
		multi       bool
		conns, want int32
	}{{true, 0, 1}, {true, 3, 3}, {false, 3, 1}} {
		t.Run(fmt.Sprintf("multi-conn=%v,connections=%d", tc.multi, tc.conns), func(t *testing.T) {
			exp, dev := memExport(1 << 20)
			exp.MultiConn = tc.multi
			up := newUpstreamNBD(t, exp)
			e := newUpstreamEnvConns(t, up, int(tc.conns))
			c := e.open(e.cli, "up")
			if got := up.accepted.Load(); got != tc.want {
				t.Fatalf("%d connections upstream, want %d", got, tc.want)
			}
			for i := range 8 {
				must(t, c.write(uint64(i)*4096, bytes.Repeat([]byte{byte(i + 1)}, 4096), 0), wire.StatusOK, "WRITE")
			}
			must(t, c.do(wire.Request{Cmd: wire.CmdFlush}, nil).rep.Status, wire.StatusOK, "FLUSH")
			for i := range 8 {
				if got := dev.Bytes()[i*4096 : (i+1)*4096]; !bytes.Equal(got, bytes.Repeat([]byte{byte(i + 1)}, 4096)) {
					t.Fatalf("block %d differs upstream", i)
				}
			}
		})
	}
}

// TestUpstreamFUAEmulated checks that FUA reaches an upstream without it
// as a write and then a FLUSH.
func TestUpstreamFUAEmulated(t *testing.T) {
	exp, dev := memExport(1 << 20)
	exp.FUA = false
	e := newUpstreamEnv(t, newUpstreamNBD(t, exp))
	c := e.open(e.cli, "up")
	must(t, c.write(0, make([]byte, 4096), wire.FlagFUA), wire.StatusOK, "WRITE FUA")
	if dev.Writes() != 1 || dev.Flushes() != 1 || dev.FUAWrites() != 0 {
		t.Fatalf("upstream saw %d writes, %d flushes, %d FUA; want 1, 1, 0", dev.Writes(), dev.Flushes(), dev.FUAWrites())
	}
}

// TestUpstreamError checks that an upstream's error reply is the
// client's, and the session lives on.
func TestUpstreamError(t *testing.T) {
	exp, dev := memExport(1 << 20)
	e := newUpstreamEnv(t, newUpstreamNBD(t, exp))
	c := e.open(e.cli, "up")
	dev.InjectError(4096, 4096, nbdwire.ENOSPC)
	must(t, c.write(4096, make([]byte, 4096), 0), wire.StatusENOSPC, "WRITE on a failing range")
	dev.ClearErrors()
	must(t, c.write(4096, make([]byte, 4096), 0), wire.StatusOK, "WRITE after")
}

// TestUpstreamLost checks the reset: the upstream goes away while a
// session has a queue open; that session's next request ends it without
// a reply, the server's instance id changes, a new session waits for the
// upstream and is served once it is back, and the other export served all
// along.
func TestUpstreamLost(t *testing.T) {
	exp, dev := memExport(1 << 20)
	up := newUpstreamNBD(t, exp)
	e := newUpstreamEnv(t, up)
	c := e.open(e.cli, "up")
	must(t, c.write(0, bytes.Repeat([]byte{1}, 4096), 0), wire.StatusOK, "WRITE")
	old := e.cli.info.Instance

	up.halt()
	c.send(wire.Request{Cmd: wire.CmdFlush}, nil)
	if !c.ended(5 * time.Second) {
		t.Fatal("the session lived on after its upstream was lost")
	}
	// Another export keeps serving.
	mem := e.open(e.connect(), "mem")
	must(t, mem.write(0, make([]byte, 4096), 0), wire.StatusOK, "WRITE to the other export")

	s2 := e.connect()
	c2 := e.open(s2, "up")
	if s2.info.Instance == old {
		t.Fatal("instance id unchanged after the upstream was lost")
	}
	flushes := dev.Flushes()
	ch := c2.send(wire.Request{Cmd: wire.CmdFlush}, nil)
	time.Sleep(200 * time.Millisecond)
	up.start()
	must(t, c2.wait(ch).rep.Status, wire.StatusOK, "FLUSH once the upstream is back")
	if dev.Flushes() != flushes+1 {
		t.Fatalf("upstream saw %d flushes, want %d", dev.Flushes(), flushes+1)
	}
}

// TestUpstreamExpiry checks the zombie rule upstream: a write that waits
// for a lost upstream past its expiry fails with ETIMEDOUT and never
// reaches the upstream when it comes back.
func TestUpstreamExpiry(t *testing.T) {
	exp, dev := memExport(1 << 20)
	up := newUpstreamNBD(t, exp)
	e := newUpstreamEnv(t, up)
	c := e.open(e.cli, "up")
	must(t, c.write(0, make([]byte, 4096), 0), wire.StatusOK, "WRITE")
	up.halt()
	c.send(wire.Request{Cmd: wire.CmdFlush}, nil)
	c.ended(5 * time.Second)

	s2 := e.connect()
	c2 := e.open(s2, "up")
	writes := dev.Writes()
	clock := s2.info.Clock
	r := c2.do(wire.Request{Cmd: wire.CmdWrite, Offset: 8192, Length: 4096, Expires: clock + uint64(300*time.Millisecond)},
		bytes.Repeat([]byte("Z"), 4096))
	must(t, r.rep.Status, wire.StatusETIMEDOUT, "WRITE that expired waiting for the upstream")
	up.start()
	must(t, c2.do(wire.Request{Cmd: wire.CmdFlush}, nil).rep.Status, wire.StatusOK, "FLUSH after")
	if dev.Writes() != writes || bytes.Contains(dev.Bytes(), []byte("ZZZZ")) {
		t.Fatal("the expired write reached the upstream")
	}
}

// TestUpstreamBadReplies checks an upstream that breaks the protocol: the
// request's session ends, the error is logged, the server keeps serving
// its other export.
func TestUpstreamBadReplies(t *testing.T) {
	sock := nbdfake.Listen(t, func(c net.Conn, _ nbdwire.Request) { c.Write(bytes.Repeat([]byte{0xee}, 64)) })
	e := &env{t: t, mem: map[string]*servertest.MemBackend{"mem": servertest.NewMemBackend(1 << 20)}}
	leakCheck(t)
	e.start(&server.Config{Logger: testsupport.Logger(t), Workers: 8, Exports: []server.ExportConfig{
		{Name: "up", Upstream: "nbd+unix:///x?socket=" + sock},
		{Name: "mem", Path: "mem:mem", Backend: e.mem["mem"], Shared: true},
	}})
	c := e.open(e.cli, "up")
	c.send(wire.Request{Cmd: wire.CmdRead, Length: 4096}, nil)
	if !c.ended(5 * time.Second) {
		t.Fatal("the session lived on after its upstream sent garbage")
	}
	mem := e.open(e.connect(), "mem")
	must(t, mem.write(0, make([]byte, 4096), 0), wire.StatusOK, "WRITE to the other export")
}

func TestParseUpstream(t *testing.T) {
	for in, want := range map[string]server.UpstreamTarget{
		"nbd+unix:///vm1?socket=/run/qsd/nbd.sock": {Network: "unix", Addr: "/run/qsd/nbd.sock", Export: "vm1"},
		"nbd+unix:///?socket=/s":                   {Network: "unix", Addr: "/s", Export: ""},
		"nbd://127.0.0.1/disk":                     {Network: "tcp", Addr: "127.0.0.1:10809", Export: "disk"},
		"nbd://[::1]:10810/disk":                   {Network: "tcp", Addr: "[::1]:10810", Export: "disk"},
	} {
		got, err := server.ParseUpstream(in)
		if err != nil || got != want {
			t.Errorf("ParseUpstream(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"nbd+unix:///x", "nbd+unix://host/x?socket=/s", "nbd://", "nbd://h/x?tls=1", "http://h/x", "nbds://h/x"} {
		if _, err := server.ParseUpstream(in); err == nil {
			t.Errorf("ParseUpstream(%q) succeeded", in)
		}
	}
}

// TestUpstreamReplaced checks that an upstream export found smaller after
// a reconnect is taken for another disk: a new identity, which a client
// that reconnects sees, and requests refused.
func TestUpstreamReplaced(t *testing.T) {
	exp, _ := memExport(2 << 20)
	up := newUpstreamNBD(t, exp)
	e := newUpstreamEnv(t, up)
	c := e.open(e.cli, "up")
	was := c.info.Identity
	up.halt()
	c.send(wire.Request{Cmd: wire.CmdFlush}, nil)
	c.ended(5 * time.Second)
	smaller, _ := memExport(1 << 20)
	*exp = *smaller
	up.start()
	var now wire.Identity
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if now = identityOf(e.srv.Info(), "up"); now != was {
			break
		}
	}
	if now == was {
		t.Fatal("the export kept its identity after the upstream was replaced by a smaller one")
	}
	c2 := e.open(e.connect(), "up")
	if c2.info.Identity != now {
		t.Fatalf("a new session was told identity %v, the export has %v", c2.info.Identity, now)
	}
	must(t, c2.do(wire.Request{Cmd: wire.CmdFlush}, nil).rep.Status, wire.StatusEIO, "FLUSH on a replaced upstream")
}

func identityOf(info wire.ServerInfo, name string) wire.Identity {
	for _, x := range info.Exports {
		if x.Name == name {
			return x.Identity
		}
	}
	return wire.Identity{}
}
