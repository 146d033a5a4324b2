package bufpool

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Large payloads live in an arena once Reserve has mapped one: a region
// outside the collector's heap, backed by transparent huge pages where the
// kernel offers them, carved into buffers that stay on their pool's free
// lists for good.
//
// Why: attach's replay log keeps every WRITE's buffer until a FLUSH, so a
// stream of writes cycles through tens of MiB of payload memory. From the
// Go heap that memory comes in 4 KiB pages, each faulted in on its first
// touch, and goes back to the kernel when the heap shrinks, to be faulted
// in again later; and every pass over it misses the TLB once per 4 KiB.
// On a VM where a first touch costs 13 µs a page (PVM, 2026-12-06), a
// 1 GiB copy into a fresh attach took ~12,000 faults and 1.12-1.30 s of
// attach's CPU; with its payloads in a huge-page arena, ~1,200 faults and
// 0.99-1.11 s (scripts/PERFORMANCE.md, "Sequential copies against their
// floor"). Here each 2 MiB is faulted in once, at its first use, and
// reused after.
//
// Smaller payloads (4 KiB to 32 KiB) get an arena of their own once
// ReserveSmall has mapped one. The replay log keeps them too: a stream of
// 4 KiB writes holds 8,192 of them between FLUSHes, and in the Go heap
// those made the live heap 32 MiB larger, so the garbage of every request
// spread over as many fresh pages between collections: 0.19-0.27 page
// faults per QD1 write into a fresh attach, 0.05 after a warm-up (13 µs
// each there), against 0.03 and none with this arena
// (scripts/PERFORMANCE.md, "Bench runs"). Two arenas, so that a phase of small
// writes cannot take the room of the large buffers the first arena is
// for, nor the other way round: a pool's arena buffers stay on their
// class's free list for good.
//
// The cost is that arena memory, once touched, stays with the process: at
// most the sizes given to Reserve and ReserveSmall. Buffers beyond them
// come from the heap as before, so a full arena is slower, never wrong.

// arenaMinShift is the smallest class taken from the large arena, 64 KiB;
// smaller classes come from the small arena, or without one from
// sync.Pool, whose per-CPU caches take no lock and which the collector
// may empty.
const arenaMinShift = 16

// arenaClass is the first class index taken from the large arena.
const arenaClass = arenaMinShift - minShift

// hugePage is the size and alignment of a transparent huge page on x86-64
// and arm64 with 4 KiB pages; elsewhere it is only an alignment.
const hugePage = 2 << 20

// arena is one mapping, handed out front to back. Buffers never go back to
// it: a pool keeps the ones it carved on its free lists.
type arena struct {
	mapping []byte // as mapped
	mem     []byte // its hugePage-aligned part

	mu   sync.Mutex
	used int // bytes carved from the front of mem
}

// theArena holds the classes of 64 KiB and more, smallArena the others.
var theArena, smallArena atomic.Pointer[arena]

// arenaFor returns where buffers of class c come from.
func arenaFor(c int) *atomic.Pointer[arena] {
	if c >= arenaClass {
		return &theArena
	}
	return &smallArena
}

// Reserve maps size bytes (rounded up to 2 MiB) of address space as the
// arena for every pool's buffers of 64 KiB and more. It takes no memory
// until buffers are used; each 2 MiB then stays with the process. A
// process calls it once, before its data path starts; a second call fails.
// In a race build it does nothing (race.go).
func Reserve(size int) error { return reserve(&theArena, size) }

// ReserveSmall is Reserve for buffers under 64 KiB.
func ReserveSmall(size int) error { return reserve(&smallArena, size) }

func reserve(to *atomic.Pointer[arena], size int) error {
	if raceEnabled {
		return nil
	}
	a, err := newArena(size)
	if err != nil {
		return err
	}
	if !to.CompareAndSwap(nil, a) {
		a.unmap()
		return errors.New("bufpool: an arena is already reserved")
	}
	return nil
}

// Reserved reports the large arena's size and how much of it buffers have
// taken.
func Reserved() (size, used int) { return theArena.Load().usage() }

// ReservedSmall is Reserved for the small arena.
func ReservedSmall() (size, used int) { return smallArena.Load().usage() }

func (a *arena) usage() (size, used int) {
	if a == nil {
		return 0, 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.mem), a.used
}

func newArena(size int) (*arena, error) {
	if size <= 0 {
		return nil, fmt.Errorf("bufpool: arena of %d bytes", size)
	}
	size = (size + hugePage - 1) &^ (hugePage - 1)
	// One huge page more than asked, so that an aligned region fits.
	m, err := unix.Mmap(-1, 0, size+hugePage, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("bufpool: mapping an arena of %d bytes: %w", size, err)
	}
	off := -int(uintptr(unsafe.Pointer(unsafe.SliceData(m)))) & (hugePage - 1)
	mem := m[off : off+size : off+size]
	// Best effort: without transparent huge pages (disabled, or "never")
	// the arena still keeps its pages, only 4 KiB at a time.
	_ = unix.Madvise(mem, unix.MADV_HUGEPAGE)
	return &arena{mapping: m, mem: mem}, nil
}

// unmap releases the mapping of an arena no pool has used.
func (a *arena) unmap() { _ = unix.Munmap(a.mapping) }

// carve returns n bytes from the arena, or nil when it is full. Each
// buffer starts on a cache line: used stays a multiple of 64, as the
// arena's size is.
func (a *arena) carve(n int) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	next := a.used + (n+63)&^63
	if next > len(a.mem) {
		return nil
	}
	b := a.mem[a.used : a.used+n : a.used+n]
	a.used = next
	return b
}

// owns reports whether b's array is in the arena.
func (a *arena) owns(b []byte) bool {
	if cap(b) == 0 {
		return false
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	base := uintptr(unsafe.Pointer(unsafe.SliceData(a.mem)))
	return p >= base && p < base+uintptr(len(a.mem))
}

// fromArena returns a buffer of class c and length n from p's free list
// or, when that is empty, a new one carved from the class's arena; nil
// when there is no such arena or it is full.
func (p *Pool) fromArena(c, n int) *[]byte {
	a := arenaFor(c).Load()
	if a == nil {
		return nil
	}
	p.mu.Lock()
	if l := len(p.free[c]); l > 0 {
		b := p.free[c][l-1]
		p.free[c] = p.free[c][:l-1]
		p.mu.Unlock()
		*b = (*b)[:n]
		return b
	}
	p.mu.Unlock()
	b := a.carve(1<<(c+minShift) + p.headroom)
	if b == nil {
		return nil
	}
	b = b[:n]
	return &b
}

// toArena keeps b, a buffer of class c, for the next Get if it is from
// the class's arena, and reports whether it was.
func (p *Pool) toArena(c int, b *[]byte) bool {
	if a := arenaFor(c).Load(); a == nil || !a.owns(*b) {
		return false
	}
	p.mu.Lock()
	p.free[c] = append(p.free[c], b)
	p.mu.Unlock()
	return true
}
