package server_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/server/servertest"
	"github.com/dstproject/dst/wire"
	"github.com/hashicorp/yamux"
)

func TestHello(t *testing.T) {
	e := newEnv(t, exportSpec{name: "a", size: 1 << 20, leased: true}, exportSpec{name: "b", size: 2 << 20, readOnly: true, leased: true})
	_, typ, body := message(t, e.cli, wire.MsgHello, wire.AppendHello(nil, &wire.Hello{Version: wire.Version, Client: "test"}))
	if typ != wire.MsgServerInfo {
		t.Fatalf("HELLO answered with %v", typ)
	}
	info, err := wire.DecodeServerInfo(body)
	if err != nil {
		t.Fatal(err)
	}
	if info.Version != wire.Version || info.Instance.IsZero() || info.Server == "" {
		t.Fatalf("bad server info %+v", info)
	}
	if len(info.Exports) != 2 || info.Exports[0].Name != "a" || info.Exports[1].Name != "b" {
		t.Fatalf("exports %+v", info.Exports)
	}
	a, b := info.Exports[0], info.Exports[1]
	if a.Size != 1<<20 || a.LogicalBlock != 512 || a.PhysicalBlock != 4096 || a.MaxTransfer != wire.MaxPayload {
		t.Errorf("export a: %+v", a)
	}
	wantA := wire.ExportFlush | wire.ExportFUA | wire.ExportMultiConn | wire.ExportWriteZeroes | wire.ExportTrim
	if a.Flags != wantA {
		t.Errorf("export a flags %v, want %v", a.Flags, wantA)
	}
	wantB := wire.ExportFlush | wire.ExportFUA | wire.ExportMultiConn | wire.ExportReadOnly
	if b.Flags != wantB {
		t.Errorf("export b flags %v, want %v", b.Flags, wantB)
	}
	if a.Identity != e.mem["a"].ID || b.Identity != e.mem["b"].ID {
		t.Error("identities differ from the backends'")
	}
	if got := e.srv.Info(); got.Instance != info.Instance {
		t.Error("Info and SERVER_INFO disagree on the instance")
	}
}

func TestInstanceChangesPerStart(t *testing.T) {
	m := servertest.NewMemBackend(1 << 20)
	var ids [2]wire.Identity
	for i := range ids {
		srv, err := server.New(&server.Config{Logger: testsupport.Logger(t),
			Exports: []server.ExportConfig{{Name: "d", Backend: m}}})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = srv.Info().Instance
		if got := srv.Info().Exports[0].Identity; got != m.ID {
			t.Errorf("start %d: export identity %v, want %v", i, got, m.ID)
		}
		srv.Close()
	}
	if ids[0] == ids[1] {
		t.Fatal("two starts share an instance id")
	}
}

func TestHelloWrongVersion(t *testing.T) {
	e := newEnv(t)
	_, typ, body := message(t, e.cli, wire.MsgHello, wire.AppendHello(nil, &wire.Hello{Version: wire.Version + 1}))
	if typ != wire.MsgError {
		t.Fatalf("got %v, want ERROR", typ)
	}
	em, err := wire.DecodeError(body)
	if err != nil {
		t.Fatal(err)
	}
	if em.Status != wire.StatusEINVAL || !strings.Contains(em.Message, "version") {
		t.Fatalf("error %+v", em)
	}
}

func TestQueueUnknownExport(t *testing.T) {
	e := newEnv(t, exportSpec{name: "a", size: 1 << 20}, exportSpec{name: "b", size: 1 << 20})
	conn, typ, body := e.queue(e.key, e.cli.queueMsg("nope"))
	if typ != wire.MsgError {
		t.Fatalf("got %v, want ERROR", typ)
	}
	em, err := wire.DecodeError(body)
	if err != nil {
		t.Fatal(err)
	}
	if em.Status != wire.StatusEINVAL || em.Message != `no export named "nope" (exports: a, b)` {
		t.Fatalf("error %+v", em)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("connection still open after ERROR: %d, %v", n, err)
	}
	// The session is fine.
	c := e.open(e.cli, "a")
	if _, st := c.read(0, 512); st != wire.StatusOK {
		t.Fatal(st)
	}
}

