package crypto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The first handshake message carries a TAI64N-style timestamp: an 8-byte
// big-endian label 2^62 + Unix seconds, then 4 bytes big-endian nanoseconds.
// Only the client's own clock matters: the server compares timestamps of one
// client key with each other, never with its own clock.
const (
	timestampLen   = 12
	tai64Base      = uint64(1) << 62
	maxStampSecond = uint64(1) << 33 // year ~2242; keeps Unix nanoseconds in an int64
)

// lastStamp is the last timestamp this process issued, in Unix nanoseconds.
var lastStamp atomic.Uint64

// nextTimestamp returns the current time in Unix nanoseconds, bumped so that
// it is strictly greater than any value returned before in this process,
// even under concurrent calls or a clock step backwards.
func nextTimestamp() uint64 {
	now := uint64(time.Now().UnixNano())
	for {
		last := lastStamp.Load()
		next := max(now, last+1)
		if lastStamp.CompareAndSwap(last, next) {
			return next
		}
	}
}

func putTimestamp(dst []byte, unixNano uint64) {
	binary.BigEndian.PutUint64(dst[0:8], tai64Base+unixNano/1e9)
	binary.BigEndian.PutUint32(dst[8:12], uint32(unixNano%1e9))
}

var errBadTimestamp = errors.New("malformed timestamp")

// parseTimestamp returns the timestamp in Unix nanoseconds.
func parseTimestamp(b []byte) (uint64, error) {
	if len(b) != timestampLen {
		return 0, fmt.Errorf("%w: %d bytes, want %d", errBadTimestamp, len(b), timestampLen)
	}
	label := binary.BigEndian.Uint64(b[0:8])
	nsec := binary.BigEndian.Uint32(b[8:12])
	if label < tai64Base || label-tai64Base >= maxStampSecond || nsec >= 1e9 {
		return 0, fmt.Errorf("%w: label %#x nanoseconds %d", errBadTimestamp, label, nsec)
	}
	return (label-tai64Base)*1e9 + uint64(nsec), nil
}

// Replay window parameters. A first message is accepted when its timestamp
// is no older than ReplayWindow below the greatest seen for that client key
// and has not been seen before. Within the window, up to replayCap recent
// timestamps per key are remembered; when the set overflows, the oldest are
// dropped and everything at or below them is refused from then on.
const (
	ReplayWindow = 2 * time.Minute
	replayCap    = 4096
)

// ReplayFilter remembers recent handshake timestamps per client key so a
// captured first message cannot be replayed. One filter is shared by all
// connections of a server. The zero value is ready to use; it is safe for
// concurrent use. Its memory is bounded by replayCap timestamps per key, and
// only authorized keys are ever recorded.
type ReplayFilter struct {
	mu   sync.Mutex
	keys map[PublicKey]*replayState
}

type replayState struct {
	greatest uint64
	floor    uint64   // timestamps <= floor were evicted: refuse them
	seen     []uint64 // sorted; all > greatest-window and > floor
}

// NewReplayFilter returns an empty filter.
func NewReplayFilter() *ReplayFilter { return &ReplayFilter{} }

// check records ts for key k, or returns an error wrapping ErrReplay.
func (f *ReplayFilter) check(k PublicKey, ts uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.keys == nil {
		f.keys = make(map[PublicKey]*replayState)
	}
	st := f.keys[k]
	if st == nil {
		st = &replayState{}
		f.keys[k] = st
	}
	return st.check(ts)
}

func (st *replayState) check(ts uint64) error {
	window := uint64(ReplayWindow)
	if st.greatest > window && ts < st.greatest-window {
		return fmt.Errorf("timestamp %s is more than %v older than the newest seen (%s): %w",
			stampString(ts), ReplayWindow, stampString(st.greatest), ErrReplay)
	}
	if st.floor > 0 && ts <= st.floor {
		return fmt.Errorf("timestamp %s is at or below the oldest evicted one: %w", stampString(ts), ErrReplay)
	}
	i, found := slices.BinarySearch(st.seen, ts)
	if found {
		return fmt.Errorf("timestamp %s was already used: %w", stampString(ts), ErrReplay)
	}
	st.seen = slices.Insert(st.seen, i, ts)
	if ts > st.greatest {
		st.greatest = ts
	}
	st.prune()
	return nil
}

// prune drops timestamps that fell out of the window (they are refused by
// the window test anyway) and, over capacity, the oldest ones (raising the
// floor so they stay refused).
func (st *replayState) prune() {
	drop := 0
	if window := uint64(ReplayWindow); st.greatest > window {
		drop, _ = slices.BinarySearch(st.seen, st.greatest-window)
	}
	if over := len(st.seen) - drop - replayCap; over > 0 {
		drop += over
		st.floor = max(st.floor, st.seen[drop-1])
	}
	if drop > 0 {
		st.seen = slices.Delete(st.seen, 0, drop)
	}
}

func stampString(ns uint64) string {
	return time.Unix(0, int64(ns)).UTC().Format(time.RFC3339Nano)
}
