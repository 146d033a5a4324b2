package server

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"syscall"

	"github.com/dstproject/dst/wire"
)

// Volatile is a Backend that models a disk with a volatile write cache, for
// tests of what a client does about data that was acknowledged but never
// flushed. Writes, trims and zeroes are held in memory and visible to reads
// at once; only Sync and WriteAtFUA make data reach the backend below. When
// the process dies, or Crash is called, whatever was not synced is gone,
// exactly as after a power loss.
//
// The overlay is a sorted list of non-overlapping extents at byte
// granularity; a new write punches its range out of older extents, so
// unaligned and overlapping writes read back like on a real disk.
// One RWMutex guards it: reads share it, writes and Sync hold it
// exclusively, which serializes I/O but keeps every read consistent with
// the write-through order.
type Volatile struct {
	b Backend

	mu      sync.RWMutex
	overlay []extent
	dirty   int64 // sum of the overlay's lengths
}

type extentKind uint8

const (
	extWrite      extentKind = iota
	extZero                  // WriteZeroes that may deallocate
	extZeroNoHole            // WriteZeroes with noHole
	extTrim                  // reads as zeroes until written through
)

// extent is a range of the overlay. data is nil except for extWrite; it is
// never modified after insertion, so splitting an extent may share it.
type extent struct {
	off, n int64
	kind   extentKind
	data   []byte
}

func (e extent) end() int64 { return e.off + e.n }

// slice returns the part of e within [off, end), which must intersect it.
func (e extent) slice(off, end int64) extent {
	lo, hi := max(off, e.off), min(end, e.end())
	s := extent{off: lo, n: hi - lo, kind: e.kind}
	if e.data != nil {
		s.data = e.data[lo-e.off : hi-e.off]
	}
	return s
}

// NewVolatile wraps b in a volatile write cache. It implements Identifier
// by passing b's identity through; a b without one yields the zero
// identity, which the server replaces with a random one as it would for b.
func NewVolatile(b Backend) *Volatile { return &Volatile{b: b} }

// Identity returns the identity of the wrapped backend, or zero.
func (v *Volatile) Identity() wire.Identity {
	if id, ok := v.b.(Identifier); ok {
		return id.Identity()
	}
	return wire.Identity{}
}

// Dirty returns how many bytes are held that Sync has not written through.
func (v *Volatile) Dirty() int64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.dirty
}

// Crash discards every write not yet synced, as a power loss would. The
// backend stays usable, as after a restart.
func (v *Volatile) Crash() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.overlay, v.dirty = nil, 0
}

// ReadAt reads from the backend below and lays the overlay on top.
func (v *Volatile) ReadAt(p []byte, off int64) (int, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	n, err := v.b.ReadAt(p, off)
	if err != nil && err != io.EOF {
		return n, err
	}
	end := off + int64(n)
	for i := v.first(off); i < len(v.overlay) && v.overlay[i].off < end; i++ {
		s := v.overlay[i].slice(off, end)
		dst := p[s.off-off : s.end()-off]
		if s.data != nil {
			copy(dst, s.data)
		} else {
			clear(dst)
		}
	}
	return n, err
}

