package server_test

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/server/servertest"
	"github.com/dstproject/dst/wire"
	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"
)

// heldBackend blocks WRITEs at offset 0 until released, so a test can
// hold a request in progress on the backend.
type heldBackend struct {
	*servertest.MemBackend
	entered chan struct{}
	release chan struct{}
	open    func() // closes release, once
}

func (b *heldBackend) WriteAt(p []byte, off int64) (int, error) {
	if off == 0 {
		b.entered <- struct{}{}
		<-b.release
	}
	return b.MemBackend.WriteAt(p, off)
}

func newHeldEnv(t *testing.T) (*env, *heldBackend) {
	t.Helper()
	leakCheck(t)
	b := &heldBackend{MemBackend: servertest.NewMemBackend(1 << 20), entered: make(chan struct{}, 1), release: make(chan struct{})}
	var once sync.Once
	b.open = func() { once.Do(func() { close(b.release) }) }
	e := &env{t: t, mem: map[string]*servertest.MemBackend{"disk": b.MemBackend}}
	e.start(&server.Config{
		Logger:  testsupport.Logger(t),
		Workers: 4,
		Exports: []server.ExportConfig{{Name: "disk", Path: "mem:disk", Backend: b}},
	})
	t.Cleanup(b.open) // runs before the server's Close, which waits for the held write
	return e, b
}

// hello sends HELLO as session epoch of attachment id and returns the
// answer's type and body.
func hello(t *testing.T, sess *ctl, id wire.Identity, epoch uint64) (*yamux.Stream, wire.MsgType, []byte) {
	t.Helper()
	h := &wire.Hello{Version: wire.Version, Attachment: id, Epoch: epoch, Client: "test"}
	return message(t, sess, wire.MsgHello, wire.AppendHello(nil, h))
}

func TestFencing(t *testing.T) {
	e, b := newHeldEnv(t)
	id := wire.Identity{1, 2, 3}
	if _, typ, _ := hello(t, e.cli, id, 1); typ != wire.MsgServerInfo {
		t.Fatalf("epoch 1 HELLO answered with %v", typ)
	}
	old := e.open(e.cli, "disk")
	must(t, old.write(4096, bytes.Repeat([]byte{'a'}, 512), 0), wire.StatusOK, "write on epoch 1")

	// A write the backend holds: started, not finished.
	held := old.send(wire.Request{Cmd: wire.CmdWrite, Offset: 0, Length: 512}, bytes.Repeat([]byte{'o'}, 512))
	<-b.entered

	// Epoch 2 is admitted only once the held write has finished.
	s2 := e.connect()
	admitted := make(chan wire.MsgType, 1)
	go func() {
		_, typ, _, err := exchange(s2, wire.MsgHello, wire.AppendHello(nil,
			&wire.Hello{Version: wire.Version, Attachment: id, Epoch: 2, Client: "test"}))
		if err != nil {
			t.Errorf("epoch 2 HELLO: %v", err)
		}
		admitted <- typ
	}()
	select {
	case typ := <-admitted:
		t.Fatalf("epoch 2 answered (%v) while epoch 1 had a write in progress", typ)
	case <-time.After(200 * time.Millisecond):
	}
	b.open()
	if typ := <-admitted; typ != wire.MsgServerInfo {
		t.Fatalf("epoch 2 HELLO answered with %v", typ)
	}
	// The started write completed; whether its reply made it out before
	// the fence closed the session does not matter.
	select {
	case <-held:
	case <-old.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("epoch 1 neither answered nor ended")
	}

	// The fenced session starts nothing more, and is ended.
	if !old.ended(5 * time.Second) {
		t.Fatal("fenced session's stream still open")
	}
	cur := e.open(s2, "disk")
	got, st := cur.read(0, 512)
	must(t, st, wire.StatusOK, "read on epoch 2")
	if !bytes.Equal(got, bytes.Repeat([]byte{'o'}, 512)) {
		t.Fatal("the write started before the fence was lost")
	}

	// A stale epoch is refused; another attachment is not affected.
	s3 := e.connect()
	_, typ, body := hello(t, s3, id, 1)
	if typ != wire.MsgError {
		t.Fatalf("stale epoch answered with %v", typ)
	}
	if m, err := wire.DecodeError(body); err != nil || m.Status != wire.StatusESTALE {
		t.Fatalf("stale epoch: %+v, %v; want ESTALE", m, err)
	}
	s4 := e.connect()
	if _, typ, _ := hello(t, s4, wire.Identity{9}, 1); typ != wire.MsgServerInfo {
		t.Fatalf("other attachment answered with %v", typ)
	}
	must(t, cur.write(8192, make([]byte, 512), 0), wire.StatusOK, "epoch 2 after another attachment came")
}

func TestExpiredRequestNotApplied(t *testing.T) {
	e := newEnv(t)
	_, typ, body := hello(t, e.cli, wire.Identity{7}, 1)
	if typ != wire.MsgServerInfo {
		t.Fatalf("HELLO answered with %v", typ)
	}
	info, err := wire.DecodeServerInfo(body)
	if err != nil || info.Clock == 0 {
		t.Fatalf("SERVER_INFO %+v, %v: want a clock", info, err)
	}
	c := e.open(e.cli, "disk")
	p := bytes.Repeat([]byte{'x'}, 512)
	past := wire.Request{Cmd: wire.CmdWrite, Offset: 0, Length: 512, Expires: info.Clock}
	must(t, c.do(past, p).rep.Status, wire.StatusETIMEDOUT, "write past its expiry")
	if got, _ := c.read(0, 512); bytes.Equal(got, p) {
		t.Fatal("an expired write was applied")
	}
	future := past
	future.Expires = info.Clock + uint64(time.Minute)
	must(t, c.do(future, p).rep.Status, wire.StatusOK, "write before its expiry")
	if got, _ := c.read(0, 512); !bytes.Equal(got, p) {
		t.Fatal("write before its expiry not applied")
	}
}

