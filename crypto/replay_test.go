package crypto

import (
	"errors"
	"sync"
	"testing"
	"time"
)

func TestTimestampRoundTrip(t *testing.T) {
	for _, ns := range []uint64{0, 1, 999_999_999, 1_700_000_000_123_456_789, (maxStampSecond-1)*1e9 + 999_999_999} {
		var b [timestampLen]byte
		putTimestamp(b[:], ns)
		got, err := parseTimestamp(b[:])
		if err != nil || got != ns {
			t.Errorf("round trip %d: got %d, %v", ns, got, err)
		}
	}
	bad := [][]byte{
		nil,
		make([]byte, 11),
		make([]byte, 12), // label 0 is below 2^62
		{0x40, 0, 0, 0, 0, 0, 0, 0, 0x3b, 0x9a, 0xca, 0x00}, // nanoseconds = 1e9
		{0x40, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0},             // year > 2242
	}
	for _, b := range bad {
		if _, err := parseTimestamp(b); !errors.Is(err, errBadTimestamp) {
			t.Errorf("parseTimestamp(%x) = %v, want errBadTimestamp", b, err)
		}
	}
}

func TestNextTimestampStrictlyIncreasing(t *testing.T) {
	const goroutines, each = 8, 2000
	var mu sync.Mutex
	seen := make(map[uint64]bool)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var prev uint64
			local := make([]uint64, 0, each)
			for range each {
				ts := nextTimestamp()
				if ts <= prev {
					t.Errorf("timestamp went from %d to %d", prev, ts)
				}
				prev = ts
				local = append(local, ts)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, ts := range local {
				if seen[ts] {
					t.Errorf("timestamp %d issued twice", ts)
				}
				seen[ts] = true
			}
		}()
	}
	wg.Wait()
}

func TestReplayFilter(t *testing.T) {
	const sec = uint64(time.Second)
	base := uint64(1_700_000_000) * sec
	window := uint64(ReplayWindow)
	a, b := testKey("a").Public(), testKey("b").Public()
	var f ReplayFilter // zero value must work
	steps := []struct {
		key    PublicKey
		ts     uint64
		replay bool
	}{
		{a, base, false},
		{a, base, true},                 // exact replay
		{b, base, false},                // other keys are independent
		{a, base + 10*sec, false},       // newer
		{a, base + 5*sec, false},        // out of order, inside window, unseen
		{a, base + 5*sec, true},         // ... but only once
		{a, base + window, false},       // greatest moves up
		{a, base - 1, true},             // now older than greatest-window
		{a, base + 10*sec, true},        // still remembered
		{a, base + 10*sec + 1, false},   // within window, unseen
		{b, base - 10*sec, false},       // b's window is its own
		{b, base - window - sec, true},  // older than b's greatest-window
		{a, base + 3*window, false},     // jump ahead
		{a, base + 2*window - 1, true},  // far below now
		{a, base + 3*window - 1, false}, // just below, unseen
	}
	for i, s := range steps {
		err := f.check(s.key, s.ts)
		if s.replay != errors.Is(err, ErrReplay) || (!s.replay && err != nil) {
			t.Errorf("step %d (ts %d): err %v, want replay=%v", i, s.ts, err, s.replay)
		}
	}
}

func TestReplayFilterCapacity(t *testing.T) {
	st := &replayState{}
	base := uint64(1_700_000_000) * uint64(time.Second)
	// All inside the window, so nothing ages out and capacity alone forces
	// evictions.
	n := replayCap + 10
	for i := 1; i <= n; i++ {
		if err := st.check(base + uint64(i)); err != nil {
			t.Fatalf("insert %d: %v", i, err)
		}
	}
	if len(st.seen) != replayCap {
		t.Fatalf("remembered %d timestamps, want cap %d", len(st.seen), replayCap)
	}
	// The 10 evicted (smallest) ones must stay refused, and so must anything
	// below them that was never seen.
	for i := 1; i <= 10; i++ {
		if err := st.check(base + uint64(i)); !errors.Is(err, ErrReplay) {
			t.Errorf("evicted timestamp %d accepted: %v", i, err)
		}
	}
	if err := st.check(base); !errors.Is(err, ErrReplay) {
		t.Errorf("timestamp below floor accepted: %v", err)
	}
	if err := st.check(base + uint64(n) + 1); err != nil {
		t.Errorf("new timestamp refused: %v", err)
	}
}

func TestReplayFilterConcurrent(t *testing.T) {
	f := NewReplayFilter()
	keys := []PublicKey{testKey("a").Public(), testKey("b").Public()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted := 0
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				// Every goroutine offers the same timestamps: each must be
				// accepted exactly once per key.
				if f.check(keys[g%2], 1e18+uint64(i)) == nil {
					mu.Lock()
					accepted++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if accepted != 2*500 {
		t.Errorf("accepted %d, want %d", accepted, 2*500)
	}
}
