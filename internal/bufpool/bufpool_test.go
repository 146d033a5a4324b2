package bufpool

import (
	"sync"
	"testing"
	"unsafe"
)

func TestGetPut(t *testing.T) {
	for _, headroom := range []int{0, 24} {
		p := New(headroom)
		for _, n := range []int{0, 24, 4096 + headroom, 4097 + headroom, 1<<20 + headroom, MaxSize + headroom} {
			b := p.Get(n)
			if len(*b) != n || cap(*b) < n {
				t.Fatalf("headroom %d: Get(%d): len %d cap %d", headroom, n, len(*b), cap(*b))
			}
			if c := cap(*b) - headroom; c&(c-1) != 0 {
				t.Fatalf("headroom %d: Get(%d): cap %d is not a class size", headroom, n, cap(*b))
			}
			p.Put(b)
			if again := p.Get(n); len(*again) != n {
				t.Fatalf("headroom %d: reused Get(%d): len %d", headroom, n, len(*again))
			}
		}
		foreign := make([]byte, 1000)
		p.Put(&foreign) // not a class size: dropped, no panic
	}
}

func TestNoAllocs(t *testing.T) {
	p := New(24)
	p.Put(p.Get(4096))
	if n := testing.AllocsPerRun(100, func() { p.Put(p.Get(4096)) }); n != 0 {
		t.Fatalf("%v allocations per Get/Put", n)
	}
}

// withArena runs f with an arena of size bytes in place of the process's.
func withArena(t *testing.T, size int, f func(a *arena)) {
	t.Helper()
	a, err := newArena(size)
	if err != nil {
		t.Fatal(err)
	}
	old := theArena.Swap(a)
	defer func() {
		theArena.Store(old)
		a.unmap()
	}()
	f(a)
}

func TestArena(t *testing.T) {
	withArena(t, 4<<20, func(a *arena) {
		if len(a.mem) != 4<<20 || uintptr(unsafe.Pointer(unsafe.SliceData(a.mem)))%hugePage != 0 {
			t.Fatalf("arena of %d bytes at %p: want 4 MiB on a 2 MiB boundary", len(a.mem), unsafe.SliceData(a.mem))
		}
		for _, headroom := range []int{0, 24} {
			p := New(headroom)
			small := p.Get(4096)
			if a.owns(*small) {
				t.Errorf("headroom %d: a 4 KiB buffer came from the arena", headroom)
			}
			b := p.Get(256<<10 + headroom)
			if !a.owns(*b) || len(*b) != 256<<10+headroom || cap(*b) != 256<<10+headroom {
				t.Fatalf("headroom %d: Get(256 KiB): owned %v, len %d, cap %d", headroom, a.owns(*b), len(*b), cap(*b))
			}
			if uintptr(unsafe.Pointer(unsafe.SliceData(*b)))%64 != 0 {
				t.Errorf("headroom %d: an arena buffer at %p, not on a cache line", headroom, unsafe.SliceData(*b))
			}
			(*b)[len(*b)-1] = 1 // the whole buffer is writable
			p.Put(b)
			again := p.Get(200 << 10)
			if again != b || len(*again) != 200<<10 {
				t.Errorf("headroom %d: Get after Put: %p (len %d), want the buffer put back, %p", headroom, again, len(*again), b)
			}
			p.Put(again)
			p.Put(small)
		}
		// Full: the rest comes from the heap, and goes back to sync.Pool.
		p := New(0)
		var held []*[]byte
		for {
			b := p.Get(1 << 20)
			if !a.owns(*b) {
				p.Put(b)
				break
			}
			held = append(held, b)
		}
		if len(held) != 3 { // 4 MiB, less the 256 KiB buffers of each pool
			t.Fatalf("a full arena gave %d buffers of 1 MiB, want 3", len(held))
		}
		for _, b := range held {
			p.Put(b)
		}
		if b := p.Get(1 << 20); !a.owns(*b) {
			t.Error("a buffer put back in a full arena was not reused")
		}
	})
}

func TestReserveOnce(t *testing.T) {
	if raceEnabled {
		if err := Reserve(1); err != nil || theArena.Load() != nil {
			t.Errorf("a race build reserved an arena (err %v)", err)
		}
		return
	}
	defer func() {
		if a := theArena.Swap(nil); a != nil {
			a.unmap()
		}
	}()
	if err := Reserve(0); err == nil {
		t.Error("Reserve(0) succeeded")
	}
	if err := Reserve(1); err != nil {
		t.Fatal(err)
	}
	if size, used := Reserved(); size != hugePage || used != 0 {
		t.Errorf("Reserved() = %d, %d; want %d, 0", size, used, hugePage)
	}
	if err := Reserve(1); err == nil {
		t.Error("a second Reserve succeeded")
	}
}

func TestArenaNoAllocs(t *testing.T) {
	withArena(t, 4<<20, func(*arena) {
		p := New(24)
		p.Put(p.Get(1 << 20))
		if n := testing.AllocsPerRun(100, func() { p.Put(p.Get(1 << 20)) }); n != 0 {
			t.Fatalf("%v allocations per Get/Put", n)
		}
	})
}

// TestArenaConcurrent: goroutines sharing the arena's pools never get the
// same buffer twice at once (run with -race).
func TestArenaConcurrent(t *testing.T) {
	withArena(t, 8<<20, func(a *arena) {
		p := New(0)
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 500 {
					b := p.Get(64 << 10 << (i % 3))
					for j := range *b {
						(*b)[j] = byte(g)
					}
					for j := range *b {
						if (*b)[j] != byte(g) {
							t.Errorf("goroutine %d: its buffer changed under it", g)
							return
						}
					}
					p.Put(b)
				}
			})
		}
		wg.Wait()
		if a.used == 0 {
			t.Error("no buffer came from the arena")
		}
	})
}
