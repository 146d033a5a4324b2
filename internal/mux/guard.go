package mux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// yamux's frame header: version, type, flags, stream id, length.
const (
	frameHeaderSize = 12
	frameData       = 0
	frameWindow     = 1
	framePing       = 2
	flagSYN         = 1
)

// Bounds on what a peer may ask of a server's session. yamux answers each
// ping from a goroutine of its own, and keeps each stream a peer opens until
// both sides close it, with a receive window of 256 KiB; neither is bounded
// by yamux itself. A dst client pings every 5 s and opens one stream per
// session, so these leave it ample room.
const (
	pingBurst, pingsPerSecond = 16, 2
	openBurst, opensPerSecond = 32, 4
	// serverBacklog bounds streams opened and not yet accepted; yamux
	// resets those beyond it.
	serverBacklog = 32
)

// ErrFlood ends a session whose peer sent pings or opened streams faster
// than the bounds above.
var ErrFlood = errors.New("mux: peer floods the session")

// guard sits between a server's channel and its yamux session and reads the
// frame headers the peer sends, as they pass, to hold it to the bounds
// above. It parses nothing but headers and skips data payloads by their
// announced length, so the bytes yamux reads are exactly the peer's.
type guard struct {
	net.Conn
	log *slog.Logger

	hdr   [frameHeaderSize]byte
	have  int    // header bytes gathered
	skip  uint32 // data payload bytes before the next header
	pings bucket
	opens bucket
	err   error
}

func newGuard(c net.Conn, log *slog.Logger) *guard {
	now := time.Now()
	return &guard{
		Conn:  c,
		log:   log,
		pings: bucket{tokens: pingBurst, burst: pingBurst, rate: pingsPerSecond, last: now},
		opens: bucket{tokens: openBurst, burst: openBurst, rate: opensPerSecond, last: now},
	}
}

// Read reads from the channel and checks what it read. Once the peer breaks
// a bound, Read returns ErrFlood (wrapped) and yamux ends the session.
func (g *guard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.Conn.Read(p)
	if ferr := g.inspect(p[:n]); ferr != nil {
		g.err = ferr
		g.log.Warn("ending session", "err", ferr)
		return 0, ferr
	}
	return n, err
}

// inspect follows the frame headers in b, which continues what earlier
// calls saw.
func (g *guard) inspect(b []byte) error {
	for len(b) > 0 {
		if g.skip > 0 {
			n := min(uint32(len(b)), g.skip)
			g.skip -= n
			b = b[n:]
			continue
		}
		n := copy(g.hdr[g.have:], b)
		g.have += n
		b = b[n:]
		if g.have < frameHeaderSize {
			return nil
		}
		g.have = 0
		typ := g.hdr[1]
		flags := binary.BigEndian.Uint16(g.hdr[2:4])
		length := binary.BigEndian.Uint32(g.hdr[8:12])
		now := time.Now()
		switch {
		case typ == framePing && flags&flagSYN != 0:
			if !g.pings.take(now) {
				return fmt.Errorf("%w: more than %d pings at once or %d a second", ErrFlood, pingBurst, pingsPerSecond)
			}
		case (typ == frameData || typ == frameWindow) && flags&flagSYN != 0:
			if !g.opens.take(now) {
				return fmt.Errorf("%w: more than %d new streams at once or %d a second", ErrFlood, openBurst, opensPerSecond)
			}
		}
		if typ == frameData {
			g.skip = length
		}
	}
	return nil
}

// bucket is a token bucket: burst tokens, refilled at rate a second.
type bucket struct {
	tokens, burst, rate float64
	last                time.Time
}

func (b *bucket) take(now time.Time) bool {
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
