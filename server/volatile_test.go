package server_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"

	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/server/servertest"
)

// Volatile must be usable wherever a Backend is.
var (
	_ server.Backend    = (*server.Volatile)(nil)
	_ server.Identifier = (*server.Volatile)(nil)
)

func readAll(t *testing.T, v *server.Volatile, size int) []byte {
	t.Helper()
	p := make([]byte, size)
	if n, err := v.ReadAt(p, 0); err != nil || n != size {
		t.Fatalf("ReadAt: %d, %v", n, err)
	}
	return p
}

func TestVolatileHoldsUntilSync(t *testing.T) {
	mem := servertest.NewMemBackend(1 << 16)
	v := server.NewVolatile(mem)
	data := bytes.Repeat([]byte{0xab}, 1000)
	if _, err := v.WriteAt(data, 100); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1000)
	v.ReadAt(got, 100)
	if !bytes.Equal(got, data) {
		t.Error("write not visible to reads")
	}
	if mem.Counts().Writes != 0 || v.Dirty() != 1000 {
		t.Errorf("before Sync: backend counts %+v, dirty %d", mem.Counts(), v.Dirty())
	}
	if err := v.Sync(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem.Bytes()[100:1100], data) || v.Dirty() != 0 || mem.Counts().Syncs != 1 {
		t.Errorf("after Sync: dirty %d, counts %+v", v.Dirty(), mem.Counts())
	}
	// A crash now loses nothing, a crash after a new write loses it.
	v.WriteAt(make([]byte, 10), 100)
	v.Crash()
	v.ReadAt(got, 100)
	if !bytes.Equal(got, data) || v.Dirty() != 0 {
		t.Error("Crash did not restore the synced contents")
	}
}

func TestVolatileFUAOverOlderWrite(t *testing.T) {
	mem := servertest.NewMemBackend(1 << 12)
	v := server.NewVolatile(mem)
	v.WriteAt(bytes.Repeat([]byte{1}, 300), 0) // [0,300) dirty
	if err := v.WriteAtFUA(bytes.Repeat([]byte{2}, 100), 50); err != nil {
		t.Fatal(err)
	}
	if c := mem.Counts(); c.Syncs != 1 || v.Dirty() != 200 {
		t.Errorf("counts %+v, dirty %d, want 1 sync and 200 dirty", c, v.Dirty())
	}
	v.Crash()
	want := make([]byte, 300)
	copy(want[50:150], bytes.Repeat([]byte{2}, 100))
	if got := readAll(t, v, 1<<12)[:300]; !bytes.Equal(got, want) {
		t.Errorf("after crash: % x", got)
	}
}

func TestVolatileSyncFailureKeepsData(t *testing.T) {
	mem := servertest.NewMemBackend(1 << 12)
	v := server.NewVolatile(mem)
	v.WriteAt([]byte("abc"), 0)
	v.WriteAt([]byte("xyz"), 100)
	mem.Fail(servertest.OpWrite)
	if err := v.Sync(); !errors.Is(err, servertest.ErrInjected) {
		t.Fatalf("Sync = %v, want the injected error", err)
	}
	if v.Dirty() != 6 {
		t.Errorf("dirty %d after failed Sync", v.Dirty())
	}
	mem.SetFault(nil)
	if err := v.Sync(); err != nil || v.Dirty() != 0 {
		t.Fatalf("Sync = %v, dirty %d", err, v.Dirty())
	}
	if b := mem.Bytes(); string(b[:3]) != "abc" || string(b[100:103]) != "xyz" {
		t.Error("data lost across a failed Sync")
	}
	// FUA is a write-through plus a backend Sync; either can fail.
	for _, op := range []servertest.Op{servertest.OpWrite, servertest.OpSync} {
		mem.Fail(op)
		if err := v.WriteAtFUA([]byte("q"), 0); !errors.Is(err, servertest.ErrInjected) {
			t.Errorf("FUA with failing %v: %v", op, err)
		}
	}
}

func TestVolatilePassThrough(t *testing.T) {
	mem := servertest.NewMemBackend(1 << 12)
	mem.Logical, mem.Physical, mem.Rotational, mem.CanTrim = 4096, 4096, true, false
	v := server.NewVolatile(mem)
	if v.Identity() != mem.ID {
		t.Error("identity not passed through")
	}
	if l, p, r, c := v.Info(); l != 4096 || p != 4096 || !r || c {
		t.Errorf("Info = %d %d %v %v", l, p, r, c)
	}
	if s, err := v.Size(); s != 1<<12 || err != nil {
		t.Errorf("Size = %d, %v", s, err)
	}
	for _, err := range []error{
		func() error { _, err := v.WriteAt(make([]byte, 2), 1<<12-1); return err }(),
		v.Trim(-1, 2),
		v.WriteZeroes(0, 1<<12+1, false),
		v.WriteAtFUA(make([]byte, 1), 1<<12),
	} {
		if !errors.Is(err, syscall.EINVAL) {
			t.Errorf("out of range: %v, want EINVAL", err)
		}
	}
	v.WriteAt([]byte("gone"), 0)
	if err := v.Close(); err != nil || !mem.Closed() {
		t.Errorf("Close = %v, backend closed %v", err, mem.Closed())
	}
	if mem.Counts().Writes != 0 {
		t.Error("Close wrote unsynced data through")
	}
}