// WriteAt holds a copy of p in the overlay.
func (v *Volatile) WriteAt(p []byte, off int64) (int, error) {
	if err := v.bounds("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	v.insert(extent{off: off, n: int64(len(p)), kind: extWrite, data: append([]byte(nil), p...)})
	return len(p), nil
}

// Trim holds the trim in the overlay; the range reads as zeroes.
func (v *Volatile) Trim(off, n int64) error {
	if err := v.bounds("trim", off, n); err != nil {
		return err
	}
	v.insert(extent{off: off, n: n, kind: extTrim})
	return nil
}

// WriteZeroes holds the zeroing in the overlay.
func (v *Volatile) WriteZeroes(off, n int64, noHole bool) error {
	if err := v.bounds("write zeroes", off, n); err != nil {
		return err
	}
	k := extZero
	if noHole {
		k = extZeroNoHole
	}
	v.insert(extent{off: off, n: n, kind: k})
	return nil
}

// WriteAtFUA writes p through to the backend, drops the overlay's older
// data for the range, and syncs the backend. Dirty data elsewhere stays
// volatile, as with FUA on a real disk.
func (v *Volatile) WriteAtFUA(p []byte, off int64) error {
	if err := v.bounds("fua write", off, int64(len(p))); err != nil {
		return err
	}
	v.mu.Lock()
	if _, err := v.b.WriteAt(p, off); err != nil {
		v.mu.Unlock()
		return err
	}
	v.punch(off, off+int64(len(p)))
	v.mu.Unlock()
	// Writes to the backend happen only under mu, so everything this
	// Sync covers is already in place.
	return v.b.Sync()
}

// Sync writes the overlay through in offset order, then syncs the backend.
// If a write-through fails, what was written is dropped from the overlay
// and the rest stays held.
func (v *Volatile) Sync() error {
	v.mu.Lock()
	for len(v.overlay) > 0 {
		e := v.overlay[0]
		if err := v.writeThrough(e); err != nil {
			v.mu.Unlock()
			return fmt.Errorf("server: volatile sync at %d+%d: %w", e.off, e.n, err)
		}
		v.overlay = v.overlay[1:]
		v.dirty -= e.n
	}
	v.overlay = nil
	v.mu.Unlock()
	return v.b.Sync()
}

func (v *Volatile) writeThrough(e extent) error {
	switch e.kind {
	case extWrite:
		_, err := v.b.WriteAt(e.data, e.off)
		return err
	case extTrim:
		return v.b.Trim(e.off, e.n)
	default:
		return v.b.WriteZeroes(e.off, e.n, e.kind == extZeroNoHole)
	}
}

// Size returns the backend's size.
func (v *Volatile) Size() (int64, error) { return v.b.Size() }

// Refresh passes Refresher through to the backend below.
func (v *Volatile) Refresh() (int64, error) {
	if r, ok := v.b.(Refresher); ok {
		return r.Refresh()
	}
	return v.b.Size()
}

// Info returns the backend's geometry.
func (v *Volatile) Info() (logical, physical uint32, rotational, canTrim bool) {
	return v.b.Info()
}

// Close discards what was not synced, like a machine switched off, and
// closes the backend. Only Sync and FUA make data durable.
func (v *Volatile) Close() error {
	v.Crash()
	return v.b.Close()
}

// bounds rejects ranges outside the backend; the server checks ranges
// first, so this only guards direct callers.
func (v *Volatile) bounds(op string, off, n int64) error {
	size, err := v.b.Size()
	if err != nil {
		return err
	}
	if off < 0 || n < 0 || off > size-n {
		return fmt.Errorf("server: volatile %s at %d+%d beyond size %d: %w", op, off, n, size, syscall.EINVAL)
	}
	return nil
}

// first returns the index of the first extent ending after off.
func (v *Volatile) first(off int64) int {
	return sort.Search(len(v.overlay), func(i int) bool { return v.overlay[i].end() > off })
}

// insert puts e into the overlay, replacing whatever it overlaps.
func (v *Volatile) insert(e extent) {
	if e.n == 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	i := v.punch(e.off, e.end())
	v.overlay = append(v.overlay, extent{})
	copy(v.overlay[i+1:], v.overlay[i:])
	v.overlay[i] = e
	v.dirty += e.n
}

// punch removes [off, end) from the overlay, splitting the extents that
// straddle its edges, and returns the index where an extent starting at
// off belongs.
func (v *Volatile) punch(off, end int64) int {
	i := v.first(off)
	j := i
	var keep []extent
	for ; j < len(v.overlay) && v.overlay[j].off < end; j++ {
		e := v.overlay[j]
		v.dirty -= e.n
		if e.off < off {
			keep = append(keep, e.slice(e.off, off))
		}
		if e.end() > end {
			keep = append(keep, e.slice(end, e.end()))
		}
	}
	for _, k := range keep {
		v.dirty += k.n
	}
	v.overlay = append(v.overlay[:i], append(keep, v.overlay[j:]...)...)
	if len(keep) > 0 && keep[0].off < off {
		return i + 1
	}
	return i
}
