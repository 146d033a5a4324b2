package server_test

import (
	"bytes"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/server/servertest"
	"github.com/dstproject/dst/wire"
)

// TestBurstAnsweredTogether sends bursts of small READs and WRITEs in one
// record each to a file export whose pages are in memory: the connection's
// reader serves them itself and their replies leave together, in a few
// writes, not one each (which is what the worker pool made of them).
func TestBurstAnsweredTogether(t *testing.T) {
	const size, block, burst = 4 << 20, 4096, 32
	// On tmpfs, so that no write has to wait for a lock or a block
	// allocation (RWF_NOWAIT refuses those on ext4, and the request
	// then goes to a worker, as it should).
	dir, err := os.MkdirTemp("/dev/shm", "dst-burst-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "disk.img")
	want := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnvConfig(t, &server.Config{Exports: []server.ExportConfig{{Name: "file", Path: path, Shared: true}}})
	e.tcp = true // the server writes replies as it would to a client
	var writes atomic.Int64
	e.writes = &writes
	c := e.open(e.cli, "file")
	e.writes = nil

	// A burst's requests span up to three records (the WRITEs' 132 KiB),
	// and the reader sends what it has each time it would wait for the
	// next record; a NoBlock write the socket takes only in part leaves
	// the rest to the flusher. Handed to workers, the WRITEs took 27
	// writes in one run.
	const most = 4
	check := func(what string, w0 int64) {
		t.Helper()
		n := writes.Load() - w0
		t.Logf("%s: %d replies in %d writes", what, burst, n)
		if n > most {
			t.Errorf("%s: %d replies took %d writes, want at most %d", what, burst, n, most)
		}
	}

	reqs := make([]wire.Request, burst)
	payloads := make([][]byte, burst)
	for i := range reqs {
		reqs[i] = wire.Request{Cmd: wire.CmdRead, Offset: uint64(i) * 3 * block, Length: block}
	}
	w0 := writes.Load()
	for i, ch := range c.sendAll(reqs, payloads) {
		r := c.wait(ch)
		off := reqs[i].Offset
		if r.rep.Status != wire.StatusOK || !bytes.Equal(r.data, want[off:off+block]) {
			t.Fatalf("READ %d at %d: %v, data differs: %v", i, off, r.rep.Status, !bytes.Equal(r.data, want[off:off+block]))
		}
	}
	check("READs", w0)

	for i := range reqs {
		p := bytes.Repeat([]byte{byte(i + 1)}, block)
		payloads[i] = p
		reqs[i] = wire.Request{Cmd: wire.CmdWrite, Offset: uint64(i) * 2 * block, Length: block, Checksum: wire.Checksum(p)}
	}
	w0 = writes.Load()
	for i, ch := range c.sendAll(reqs, payloads) {
		if r := c.wait(ch); r.rep.Status != wire.StatusOK {
			t.Fatalf("WRITE %d: %v", i, r.rep.Status)
		}
	}
	check("WRITEs", w0)
	for i := range reqs {
		got, st := c.read(reqs[i].Offset, block)
		if st != wire.StatusOK || !bytes.Equal(got, payloads[i]) {
			t.Fatalf("reading back WRITE %d: %v, data differs", i, st)
		}
	}
}

// sendAll sends requests in one write, so that they arrive together: a
// WRITE's payload is its entry in payloads, and its checksum is set.
func (c *client) sendAll(reqs []wire.Request, payloads [][]byte) []chan result {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var b []byte
	chs := make([]chan result, len(reqs))
	for i, r := range reqs {
		chs[i] = make(chan result, 1)
		c.mu.Lock()
		c.nextID++
		r.ID = c.nextID
		c.pending[r.ID] = chs[i]
		c.mu.Unlock()
		if r.Cmd == wire.CmdWrite && r.Checksum == 0 {
			r.Checksum = wire.Checksum(payloads[i])
		}
		h := make([]byte, wire.RequestSize)
		r.Encode(h)
		b = append(append(b, h...), payloads[i]...)
	}
	if _, err := c.st.Write(b); err != nil {
		c.t.Fatal(err)
	}
	return chs
}

// halfNoWait is a backend whose page cache holds only half of what a
// WRITE touches, and nothing a READ wants: RWF_NOWAIT writes the first
// half of each WRITE and refuses every READ.
type halfNoWait struct {
	*servertest.MemBackend
	partial, refused atomic.Int64
}

func (b *halfNoWait) ReadAtNoWait([]byte, int64) bool {
	b.refused.Add(1)
	return false
}

func (b *halfNoWait) WriteAtNoWait(p []byte, off int64) int {
	n := len(p) / 2
	if _, err := b.MemBackend.WriteAt(p[:n], off); err != nil {
		return 0
	}
	b.partial.Add(1)
	return n
}

// TestBurstPartialNoWait: a WRITE the reader could apply only in part is
// finished on the spot, whole, and a READ it could not serve from memory
// goes to a worker; every reply is right.
func TestBurstPartialNoWait(t *testing.T) {
	const size, block, burst = 1 << 20, 4096, 16
	b := &halfNoWait{MemBackend: servertest.NewMemBackend(size)}
	e := newEnvConfig(t, &server.Config{Exports: []server.ExportConfig{{Name: "half", Path: "mem:half", Shared: true, Backend: b}}})
	c := e.open(e.cli, "half")

	writeThenRead(t, c, burst, block)
	t.Logf("%d WRITEs applied in part by the reader, %d READs refused to it", b.partial.Load(), b.refused.Load())
	if b.partial.Load() == 0 {
		t.Fatal("no WRITE reached the reader's no-wait path: the test tested nothing")
	}
}

// writeThenRead sends burst WRITEs of block bytes each, at consecutive
// offsets and in one write, then READs of the same blocks the same way,
// and checks every reply and that each READ returns its WRITE's data.
func writeThenRead(t *testing.T, c *client, burst, block int) {
	t.Helper()
	reqs := make([]wire.Request, burst)
	payloads := make([][]byte, burst)
	for i := range reqs {
		payloads[i] = bytes.Repeat([]byte{byte(i + 1)}, block)
		reqs[i] = wire.Request{Cmd: wire.CmdWrite, Offset: uint64(i * block), Length: uint32(block)}
	}
	for i, ch := range c.sendAll(reqs, payloads) {
		if r := c.wait(ch); r.rep.Status != wire.StatusOK {
			t.Fatalf("WRITE %d: %v", i, r.rep.Status)
		}
	}
	for i := range reqs {
		reqs[i] = wire.Request{Cmd: wire.CmdRead, Offset: uint64(i * block), Length: uint32(block)}
	}
	for i, ch := range c.sendAll(reqs, make([][]byte, burst)) {
		r := c.wait(ch)
		if r.rep.Status != wire.StatusOK || !bytes.Equal(r.data, payloads[i]) {
			t.Fatalf("READ %d: %v, data whole: %v", i, r.rep.Status, bytes.Equal(r.data, payloads[i]))
		}
	}
}

// bigNoWait is a backend held in memory that counts the requests larger
// than 64 KiB the queue's reader tries to serve without waiting.
type bigNoWait struct {
	*servertest.MemBackend
	bigReads, bigWrites atomic.Int64
}

func (b *bigNoWait) ReadAtNoWait(p []byte, off int64) bool {
	if len(p) > 64<<10 {
		b.bigReads.Add(1)
	}
	_, err := b.MemBackend.ReadAt(p, off)
	return err == nil
}

func (b *bigNoWait) WriteAtNoWait(p []byte, off int64) int {
	if len(p) > 64<<10 {
		b.bigWrites.Add(1)
	}
	n, _ := b.MemBackend.WriteAt(p, off)
	return n
}

// TestBurstLargeWritesOnReader: WRITEs of 256 KiB that arrive together are
// applied by the queue's reader, which has their payloads in its cache,
// when memory takes them; READs that large go to the workers, which seal
// their replies in parallel. Every reply is right either way.
func TestBurstLargeWritesOnReader(t *testing.T) {
	const size, block, burst = 8 << 20, 256 << 10, 4
	b := &bigNoWait{MemBackend: servertest.NewMemBackend(size)}
	e := newEnvConfig(t, &server.Config{Exports: []server.ExportConfig{{Name: "big", Path: "mem:big", Shared: true, Backend: b}}})
	c := e.open(e.cli, "big")

	writeThenRead(t, c, burst, block)
	t.Logf("of %d large WRITEs, %d applied by the reader; %d large READs tried on it", burst, b.bigWrites.Load(), b.bigReads.Load())
	if b.bigWrites.Load() == 0 {
		t.Error("no large WRITE was applied by the queue's reader")
	}
	if n := b.bigReads.Load(); n != 0 {
		t.Errorf("%d large READs were served by the queue's reader, want them on workers", n)
	}
}