// TestQueueBinding: a queue connection is served only when it presents
// the token of a live session of the same client key, with that session's
// attachment and epoch.
func TestQueueBinding(t *testing.T) {
	e := newEnv(t)
	id := wire.Identity{7}
	if _, typ, _ := hello(t, e.cli, id, 3); typ != wire.MsgServerInfo {
		t.Fatalf("HELLO answered with %v", typ)
	}
	good := e.cli.queueMsg("disk")
	other := e.connect()
	if _, typ, _ := hello(t, other, wire.Identity{8}, 1); typ != wire.MsgServerInfo {
		t.Fatalf("HELLO answered with %v", typ)
	}
	stranger, _ := crypto.GeneratePrivateKey()
	refused := func(what string, key crypto.PrivateKey, q wire.Queue) {
		t.Helper()
		_, typ, body := e.queue(key, q)
		if typ != wire.MsgError {
			t.Fatalf("%s: answered %v, want ERROR", what, typ)
		}
		if m, err := wire.DecodeError(body); err != nil || m.Status != wire.StatusESTALE {
			t.Fatalf("%s: %+v, %v; want ESTALE", what, m, err)
		}
	}
	q := good
	q.Attachment = wire.Identity{8}
	refused("another attachment's id with this session's token", e.key, q)
	q = good
	q.Epoch = 2
	refused("an older epoch", e.key, q)
	q = good
	q.Session = other.queueMsg("disk").Session
	refused("another attachment's token", e.key, q)
	q = good
	q.Session = wire.Identity{1, 2, 3}
	refused("an unknown token", e.key, q)
	refused("another client key", stranger, good)

	c := e.open(e.cli, "disk")
	if _, st := c.read(0, 512); st != wire.StatusOK {
		t.Fatal(st)
	}
	// Epoch 4 fences epoch 3: its queue is closed, and a new queue of
	// epoch 3 is refused even with its old token.
	s2 := e.connect()
	if _, typ, _ := hello(t, s2, id, 4); typ != wire.MsgServerInfo {
		t.Fatalf("epoch 4 HELLO answered with %v", typ)
	}
	if !c.ended(5 * time.Second) {
		t.Fatal("the fenced epoch's queue is still open")
	}
	refused("a fenced epoch", e.key, good)
	if _, st := e.open(s2, "disk").read(0, 512); st != wire.StatusOK {
		t.Fatal(st)
	}
}

func TestFirstMessageNotHello(t *testing.T) {
	e := newEnv(t)
	st, err := e.cli.mux.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	st.Write(wire.AppendMessage(nil, wire.MsgOpened, nil))
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := st.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("stream still open: %d, %v", n, err)
	}
	// Garbage as a first message closes only that stream too.
	st2, _ := e.cli.mux.OpenStream()
	st2.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	st2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := st2.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("stream still open: %d, %v", n, err)
	}
	c := e.open(e.cli, "disk")
	if _, st := c.read(0, 4096); st != wire.StatusOK {
		t.Fatal(st)
	}
}

// TestFirstMessageOfConnection: a connection that opens with anything but
// CONTROL or QUEUE, or with another version's, is closed; others go on.
func TestFirstMessageOfConnection(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name  string
		first []byte
		error bool // answered with ERROR before the close
	}{
		{"HELLO", wire.AppendMessage(nil, wire.MsgHello, wire.AppendHello(nil, &wire.Hello{Version: wire.Version})), false},
		{"garbage", []byte("GET / HTTP/1.1\r\n\r\n"), false},
		{"a yamux frame (a version 2 client)", []byte{0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0}, false},
		{"CONTROL of version 2", wire.AppendMessage(nil, wire.MsgControl, wire.AppendControl(nil, &wire.Control{Version: 2})), true},
		{"oversized", wire.AppendMessage(nil, wire.MsgQueue, make([]byte, 4096)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := e.dialConn(e.key)
			go c.Write(tc.first)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			typ, _, err := wire.ReadMessage(c)
			if tc.error {
				if err != nil || typ != wire.MsgError {
					t.Fatalf("answered %v, %v; want ERROR", typ, err)
				}
				_, _, err = wire.ReadMessage(c)
			}
			if err == nil {
				t.Fatalf("connection still open")
			}
		})
	}
	if _, st := e.open(e.cli, "disk").read(0, 4096); st != wire.StatusOK {
		t.Fatal(st)
	}
}

