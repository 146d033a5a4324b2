package server

import (
	"math/bits"
	"sync"

	"github.com/dstproject/dst/wire"
)

// Payload buffers come from size classes of powers of two from 4 KiB to
// MaxPayload, each with wire.ReplySize bytes of headroom so a READ reply's
// header and data share one buffer and go out in one Write.
const (
	minBufShift = 12
	maxBufShift = 25 // 32 MiB = wire.MaxPayload
	bufHeadroom = wire.ReplySize
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n int) int {
	n -= bufHeadroom
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// getBuf returns a pooled buffer of length n (at most MaxPayload+ReplySize).
// The pointer goes back with putBuf.
func getBuf(n int) *[]byte {
	c := bufClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(c+minBufShift)+bufHeadroom)
	return &b
}

func putBuf(p *[]byte) {
	c := bufClass(cap(*p))
	if c >= 0 && c < len(bufPools) && cap(*p) == 1<<(c+minBufShift)+bufHeadroom {
		bufPools[c].Put(p)
	}
}

// limiter bounds the requests and bytes in flight. Acquire blocks while
// either bound would be exceeded, except that a limiter with nothing in
// flight always admits one request, so an oversized request makes progress
// alone instead of waiting forever.
type limiter struct {
	mu       sync.Mutex
	cond     sync.Cond
	n, bytes int
	maxN     int
	maxBytes int
	waiters  int
}

func newLimiter(maxN, maxBytes int) *limiter {
	l := &limiter{maxN: maxN, maxBytes: maxBytes}
	l.cond.L = &l.mu
	return l
}

func (l *limiter) acquire(cost int) {
	l.mu.Lock()
	for l.n > 0 && (l.n >= l.maxN || l.bytes+cost > l.maxBytes) {
		l.waiters++
		l.cond.Wait()
		l.waiters--
	}
	l.n++
	l.bytes += cost
	l.mu.Unlock()
}

func (l *limiter) release(cost int) {
	l.mu.Lock()
	l.n--
	l.bytes -= cost
	if l.waiters > 0 {
		l.cond.Broadcast()
	}
	l.mu.Unlock()
}

// count returns the number of requests in flight.
func (l *limiter) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// drain waits until nothing is in flight.
func (l *limiter) drain() {
	l.mu.Lock()
	for l.n > 0 {
		l.waiters++
		l.cond.Wait()
		l.waiters--
	}
	l.mu.Unlock()
}
