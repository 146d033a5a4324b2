// Package bufpool pools payload buffers in power-of-two size classes from
// 4 KiB to 32 MiB (the largest payload the protocols carry), so a steady
// stream of same-sized requests reuses the same arrays and the data path
// allocates nothing per request. Buffers of 64 KiB and more come from an
// arena of huge pages once the process has reserved one, and smaller ones
// from a second arena once it has reserved that (arena.go).
package bufpool

import (
	"math/bits"
	"sync"
)

const (
	minShift = 12
	maxShift = 25 // 32 MiB

	// MaxSize is the largest buffer a Pool hands out, headroom aside.
	MaxSize = 1 << maxShift
)

// Pool hands out buffers whose capacity is a size class plus a fixed
// headroom, room for a header in front of the payload so that both go out
// in one write. Pools hold *[]byte: a slice header put in an interface
// would allocate.
type Pool struct {
	headroom int
	classes  [maxShift - minShift + 1]sync.Pool

	mu   sync.Mutex
	free [maxShift - minShift + 1][]*[]byte // buffers from the arena (arena.go)
}

// Payloads is the pool for payload buffers that pass from one package to
// another: the NBD front end reads write payloads into them, and the
// client's replay log may keep one instead of copying it.
var Payloads = New(0)

// New returns a pool whose buffers have headroom extra bytes.
func New(headroom int) *Pool { return &Pool{headroom: headroom} }

func (p *Pool) class(n int) int {
	n -= p.headroom
	if n <= 1<<minShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minShift
}

// Get returns a buffer of length n, at most MaxSize plus the headroom.
func (p *Pool) Get(n int) *[]byte {
	c := p.class(n)
	if b := p.fromArena(c, n); b != nil {
		return b
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minShift)+p.headroom)
	return &b
}

// Put returns a buffer from Get; anything else is dropped.
func (p *Pool) Put(b *[]byte) {
	c := p.class(cap(*b))
	if c < 0 || c >= len(p.classes) || cap(*b) != 1<<(c+minShift)+p.headroom {
		return
	}
	if p.toArena(c, b) {
		return
	}
	p.classes[c].Put(b)
}