// TestConcurrentRandom runs writers on several streams at once, each on
// its own blocks, then checks every block through reads on other streams
// and against the backend.
func TestConcurrentRandom(t *testing.T) {
	const (
		size    = 8 << 20
		streams = 4
		perStr  = 8 // goroutines per stream
		block   = 4096
		rounds  = 3
	)
	e := newEnv(t, exportSpec{name: "disk", size: size})
	clients := make([]*client, streams)
	for i := range clients {
		clients[i] = e.open(e.cli, "disk")
	}
	model := make([]byte, size)
	var wg sync.WaitGroup
	for g := range streams * perStr {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[g%streams]
			var seed [32]byte
			seed[0] = byte(g)
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			fill := rand.NewChaCha8(seed)
			// Goroutine g owns the blocks congruent to g. Requests
			// complete in any order, so each round writes a block at
			// most once.
			nblocks := size / block / (streams * perStr)
			for range rounds {
				var pending []chan result
				for _, k := range rng.Perm(nblocks)[:nblocks/2] {
					b := (k*(streams*perStr) + g) * block
					p := make([]byte, block)
					fill.Read(p)
					copy(model[b:], p)
					pending = append(pending, c.send(wire.Request{Cmd: wire.CmdWrite, Offset: uint64(b), Length: block}, p))
				}
				for _, ch := range pending {
					if r := c.wait(ch); r.rep.Status != wire.StatusOK {
						t.Errorf("write: %v", r.rep.Status)
					}
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// Read everything back, 64 KiB at a time, spread over the streams,
	// all requests in flight at once.
	const chunk = 64 << 10
	chans := make([]chan result, size/chunk)
	for i := range chans {
		chans[i] = clients[i%streams].send(wire.Request{Cmd: wire.CmdRead, Offset: uint64(i * chunk), Length: chunk}, nil)
	}
	for i, ch := range chans {
		r := clients[i%streams].wait(ch)
		if r.rep.Status != wire.StatusOK || wire.Checksum(r.data) != r.rep.Checksum {
			t.Fatalf("read %d: %v", i, r.rep.Status)
		}
		if !bytes.Equal(r.data, model[i*chunk:(i+1)*chunk]) {
			t.Fatalf("chunk %d differs", i)
		}
	}
	if !bytes.Equal(e.mem["disk"].Bytes(), model) {
		t.Fatal("backend contents differ from the model")
	}
}

func TestBadChecksum(t *testing.T) {
	e := newEnv(t)
	c := e.open(e.cli, "disk")
	p := bytes.Repeat([]byte{0xaa}, 4096)
	must(t, c.write(0, p, 0), wire.StatusOK, "write")
	q := bytes.Repeat([]byte{0x55}, 4096)
	r := c.do(wire.Request{Cmd: wire.CmdWrite, Offset: 0, Length: 4096, Checksum: wire.Checksum(q) ^ 1}, q)
	must(t, r.rep.Status, wire.StatusBadChecksum, "corrupted write")
	got, st := c.read(0, 4096)
	must(t, st, wire.StatusOK, "read")
	if !bytes.Equal(got, p) {
		t.Fatal("corrupted write was applied")
	}
	if n := e.mem["disk"].Counts().Writes; n != 1 {
		t.Fatalf("backend saw %d writes, want 1", n)
	}
}

func TestRejections(t *testing.T) {
	const size = 1 << 20
	e := newEnv(t, exportSpec{name: "rw", size: size}, exportSpec{name: "ro", size: size, readOnly: true})
	rw, ro := e.open(e.cli, "rw"), e.open(e.cli, "ro")
	block := make([]byte, 4096)
	tests := []struct {
		name string
		c    *client
		req  wire.Request
		data []byte
		want wire.Status
	}{
		{"read past end", rw, wire.Request{Cmd: wire.CmdRead, Offset: size - 512, Length: 1024}, nil, wire.StatusEINVAL},
		{"read at end", rw, wire.Request{Cmd: wire.CmdRead, Offset: size, Length: 512}, nil, wire.StatusEINVAL},
		{"read last block", rw, wire.Request{Cmd: wire.CmdRead, Offset: size - 512, Length: 512}, nil, wire.StatusOK},
		{"read oversized", rw, wire.Request{Cmd: wire.CmdRead, Offset: 0, Length: wire.MaxPayload + 512}, nil, wire.StatusEINVAL},
		{"write past end", rw, wire.Request{Cmd: wire.CmdWrite, Offset: size - 512, Length: 4096}, block, wire.StatusENOSPC},
		{"write zeroes past end", rw, wire.Request{Cmd: wire.CmdWriteZeroes, Offset: size, Length: 512}, nil, wire.StatusENOSPC},
		{"trim past end", rw, wire.Request{Cmd: wire.CmdTrim, Offset: size - 512, Length: 1024}, nil, wire.StatusEINVAL},
		{"read-only write", ro, wire.Request{Cmd: wire.CmdWrite, Offset: 0, Length: 4096}, block, wire.StatusEPERM},
		{"read-only trim", ro, wire.Request{Cmd: wire.CmdTrim, Offset: 0, Length: 4096}, nil, wire.StatusEPERM},
		{"read-only write zeroes", ro, wire.Request{Cmd: wire.CmdWriteZeroes, Offset: 0, Length: 4096}, nil, wire.StatusEPERM},
		{"read-only flush", ro, wire.Request{Cmd: wire.CmdFlush}, nil, wire.StatusOK},
		{"read-only read", ro, wire.Request{Cmd: wire.CmdRead, Offset: 0, Length: 4096}, nil, wire.StatusOK},
	}
	for _, tt := range tests {
		r := tt.c.do(tt.req, tt.data)
		must(t, r.rep.Status, tt.want, tt.name)
		// The stream keeps working.
		if _, st := tt.c.read(4096, 4096); st != wire.StatusOK {
			t.Fatalf("after %s: read %v", tt.name, st)
		}
	}
	if c := e.mem["ro"].Counts(); c.Writes+c.FUAs+c.Trims+c.WriteZeroes+c.Syncs != 0 {
		t.Fatalf("read-only backend was modified or synced: %+v", c)
	}
	if c := e.mem["rw"].Counts(); c.Writes+c.Trims+c.WriteZeroes != 0 {
		t.Fatalf("rejected requests reached the backend: %+v", c)
	}
}

func TestMalformedClosesOnlyThatStream(t *testing.T) {
	e := newEnv(t)
	good, bad := e.open(e.cli, "disk"), e.open(e.cli, "disk")
	other := e.open(e.connect(), "disk") // another client
	var hdr [wire.RequestSize]byte
	(&wire.Request{Cmd: wire.CmdRead, Length: 512}).Encode(hdr[:])
	binary.BigEndian.PutUint16(hdr[2:], 1) // reserved bits set
	bad.wmu.Lock()
	bad.st.Write(hdr[:])
	bad.wmu.Unlock()
	if !bad.ended(5 * time.Second) {
		t.Fatalf("stream with a malformed request not closed: %v", bad.err)
	}
	for _, c := range []*client{good, other} {
		if _, st := c.read(0, 4096); st != wire.StatusOK {
			t.Fatal(st)
		}
	}
	// And new streams still open.
	if _, st := e.open(e.cli, "disk").read(0, 512); st != wire.StatusOK {
		t.Fatal(st)
	}
}

func TestBackendErrors(t *testing.T) {
	e := newEnv(t)
	m := e.mem["disk"]
	c := e.open(e.cli, "disk")
	p := bytes.Repeat([]byte{7}, 4096)
	for _, tt := range []struct {
		op  servertest.Op
		req wire.Request
	}{
		{servertest.OpRead, wire.Request{Cmd: wire.CmdRead, Length: 4096}},
		{servertest.OpWrite, wire.Request{Cmd: wire.CmdWrite, Length: 4096}},
		{servertest.OpWriteFUA, wire.Request{Cmd: wire.CmdWrite, Flags: wire.FlagFUA, Length: 4096}},
		{servertest.OpSync, wire.Request{Cmd: wire.CmdFlush}},
		{servertest.OpTrim, wire.Request{Cmd: wire.CmdTrim, Length: 4096}},
		{servertest.OpWriteZeroes, wire.Request{Cmd: wire.CmdWriteZeroes, Length: 4096}},
	} {
		m.Fail(tt.op)
		var data []byte
		if tt.req.Cmd == wire.CmdWrite {
			data = p
		}
		must(t, c.do(tt.req, data).rep.Status, wire.StatusEIO, tt.op.String())
		m.SetFault(nil)
		must(t, c.do(tt.req, data).rep.Status, wire.StatusOK, tt.op.String()+" after the fault")
	}
}

func TestFlushAndFUA(t *testing.T) {
	e := newEnv(t)
	m := e.mem["disk"]
	c := e.open(e.cli, "disk")
	p := make([]byte, 4096)
	must(t, c.write(0, p, wire.FlagFUA), wire.StatusOK, "FUA write")
	must(t, c.write(0, p, 0), wire.StatusOK, "write")
	must(t, c.do(wire.Request{Cmd: wire.CmdFlush}, nil).rep.Status, wire.StatusOK, "flush")
	must(t, c.do(wire.Request{Cmd: wire.CmdWriteZeroes, Flags: wire.FlagFUA | wire.FlagNoHole, Length: 4096}, nil).rep.Status, wire.StatusOK, "FUA zero")
	must(t, c.do(wire.Request{Cmd: wire.CmdTrim, Flags: wire.FlagFUA, Length: 4096}, nil).rep.Status, wire.StatusOK, "FUA trim")
	got := m.Counts()
	want := servertest.Counts{Writes: 1, FUAs: 1, Syncs: 3, Trims: 1, WriteZeroes: 1}
	if got != want {
		t.Fatalf("counts %+v, want %+v", got, want)
	}
}

func TestWriteZeroesAndTrimZero(t *testing.T) {
	e := newEnv(t)
	c := e.open(e.cli, "disk")
	p := bytes.Repeat([]byte{0xff}, 3*4096)
	must(t, c.write(0, p, 0), wire.StatusOK, "write")
	must(t, c.do(wire.Request{Cmd: wire.CmdWriteZeroes, Offset: 4096, Length: 4096}, nil).rep.Status, wire.StatusOK, "zero")
	got, _ := c.read(0, 3*4096)
	want := append(append(bytes.Repeat([]byte{0xff}, 4096), make([]byte, 4096)...), bytes.Repeat([]byte{0xff}, 4096)...)
	if !bytes.Equal(got, want) {
		t.Fatal("WRITE_ZEROES did not zero exactly its range")
	}
}

func TestDisconnect(t *testing.T) {
	e := newEnv(t)
	c := e.open(e.cli, "disk")
	var chans []chan result
	for i := range 50 {
		chans = append(chans, c.send(wire.Request{Cmd: wire.CmdWrite, Offset: uint64(i) * 4096, Length: 4096},
			bytes.Repeat([]byte{byte(i + 1)}, 4096)))
	}
	disc := c.send(wire.Request{Cmd: wire.CmdDisconnect}, nil)
	for _, ch := range chans {
		if r := c.wait(ch); r.rep.Status != wire.StatusOK {
			t.Fatal(r.rep.Status)
		}
	}
	if r := c.wait(disc); r.rep.Cmd != wire.CmdDisconnect || r.rep.Status != wire.StatusOK {
		t.Fatalf("DISCONNECT reply %+v", r.rep)
	}
	if !c.ended(5 * time.Second) {
		t.Fatalf("stream not closed after DISCONNECT: %v", c.err)
	}
	data := e.mem["disk"].Bytes()
	for i := range 50 {
		if data[i*4096] != byte(i+1) {
			t.Fatalf("write %d lost", i)
		}
	}
}

// TestStalledClientDoesNotBlockOthers has one client flood READs without
// reading replies; another client's requests must still be served, as
// fast as when the server is idle, as no worker ever blocks on a client.
func TestStalledClientDoesNotBlockOthers(t *testing.T) {
	e := newEnv(t)
	e.tcp = true // net.Pipe has no socket buffer, and no way to write without blocking
	other := e.open(e.connect(), "disk")
	latency := func() time.Duration {
		var ds []time.Duration
		for range 200 {
			t0 := time.Now()
			if _, st := other.read(0, 64<<10); st != wire.StatusOK {
				t.Fatal(st)
			}
			ds = append(ds, time.Since(t0))
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	idle := latency()

	// The stalled client sends 1 MiB READs, a thousand headers a write,
	// far more than socket buffers hold.
	const batches, perBatch = 1000, 1000
	stalled := e.openRaw(e.cli, "disk")
	var sent atomic.Int64
	go func() {
		b := make([]byte, perBatch*wire.RequestSize)
		for i := range batches {
			for j := range perBatch {
				r := wire.Request{Cmd: wire.CmdRead, ID: uint64(i*perBatch + j), Length: 1 << 20}
				r.Encode(b[j*wire.RequestSize:])
			}
			if _, err := stalled.st.Write(b); err != nil {
				return
			}
			sent.Add(perBatch)
		}
	}()
	// The stall has happened when the server stops taking requests: its
	// in-flight budget is spent on replies nobody reads.
	var n int64
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		m := sent.Load()
		if m == n && m > 0 {
			break
		}
		if m == batches*perBatch || time.Now().After(deadline) {
			t.Fatalf("the stalled client sent %d of %d requests: the server never pushed back", m, batches*perBatch)
		}
		n = m
	}
	// The best of three medians, so one noisy moment on a shared machine
	// (CI runs packages in parallel) does not decide. A blocked server
	// would not answer at all (the reads fail after 10 s), or take the
	// stalled client's replies' time; noise under -race on 2 CPUs has
	// reached 2.3 times the idle median, so the bound is 5 times.
	const bound = 5
	busy := latency()
	for i := 0; i < 2 && busy > bound*idle; i++ {
		busy = min(busy, latency())
	}
	t.Logf("median READ 64 KiB latency of another client: idle %v, while one client is stalled after %d requests %v",
		idle, n, busy)
	if busy > bound*idle {
		t.Fatalf("another client's median latency went from %v to %v while one client was stalled", idle, busy)
	}
}

// TestLargeTransfers moves a maximum-size payload each way.
func TestLargeTransfers(t *testing.T) {
	const size = 64 << 20
	e := newEnv(t, exportSpec{name: "disk", size: size})
	c := e.open(e.cli, "disk")
	// Random 4 KiB blocks, each stamped with its index, so a misplaced
	// block shows; cheaper than 32 MiB of random bytes under -race.
	blk := make([]byte, 4096)
	rand.NewChaCha8([32]byte{1}).Read(blk)
	big := bytes.Repeat(blk, wire.MaxPayload/4096)
	for i := 0; i < len(big); i += 4096 {
		binary.BigEndian.PutUint32(big[i:], uint32(i))
	}
	must(t, c.write(size-wire.MaxPayload, big, 0), wire.StatusOK, "32 MiB write")
	got, st := c.read(size-wire.MaxPayload, wire.MaxPayload)
	must(t, st, wire.StatusOK, "32 MiB read")
	if !bytes.Equal(got, big) {
		t.Fatal("32 MiB round trip differs")
	}
}

// TestSessionsPerKey: a key's sessions beyond MaxSessionsPerKey are
// refused at HELLO with a message naming the bound, the key's other
// sessions keep working, and a session that ends makes room.
func TestSessionsPerKey(t *testing.T) {
	leakCheck(t)
	e := &env{t: t, mem: map[string]*servertest.MemBackend{"disk": servertest.NewMemBackend(1 << 20)}}
	e.start(&server.Config{Logger: testsupport.Logger(t), Workers: 4, MaxSessionsPerKey: 3,
		Exports: []server.ExportConfig{{Name: "disk", Path: "mem:disk", Backend: e.mem["disk"]}}})
	sessions := []*ctl{e.cli, e.connect(), e.connect()}
	for i, c := range sessions {
		if _, typ, _ := hello(t, c, wire.Identity{byte(i + 1)}, 1); typ != wire.MsgServerInfo {
			t.Fatalf("session %d of 3: HELLO answered with %v", i+1, typ)
		}
	}
	over := e.connect()
	_, typ, body := hello(t, over, wire.Identity{9}, 1)
	if typ != wire.MsgError {
		t.Fatalf("a fourth session of the key: HELLO answered with %v, want ERROR", typ)
	}
	m, err := wire.DecodeError(body)
	if err != nil || m.Status != wire.StatusENOMEM || !strings.Contains(m.Message, "max_sessions_per_key") ||
		!strings.Contains(m.Message, "allows 3") {
		t.Fatalf("refusal %+v, %v; want ENOMEM naming max_sessions_per_key and its value", m, err)
	}
	c := e.open(e.cli, "disk")
	if _, st := c.read(0, 512); st != wire.StatusOK {
		t.Fatalf("the key's first session, after the refusal: read %v", st)
	}
	// The refused session is closed by the server, and one ended by its
	// client makes room for another.
	select {
	case <-over.mux.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("the refused session is still open")
	}
	sessions[2].mux.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		again := e.connect()
		_, typ, _ := hello(t, again, wire.Identity{10}, 1)
		if typ == wire.MsgServerInfo {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no room for a new session after one of the key's sessions ended")
		}
		again.mux.Close()
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKeyBudget: payload buffers announced by WRITE headers whose bodies
// never come are bounded by the key's budget across all its sessions, not
// only by each session's: more sessions do not buy a key more memory.
func TestKeyBudget(t *testing.T) {
	defer server.SetKeyBytes(16 << 20)()
	e := newEnv(t, exportSpec{name: "disk", size: 4 << 20})
	sessions := []*ctl{e.cli, e.connect()}
	for i, c := range sessions {
		if _, typ, _ := hello(t, c, wire.Identity{byte(i + 1)}, 1); typ != wire.MsgServerInfo {
			t.Fatalf("HELLO answered with %v", typ)
		}
	}
	heap := func() int64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	before := heap()
	for _, s := range sessions {
		for range 8 {
			// A 3 MiB WRITE's header alone: the server sets a buffer
			// aside for the body and waits for it.
			e.openRaw(s, "disk").send(wire.Request{Cmd: wire.CmdWrite, Length: 3 << 20}, nil)
		}
	}
	time.Sleep(500 * time.Millisecond) // let every reader get as far as it can
	grown := heap() - before
	t.Logf("heap grew %d MiB for 16 announced 3 MiB bodies, key budget 16 MiB", grown>>20)
	if grown > 40<<20 {
		t.Fatalf("heap grew %d MiB: announced bodies beyond the key's 16 MiB budget were allocated", grown>>20)
	}
}

// TestHangUpStartsNothingMore: a client queues some 320 KB of 1 MiB READ
// headers on a queue connection, reading the replies, then hangs up its
// control session. What it had queued is not run afterwards (the server's
// CPU time stays small), and the server shuts down at once.
func TestHangUpStartsNothingMore(t *testing.T) {
	e := newEnv(t, exportSpec{name: "disk", size: 64 << 20})
	e.tcp = true // the kernel buffers what the server has not read yet
	c := e.openRaw(e.cli, "disk")
	go io.Copy(io.Discard, c.st)
	var hdrs []byte
	for i := range 10000 {
		r := wire.Request{Cmd: wire.CmdRead, ID: uint64(i + 1), Offset: uint64(i%64) << 20, Length: 1 << 20}
		hdrs = append(hdrs, make([]byte, wire.RequestSize)...)
		r.Encode(hdrs[len(hdrs)-wire.RequestSize:])
	}
	go c.st.Write(hdrs) // ends when the server closes the connection
	time.Sleep(200 * time.Millisecond)
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	before := cpu()
	e.cli.mux.Close()
	time.Sleep(time.Second)
	start := time.Now()
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	took, used := time.Since(start), cpu()-before
	t.Logf("after the hang-up: %v of CPU; Close took %v", used, took)
	if took > 3*time.Second {
		t.Errorf("Close took %v after the client hung up", took)
	}
	// What was queued is up to 10 GB of copies and checksums.
	if used > 500*time.Millisecond {
		t.Errorf("%v of CPU in the second after the hang-up: the server ran what the client had queued", used)
	}
	c.st.Close()
}

// TestControlMessageBound: a control stream's messages are small (HELLO,
// PING), so a header announcing a large body is refused at once, before
// anything is allocated for it. Without the bound, every stream of every
// session of a key could hold a 1 MiB buffer while its body never came.
func TestControlMessageBound(t *testing.T) {
	e := newEnv(t, exportSpec{name: "disk", size: 1 << 20})
	heap := func() int64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	sessions := []*ctl{e.cli, e.connect(), e.connect(), e.connect()}
	before := heap()
	var streams []*yamux.Stream
	for _, s := range sessions {
		for range 15 {
			st, err := s.mux.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			// A first message announcing a 1 MiB HELLO, and two bytes of it.
			hdr := wire.AppendMessage(nil, wire.MsgHello, nil)
			binary.BigEndian.PutUint32(hdr[4:], wire.MaxMessage)
			st.Write(append(hdr, 0, 3))
			streams = append(streams, st)
		}
	}
	time.Sleep(300 * time.Millisecond) // let every stream's reader get as far as it can
	grown := heap() - before
	t.Logf("heap grew %d KiB for %d streams announcing 1 MiB first messages", grown>>10, len(streams))
	if grown > 8<<20 {
		t.Errorf("heap grew %d MiB: announced control message bodies were allocated", grown>>20)
	}
	for i, st := range streams {
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := st.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("stream %d announcing a 1 MiB HELLO: read %d, %v; want it closed by the server", i, n, err)
		}
	}
	// After HELLO, a PING announcing a large body ends the control stream too.
	st, typ, _ := hello(t, e.cli, wire.Identity{1}, 1)
	if typ != wire.MsgServerInfo {
		t.Fatalf("HELLO answered with %v", typ)
	}
	hdr := wire.AppendMessage(nil, wire.MsgPing, nil)
	binary.BigEndian.PutUint32(hdr[4:], wire.MaxMessage)
	st.Write(hdr)
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := st.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("control stream after a PING announcing 1 MiB: read %d, %v; want it closed", n, err)
	}
}

// TestResizeEvents: a grown export is in the SERVER_INFO of new sessions
// and in an EVENT on the control stream of sessions whose HELLO asked for
// events, after their SERVER_INFO; a session that did not ask gets only
// PONGs, as a client that predates events expects. A shrink is not
// served.
func TestResizeEvents(t *testing.T) {
	e := newEnvConfig(t, &server.Config{SizeCheck: -1}, exportSpec{name: "disk", size: 1 << 20})
	hello := func(c *ctl, f wire.HelloFlags) *yamux.Stream {
		st, typ, _ := message(t, c, wire.MsgHello, wire.AppendHello(nil, &wire.Hello{Version: wire.Version, Flags: f, Client: "t"}))
		if typ != wire.MsgServerInfo {
			t.Fatalf("HELLO answered with %v", typ)
		}
		return st
	}
	withEvents, without := hello(e.cli, wire.HelloEvents), hello(e.connect(), 0)

	e.mem["disk"].SetSize(3 << 20)
	grew := e.srv.CheckSizes()
	if len(grew) != 1 || grew[0] != (server.Resize{Export: "disk", From: 1 << 20, To: 3 << 20}) {
		t.Fatalf("CheckSizes = %+v", grew)
	}
	withEvents.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, body, err := wire.ReadMessage(withEvents)
	if err != nil || typ != wire.MsgEvent {
		t.Fatalf("after a resize the control stream carried %v, %v", typ, err)
	}
	if ev, err := wire.DecodeEvent(body); err != nil || ev != (wire.Event{Kind: wire.EventResized, Export: "disk", Size: 3 << 20}) {
		t.Fatalf("EVENT %+v, %v", ev, err)
	}
	ping := wire.AppendMessage(nil, wire.MsgPing, wire.AppendPing(nil, &wire.Ping{Seq: 7}))
	if _, err := without.Write(ping); err != nil {
		t.Fatal(err)
	}
	without.SetReadDeadline(time.Now().Add(5 * time.Second))
	if typ, _, err := wire.ReadMessage(without); err != nil || typ != wire.MsgPong {
		t.Fatalf("a session without events got %v, %v after a resize; want PONG", typ, err)
	}
	_, _, body = message(t, e.connect(), wire.MsgHello, wire.AppendHello(nil, &wire.Hello{Version: wire.Version, Client: "t"}))
	if info, err := wire.DecodeServerInfo(body); err != nil || info.Exports[0].Size != 3<<20 {
		t.Fatalf("a new session's SERVER_INFO: %+v, %v", info.Exports, err)
	}

	e.mem["disk"].SetSize(2 << 20)
	if grew := e.srv.CheckSizes(); len(grew) != 0 || e.srv.Info().Exports[0].Size != 3<<20 {
		t.Fatalf("after a shrink: CheckSizes = %+v, size %d", grew, e.srv.Info().Exports[0].Size)
	}
}

// TestKeyAccess: a key limited by authorized_keys options sees and opens
// only its exports (another is refused as if it did not exist) and, when
// read-only, gets EPERM on writes with the data unchanged; a reload
// applies to live sessions: a session that lost an export it has open
// ends, and one that became read-write writes on the queues it opens from
// then on.
func TestKeyAccess(t *testing.T) {
	e := newEnv(t, exportSpec{name: "a", size: 1 << 20}, exportSpec{name: "b", size: 1 << 20})
	setOptions := func(opts string) {
		a, err := crypto.ParseAuthorizedKeys(strings.NewReader(e.key.Public().String()+" "+opts+"\n"), "test")
		if err != nil {
			t.Fatal(err)
		}
		e.srv.SetAuthorized(a)
	}
	setOptions("exports=a ro limited")
	c := e.connect()
	_, typ, body := message(t, c, wire.MsgHello, wire.AppendHello(nil, &wire.Hello{Version: wire.Version, Client: "t"}))
	info, err := wire.DecodeServerInfo(body)
	if typ != wire.MsgServerInfo || err != nil {
		t.Fatalf("HELLO: %v, %v", typ, err)
	}
	if len(info.Exports) != 1 || info.Exports[0].Name != "a" || info.Exports[0].Flags&wire.ExportReadOnly == 0 ||
		info.Exports[0].Flags&(wire.ExportTrim|wire.ExportWriteZeroes) != 0 {
		t.Fatalf("a key limited to a, read-only, sees %+v", info.Exports)
	}
	_, typ, body = e.queue(e.key, c.queueMsg("b"))
	if em, _ := wire.DecodeError(body); typ != wire.MsgError || em.Status != wire.StatusEINVAL ||
		em.Message != `no export named "b" (exports: a)` {
		t.Fatalf("QUEUE b: %v %+v", typ, em)
	}
	q := e.open(c, "a")
	if q.info.Flags&wire.ExportReadOnly == 0 {
		t.Errorf("OPENED describes a as %v to a read-only key", q.info.Flags)
	}
	p := bytes.Repeat([]byte{0x5a}, 4096)
	if st := q.write(0, p, 0); st != wire.StatusEPERM {
		t.Fatalf("a write with a read-only key: %v, want EPERM", st)
	}
	if !bytes.Equal(e.mem["a"].Bytes()[:4096], make([]byte, 4096)) {
		t.Fatal("a refused write changed the data")
	}
	if _, st := q.read(0, 4096); st != wire.StatusOK {
		t.Fatalf("a read with a read-only key: %v", st)
	}

	// Read-write again: a queue opened read-only stays so (it holds no
	// writer lease); a new one writes.
	setOptions("exports=a limited")
	if st := q.write(0, p, 0); st != wire.StatusEPERM {
		t.Fatalf("a write on the queue opened read-only, after the key became read-write: %v", st)
	}
	q = e.open(c, "a")
	if st := q.write(0, p, 0); st != wire.StatusOK {
		t.Fatalf("a write after the key became read-write: %v", st)
	}
	if !bytes.Equal(e.mem["a"].Bytes()[:4096], p) {
		t.Fatal("the write did not land")
	}

	setOptions("exports=b limited")
	select {
	case <-q.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the queue on a is still open after the key lost a")
	}
}

// TestSetExports: a reload's export list applies at once: a new export
// appears for new sessions, an unchanged one keeps its queues, a removed
// one drains its queues (what was in flight is answered, then the
// connection closes) and is refused to new ones, a changed one (here made
// read-only) drains and comes back with its new options; a list that
// fails changes nothing.
func TestSetExports(t *testing.T) {
	e := newEnv(t, exportSpec{name: "a", size: 1 << 20}, exportSpec{name: "b", size: 1 << 20})
	qa, qb := e.open(e.cli, "a"), e.open(e.cli, "b")
	p := bytes.Repeat([]byte{7}, 4096)
	if st := qa.write(0, p, 0); st != wire.StatusOK {
		t.Fatal(st)
	}
	c := servertest.NewMemBackend(2 << 20)
	cfg := func(name string, b *servertest.MemBackend, ro bool) server.ExportConfig {
		return server.ExportConfig{Name: name, Path: "mem:" + name, Backend: b, ReadOnly: ro, Shared: true}
	}
	if _, err := e.srv.SetExports([]server.ExportConfig{cfg("a", e.mem["a"], false), {Name: "x", Path: "/nonexistent/x.img"}}); err == nil {
		t.Fatal("a list with an export that cannot open was applied")
	}
	if names := exportNames(e.srv.Info()); names != "a b" {
		t.Fatalf("after a failed reload: exports %s", names)
	}
	changes, err := e.srv.SetExports([]server.ExportConfig{cfg("a", e.mem["a"], false), cfg("c", c, false)})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(changes) != "[{c added} {b removed}]" {
		t.Errorf("changes %v", changes)
	}
	select {
	case <-qb.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the removed export's queue did not close")
	}
	if st := qa.write(4096, p, 0); st != wire.StatusOK {
		t.Fatalf("a write on the unchanged export after the reload: %v", st)
	}
	c2 := e.connect()
	_, _, body := message(t, c2, wire.MsgHello, wire.AppendHello(nil, &wire.Hello{Version: wire.Version, Client: "t"}))
	if info, err := wire.DecodeServerInfo(body); err != nil || exportNames(info) != "a c" {
		t.Fatalf("a new session sees %v, %v", exportNames(info), err)
	}
	if _, typ, _ := e.queue(e.key, c2.queueMsg("b")); typ != wire.MsgError {
		t.Fatalf("QUEUE for the removed export: %v", typ)
	}
	if st := e.open(c2, "c").write(0, p, 0); st != wire.StatusOK {
		t.Fatalf("a write on the new export: %v", st)
	}

	// Changed: a becomes read-only.
	if _, err := e.srv.SetExports([]server.ExportConfig{cfg("a", e.mem["a"], true), cfg("c", c, false)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-qa.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the changed export's queue did not close")
	}
	if st := e.open(c2, "a").write(0, make([]byte, 4096), 0); st != wire.StatusEPERM {
		t.Fatalf("a write on the export made read-only: %v", st)
	}
	if !bytes.Equal(e.mem["a"].Bytes()[:4096], p) || e.mem["a"].Closed() {
		t.Error("export a lost its data, or its backend, in the change")
	}
	if !e.mem["b"].Closed() {
		t.Error("the removed export's backend is still open")
	}
}

func exportNames(info wire.ServerInfo) string {
	var names []string
	for _, x := range info.Exports {
		names = append(names, x.Name)
	}
	return strings.Join(names, " ")
}

// TestZeroLengthWrite: a WRITE of no bytes is answered (it writes nothing)
// and the server goes on serving. FuzzQueueConn found the server crashing
// on one: the worker read a payload buffer that was never allocated.
func TestZeroLengthWrite(t *testing.T) {
	e := newEnv(t)
	c := e.open(e.cli, "disk")
	must(t, c.write(4096, nil, 0), wire.StatusOK, "zero-length WRITE")
	must(t, c.write(4096, nil, wire.FlagFUA), wire.StatusOK, "zero-length WRITE with FUA")
	must(t, c.write(0, make([]byte, 4096), 0), wire.StatusOK, "WRITE after")
}
