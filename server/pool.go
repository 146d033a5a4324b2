package server

import (
	"sync"

	"github.com/dstproject/dst/internal/bufpool"
	"github.com/dstproject/dst/wire"
)

// bufs holds payload buffers with room for a reply header in front, so a
// READ reply's header and data share one buffer and go out in one Write.
var bufs = bufpool.New(wire.ReplySize)

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