// model is the reference a Volatile is checked against: what reads must
// return, what the backend must hold, and which bytes are dirty.
type model struct {
	visible, durable []byte
	dirty            []bool
}

func (m *model) write(p []byte, off int) {
	copy(m.visible[off:], p)
	for i := range p {
		m.dirty[off+i] = true
	}
}

func (m *model) fua(p []byte, off int) {
	copy(m.visible[off:], p)
	copy(m.durable[off:], p)
	for i := range p {
		m.dirty[off+i] = false
	}
}

func (m *model) sync() {
	copy(m.durable, m.visible)
	clear(m.dirty)
}

func (m *model) crash() {
	copy(m.visible, m.durable)
	clear(m.dirty)
}

func (m *model) dirtyBytes() int64 {
	var n int64
	for _, d := range m.dirty {
		if d {
			n++
		}
	}
	return n
}

// TestVolatileModel runs random unaligned operations with crash points
// against the model. MemBackend zeroes on Trim, so trims are zeroes here.
func TestVolatileModel(t *testing.T) {
	const size = 8 << 10
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			mem := servertest.NewMemBackend(size)
			v := server.NewVolatile(mem)
			m := &model{visible: make([]byte, size), durable: make([]byte, size), dirty: make([]bool, size)}
			for step := range 3000 {
				off := rng.IntN(size)
				n := rng.IntN(min(size-off, 1500) + 1)
				p := make([]byte, n)
				for i := range p {
					p[i] = byte(rng.IntN(255) + 1)
				}
				var err error
				op := rng.IntN(100)
				switch {
				case op < 45:
					_, err = v.WriteAt(p, int64(off))
					m.write(p, off)
				case op < 55:
					err = v.WriteAtFUA(p, int64(off))
					m.fua(p, off)
				case op < 65:
					err = v.WriteZeroes(int64(off), int64(n), op%2 == 0)
					m.write(make([]byte, n), off)
				case op < 72:
					err = v.Trim(int64(off), int64(n))
					m.write(make([]byte, n), off)
				case op < 80:
					got := make([]byte, n)
					_, err = v.ReadAt(got, int64(off))
					if !bytes.Equal(got, m.visible[off:off+n]) {
						t.Fatalf("step %d: read %d+%d differs", step, off, n)
					}
				case op < 92:
					err = v.Sync()
					m.sync()
				default:
					v.Crash()
					m.crash()
				}
				if err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				if !bytes.Equal(readAll(t, v, size), m.visible) {
					t.Fatalf("step %d (op %d at %d+%d): contents differ from the model", step, op, off, n)
				}
				if !bytes.Equal(mem.Bytes(), m.durable) {
					t.Fatalf("step %d (op %d at %d+%d): backend differs from the model's durable data", step, op, off, n)
				}
				if d := v.Dirty(); d != m.dirtyBytes() {
					t.Fatalf("step %d: Dirty = %d, model %d", step, d, m.dirtyBytes())
				}
			}
		})
	}
}

// TestVolatileConcurrent has writers race with Sync, then crashes and
// checks that every block holds a value written to it no earlier than the
// last Sync that began after that value's write returned.
func TestVolatileConcurrent(t *testing.T) {
	const block, blocks, writers = 512, 64, 8
	mem := servertest.NewMemBackend(block * blocks)
	v := server.NewVolatile(mem)
	// Each writer owns blocks w, w+writers, ... and records for each the
	// version last synced (acked before a completed Sync began).
	var mu sync.Mutex
	acked := make([]byte, blocks)  // last acked version per block
	synced := make([]byte, blocks) // last version certainly durable
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				b := w + writers*(i%(blocks/writers))
				ver := byte(i/(blocks/writers) + 1)
				if _, err := v.WriteAt(bytes.Repeat([]byte{ver}, block), int64(b*block)); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acked[b] = ver
				mu.Unlock()
				got := make([]byte, block)
				v.ReadAt(got, int64(b*block))
				if got[0] != ver || got[block-1] != ver {
					t.Errorf("block %d: read %d, wrote %d", b, got[0], ver)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 30 {
			mu.Lock()
			snap := bytes.Clone(acked)
			mu.Unlock()
			if err := v.Sync(); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			copy(synced, snap)
			mu.Unlock()
		}
	}()
	wg.Wait()
	v.Crash()
	got := readAll(t, v, block*blocks)
	for b := range blocks {
		// Versions only grow, so the block must hold at least the synced one.
		if have := got[b*block]; have < synced[b] || have > acked[b] {
			t.Errorf("block %d after crash: version %d, synced %d, acked %d", b, have, synced[b], acked[b])
		}
	}
}
