// Package inflight bounds the requests and payload bytes a connection or a
// session has in flight. The NBD front end (client/nbd) and the server's
// queue connections and sessions (server) share it, so both sides push back
// through TCP by the same rule instead of buffering without bound.
package inflight

import "sync"

// Limiter bounds requests and bytes in flight. Acquire waits while either
// bound would be exceeded, except that a Limiter with nothing in flight
// always admits one request, so an oversized request makes progress alone
// instead of waiting forever. A zero maxN or maxBytes means no bound.
type Limiter struct {
	mu       sync.Mutex
	cond     sync.Cond
	n        int
	bytes    int64
	maxN     int
	maxBytes int64
	waiters  int
	stopped  bool
}

// New returns a Limiter admitting at most maxN requests and maxBytes bytes
// at once (0: unbounded).
func New(maxN int, maxBytes int64) *Limiter {
	l := &Limiter{maxN: maxN, maxBytes: maxBytes}
	l.cond.L = &l.mu
	return l
}

// full reports whether a request of cost bytes must wait. Called with mu
// held.
func (l *Limiter) full(cost int64) bool {
	if l.n == 0 {
		return false
	}
	return (l.maxN > 0 && l.n >= l.maxN) || (l.maxBytes > 0 && l.bytes+cost > l.maxBytes)
}

// Acquire admits one request of cost bytes, waiting for room. It returns
// false, admitting nothing, once Stop has been called.
func (l *Limiter) Acquire(cost int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for !l.stopped && l.full(cost) {
		l.wait()
	}
	if l.stopped {
		return false
	}
	l.n++
	l.bytes += cost
	return true
}

// TryAcquire admits one request of cost bytes if there is room now, without
// waiting.
func (l *Limiter) TryAcquire(cost int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped || l.full(cost) {
		return false
	}
	l.n++
	l.bytes += cost
	return true
}

// Release returns the room of n requests totalling cost bytes.
func (l *Limiter) Release(n int, cost int64) {
	l.mu.Lock()
	l.n -= n
	l.bytes -= cost
	if l.n < 0 || l.bytes < 0 {
		l.mu.Unlock()
		panic("inflight: released more than was acquired")
	}
	if l.waiters > 0 {
		l.cond.Broadcast()
	}
	l.mu.Unlock()
}

// Stop ends every wait in Acquire and makes later ones fail at once.
// Releases still count, so Drain works after Stop.
func (l *Limiter) Stop() {
	l.mu.Lock()
	l.stopped = true
	if l.waiters > 0 {
		l.cond.Broadcast()
	}
	l.mu.Unlock()
}

// InFlight returns the number of requests admitted and not yet released.
func (l *Limiter) InFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// Drain waits until nothing is in flight.
func (l *Limiter) Drain() {
	l.mu.Lock()
	for l.n > 0 {
		l.wait()
	}
	l.mu.Unlock()
}

// wait sleeps until the next Release or Stop. Called with mu held.
func (l *Limiter) wait() {
	l.waiters++
	l.cond.Wait()
	l.waiters--
}
