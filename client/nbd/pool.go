package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come in power-of-two classes from 4 KiB to maxPayload, so a
// steady stream of same-sized requests reuses the same arrays. Pools hold
// *[]byte because putting a slice header in an interface would allocate.
const (
	minBufShift = 12
	maxBufShift = 25 // log2(maxPayload)
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n uint32) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len32(n-1) - minBufShift
}

// getBuf returns a buffer with at least n bytes; n must not exceed maxPayload.
func getBuf(n uint32) *[]byte {
	c := bufClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 1<<(c+minBufShift))
	return &b
}

func putBuf(p *[]byte) {
	n := cap(*p)
	c := bufClass(uint32(n))
	if c >= len(bufPools) || n != 1<<(c+minBufShift) {
		return // not one of ours
	}
	*p = (*p)[:n]
	bufPools[c].Put(p)
}

var reqPool = sync.Pool{New: func() any { return new(Request) }}

// recycle returns r and its buffer to their pools.
func recycle(r *Request) {
	if r.buf != nil {
		putBuf(r.buf)
	}
	// Field by field, leaving pending alone: it is already false, and a
	// stray second Complete may be reading it.
	r.Cmd, r.Flags, r.Offset, r.Length, r.Data = 0, 0, 0, 0, nil
	r.cookie, r.conn, r.buf, r.errno, r.cost = 0, nil, nil, 0, 0
	reqPool.Put(r)
}
