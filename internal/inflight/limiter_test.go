package inflight

import (
	"testing"
	"testing/synctest"
)

func TestBounds(t *testing.T) {
	l := New(2, 100)
	if !l.TryAcquire(60) || !l.TryAcquire(40) {
		t.Fatal("two requests within both bounds refused")
	}
	if l.TryAcquire(0) {
		t.Fatal("a third request admitted past maxN 2")
	}
	l.Release(1, 40)
	if l.TryAcquire(41) {
		t.Fatal("61+41 bytes admitted past maxBytes 100")
	}
	if !l.TryAcquire(40) {
		t.Fatal("60+40 bytes refused within maxBytes 100")
	}
	if got := l.InFlight(); got != 2 {
		t.Fatalf("InFlight = %d, want 2", got)
	}
}

func TestOversizedAloneIsAdmitted(t *testing.T) {
	l := New(4, 10)
	if !l.TryAcquire(1000) {
		t.Fatal("an oversized request on an idle limiter must be admitted")
	}
	if l.TryAcquire(1) {
		t.Fatal("a request admitted beside an oversized one")
	}
}

func TestUnbounded(t *testing.T) {
	l := New(0, 0)
	for i := range 1000 {
		if !l.TryAcquire(1 << 30) {
			t.Fatalf("request %d refused by an unbounded limiter", i)
		}
	}
}

func TestAcquireWaitsForRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, got := blocked(t)
		l.Release(1, 0)
		if !<-got {
			t.Fatal("Acquire failed after a release")
		}
	})
}

func TestStopEndsWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, got := blocked(t)
		l.Stop()
		if <-got {
			t.Fatal("a waiting Acquire succeeded after Stop")
		}
		if l.Acquire(0) || l.TryAcquire(0) {
			t.Fatal("Acquire after Stop succeeded")
		}
		done := make(chan struct{})
		go func() { l.Drain(); close(done) }()
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("Drain returned with a request in flight")
		default:
		}
		l.Release(1, 0)
		<-done
	})
}

func TestReleaseTooMuchPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("releasing what was never acquired did not panic")
		}
	}()
	New(1, 1).Release(1, 0)
}

// blocked returns a full limiter of one request and the result of an
// Acquire that is waiting in it. It runs in a synctest bubble.
func blocked(t *testing.T) (*Limiter, <-chan bool) {
	t.Helper()
	l := New(1, 0)
	l.Acquire(0)
	got := make(chan bool, 1)
	go func() { got <- l.Acquire(0) }()
	synctest.Wait()
	select {
	case <-got:
		t.Fatal("Acquire returned while the limiter was full")
	default:
	}
	return l, got
}
