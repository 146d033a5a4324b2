package verify

import (
	"slices"
	"testing"
)

func TestPattern(t *testing.T) {
	for _, size := range []int{MinBlockSize, 513, 4096} {
		p := make([]byte, size)
		fill(p, 7, 3, 42)
		if c, seq := decode(p, 7, 3); c != contentOurs || seq != 42 {
			t.Fatalf("size %d: decode = %v, %d", size, c, seq)
		}
		if c, seq := decode(p, 7, 4); c != contentMisplaced || seq != 42 {
			t.Errorf("size %d: other block = %v, %d", size, c, seq)
		}
		if c, _ := decode(p, 8, 3); c != contentForeign {
			t.Errorf("size %d: other run = %v", size, c)
		}
		if c, _ := decode(make([]byte, size), 7, 3); c != contentForeign {
			t.Errorf("size %d: zeroes = %v", size, c)
		}
		// Any single flipped byte after the magic and run is caught.
		for i := offBlock; i < size; i++ {
			p[i] ^= 0x10
			if c, _ := decode(p, 7, 3); c != contentCorrupt {
				t.Fatalf("size %d: flipped byte %d read as %v", size, i, c)
			}
			p[i] ^= 0x10
		}
		// A torn write mixing two writes of the block is caught.
		q := make([]byte, size)
		fill(q, 7, 3, 43)
		copy(p[size/2:], q[size/2:])
		if c, _ := decode(p, 7, 3); c != contentCorrupt {
			t.Errorf("size %d: torn write read as %v", size, c)
		}
	}
}

func TestHistoryAllowed(t *testing.T) {
	acked := func(seq, order uint64) write { return write{seq: seq, state: stateAcked, ackOrder: order} }
	for _, tt := range []struct {
		name             string
		h                history
		flushed          uint64
		acked, flushOnly []uint64
	}{
		{"fresh", newHistory(), 0, []uint64{0}, []uint64{0}},
		{"one acked", history{newHistory()[0], acked(5, 1)}, 0, []uint64{5}, []uint64{0, 5}},
		{"one flushed", history{newHistory()[0], acked(5, 1)}, 1, []uint64{5}, []uint64{5}},
		{"fua", history{newHistory()[0], {seq: 5, state: stateAcked, ackOrder: 1, fua: true}}, 0, []uint64{5}, []uint64{5}},
		{"failed after acked", history{newHistory()[0], acked(5, 1), {seq: 9, state: stateFailed}}, 0,
			[]uint64{5, 9}, []uint64{0, 5, 9}},
		{"pending and failed", history{newHistory()[0], acked(5, 1), {seq: 7, state: stateFailed}, acked(8, 3), {seq: 9}}, 1,
			[]uint64{8, 9}, []uint64{5, 7, 8, 9}},
		{"failed before acked", history{newHistory()[0], {seq: 2, state: stateFailed}, acked(5, 4)}, 0,
			[]uint64{5}, []uint64{0, 2, 5}},
	} {
		if got := tt.h.allowed(RequireAcked, tt.flushed); !slices.Equal(got, tt.acked) {
			t.Errorf("%s: RequireAcked allows %v, want %v", tt.name, got, tt.acked)
		}
		if got := tt.h.allowed(RequireFlushed, tt.flushed); !slices.Equal(got, tt.flushOnly) {
			t.Errorf("%s: RequireFlushed allows %v, want %v", tt.name, got, tt.flushOnly)
		}
		// Pruning never changes what either rule allows.
		p := append(history(nil), tt.h...).prune(tt.flushed)
		if !slices.Equal(p.allowed(RequireAcked, tt.flushed), tt.acked) || !slices.Equal(p.allowed(RequireFlushed, tt.flushed), tt.flushOnly) {
			t.Errorf("%s: pruning to %v changed the allowed sets", tt.name, p)
		}
	}
}
