package bufpool

import (
	"sync"
	"sync/atomic"
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
	swapArena(t, &theArena, size, f)
}

// withSmallArena runs f with a small arena of size bytes in place of the
// process's.
func withSmallArena(t *testing.T, size int, f func(a *arena)) {
	t.Helper()
	swapArena(t, &smallArena, size, f)
}

// swapArena runs f with an arena of size bytes in to's place.
func swapArena(t *testing.T, to *atomic.Pointer[arena], size int, f func(a *arena)) {
	t.Helper()
	a, err := newArena(size)
	if err != nil {
		t.Fatal(err)
	}
	old := to.Swap(a)
	defer func() {
		to.Store(old)
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

// TestSmallArena: buffers under 64 KiB come from the small arena, and
// only they; a buffer put back is the next one handed out; a full small
// arena falls back to the heap; the large classes never take its room.
func TestSmallArena(t *testing.T) {
	withArena(t, 2<<20, func(large *arena) {
		withSmallArena(t, 2<<20, func(small *arena) {
			p := New(0)
			b := p.Get(4096)
			if !small.owns(*b) || large.owns(*b) {
				t.Fatalf("a 4 KiB buffer at %p: not from the small arena", unsafe.SliceData(*b))
			}
			p.Put(b)
			if again := p.Get(4000); unsafe.SliceData(*again) != unsafe.SliceData(*b) || len(*again) != 4000 {
				t.Errorf("a 4 KiB buffer put back was not reused")
			} else {
				p.Put(again)
			}
			big := p.Get(64 << 10)
			if !large.owns(*big) || small.owns(*big) {
				t.Errorf("a 64 KiB buffer at %p: not from the large arena", unsafe.SliceData(*big))
			}
			p.Put(big)
			var held []*[]byte
			for range 2<<20/(32<<10) + 1 {
				held = append(held, p.Get(32<<10))
			}
			inSmall := 0
			for _, h := range held {
				if small.owns(*h) {
					inSmall++
				}
			}
			// The 4 KiB buffer sits on its free list, so one 32 KiB
			// buffer fewer fits; the rest come from the heap.
			if want := (2<<20 - 4096) / (32 << 10); inSmall != want {
				t.Errorf("a full small arena gave %d buffers of 32 KiB, want %d", inSmall, want)
			}
			if last := held[len(held)-1]; small.owns(*last) || len(*last) != 32<<10 {
				t.Errorf("past a full small arena: a buffer of %d bytes from the arena", len(*last))
			}
			for _, h := range held {
				p.Put(h)
			}
			if size, used := ReservedSmall(); size != 2<<20 || used != 2<<20-(32<<10)+4096 {
				t.Errorf("ReservedSmall() = %d, %d; want %d, %d", size, used, 2<<20, 2<<20-(32<<10)+4096)
			}
		})
	})
}

func TestReserveOnce(t *testing.T) {
	for _, c := range []struct {
		name     string
		reserve  func(int) error
		reserved func() (int, int)
		to       *atomic.Pointer[arena]
	}{
		{"Reserve", Reserve, Reserved, &theArena},
		{"ReserveSmall", ReserveSmall, ReservedSmall, &smallArena},
	} {
		if raceEnabled {
			if err := c.reserve(1); err != nil || c.to.Load() != nil {
				t.Errorf("%s: a race build reserved an arena (err %v)", c.name, err)
			}
			continue
		}
		defer func() {
			if a := c.to.Swap(nil); a != nil {
				a.unmap()
			}
		}()
		if err := c.reserve(0); err == nil {
			t.Errorf("%s(0) succeeded", c.name)
		}
		if err := c.reserve(1); err != nil {
			t.Fatal(err)
		}
		if size, used := c.reserved(); size != hugePage || used != 0 {
			t.Errorf("after %s: %d, %d reserved; want %d, 0", c.name, size, used, hugePage)
		}
		if err := c.reserve(1); err == nil {
			t.Errorf("a second %s succeeded", c.name)
		}
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