func TestPing(t *testing.T) {
	e := newEnv(t)
	st, typ, body := hello(t, e.cli, wire.Identity{}, 0)
	if typ != wire.MsgServerInfo {
		t.Fatalf("HELLO answered with %v", typ)
	}
	info, _ := wire.DecodeServerInfo(body)
	for seq := uint64(1); seq <= 3; seq++ {
		if _, err := st.Write(wire.AppendMessage(nil, wire.MsgPing, wire.AppendPing(nil, &wire.Ping{Seq: seq}))); err != nil {
			t.Fatal(err)
		}
		typ, body, err := wire.ReadMessage(st)
		if err != nil || typ != wire.MsgPong {
			t.Fatalf("PING answered with %v, %v", typ, err)
		}
		p, err := wire.DecodePong(body)
		if err != nil || p.Seq != seq || p.Clock < info.Clock {
			t.Fatalf("PONG %+v, %v; want seq %d, clock ≥ %d", p, err, seq, info.Clock)
		}
	}
}

// TestServerClock checks the cached clock against CLOCK_BOOTTIME read
// directly, and that it never goes backwards.
func TestServerClock(t *testing.T) {
	var prev uint64
	for i := 0; i < 2000; i++ {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
			t.Fatal(err)
		}
		before := uint64(ts.Nano())
		c := server.ServerClock()
		if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
			t.Fatal(err)
		}
		after := uint64(ts.Nano())
		// The offset was measured with a reading of its own: allow for
		// the time between that reading and time.Now.
		if c+uint64(time.Millisecond) < before || c > after+uint64(time.Millisecond) {
			t.Fatalf("clock %d outside [%d, %d]", c, before, after)
		}
		if c < prev {
			t.Fatalf("clock went back: %d after %d", c, prev)
		}
		prev = c
	}
}

// gatedBackend holds every WRITE until released, and records which
// offsets reached it.
type gatedBackend struct {
	*servertest.MemBackend
	entered chan int64
	release chan struct{}
}

func (b *gatedBackend) WriteAt(p []byte, off int64) (int, error) {
	b.entered <- off
	<-b.release
	return b.MemBackend.WriteAt(p, off)
}

// TestRevocationFencesQueuedWrites: a key removed by a reload (SIGHUP)
// gets nothing more applied, not even the writes the server had already
// read and queued for its workers; the writes already on the backend
// finish, and SetAuthorized returns only after them.
func TestRevocationFencesQueuedWrites(t *testing.T) {
	const workers, writes = 4, 8
	b := &gatedBackend{MemBackend: servertest.NewMemBackend(1 << 20), entered: make(chan int64, writes),
		release: make(chan struct{})}
	e := &env{t: t, mem: map[string]*servertest.MemBackend{"disk": b.MemBackend}}
	leakCheck(t)
	e.start(&server.Config{Logger: testsupport.Logger(t), Workers: workers,
		Exports: []server.ExportConfig{{Name: "disk", Path: "mem:disk", Backend: b}}})
	released := false
	t.Cleanup(func() {
		if !released {
			close(b.release)
		}
	})
	c := e.openRaw(e.cli, "disk")
	go c.readLoop()
	// One write of eight requests: the reader hands them to the workers,
	// four of which take one each and stay on the backend; the rest wait.
	batch := make([]byte, 0, writes*(wire.RequestSize+512))
	for i := range writes {
		p := bytes.Repeat([]byte{byte('a' + i)}, 512)
		r := wire.Request{Cmd: wire.CmdWrite, ID: uint64(i + 1), Offset: uint64(i) * 4096, Length: 512,
			Checksum: wire.Checksum(p)}
		hdr := make([]byte, wire.RequestSize)
		r.Encode(hdr)
		batch = append(append(batch, hdr...), p...)
	}
	go c.st.Write(batch)
	started := map[int64]bool{}
	for range workers {
		started[<-b.entered] = true
	}
	revoked := make(chan struct{})
	go func() {
		e.srv.SetAuthorized(&crypto.AuthorizedKeys{})
		close(revoked)
	}()
	select {
	case <-revoked:
		t.Fatal("SetAuthorized returned while the key's writes were on the backend")
	case <-time.After(200 * time.Millisecond):
	}
	close(b.release)
	released = true
	select {
	case <-revoked:
	case <-time.After(5 * time.Second):
		t.Fatal("SetAuthorized did not return")
	}
	time.Sleep(100 * time.Millisecond) // anything that would still start, starts now
	for i := range writes {
		off := int64(i) * 4096
		got := make([]byte, 512)
		b.MemBackend.ReadAt(got, off)
		applied := got[0] != 0
		if applied != started[off] {
			t.Errorf("write at %d: applied %v, but on the backend before the revocation %v", off, applied, started[off])
		}
	}
}
