package mux

import (
	"encoding/binary"
	"net"
	"sync"
	"time"
)

// yamux frame header, as yamux's spec.md lays it out: version u8, type u8,
// flags u16, stream id u32, length u32. Only data frames have a body, of
// length bytes; for the other types length is a window delta, a ping value
// or an error code.
const (
	frameHeaderSize = 12
	frameType       = 1
	frameLength     = 8
	typeData        = 0
)

// maxPending bounds the bytes a batcher holds for its flusher; yamux's send
// loop waits beyond it, which pushes back on the streams.
const maxPending = 4 << 20

// batcher sits between yamux's send loop and the encrypted channel. yamux
// writes every frame with two Writes, header then body, each of which would
// become a record and a syscall of its own. The batcher follows the framing
// and hands whole frames to a flusher goroutine. While the flusher is in a
// write, frames pile up; its next write takes all whole frames at once,
// sealed in as few records and written with as few syscalls as their size
// allows. A frame is never split across flushes at a point the peer could
// act on half of it, and a lone frame pays one goroutine hand-off.
//
// Measured on the 2-core development VM with fio's nbd engine against dst
// attach (4 KiB, QD32), against writing each frame from yamux's send loop:
// random reads 67k vs 55k IOPS, random writes 60k vs 47k.
//
// Locking: mu guards pending, ready, err and closing. yamux's send loop is
// the only writer; the flusher is the only reader of pending.
type batcher struct {
	net.Conn
	mu      sync.Mutex
	space   sync.Cond // signalled when the flusher took pending
	pending []byte    // bytes from yamux, whole frames first
	ready   int       // pending[:ready] are whole frames
	spare   []byte    // the other buffer, reused
	err     error     // the flusher's write error, sticky
	closing bool

	// Frame parser, owned by the send loop (under mu).
	hdr    [frameHeaderSize]byte
	hdrN   int
	remain int

	wake chan struct{}
	done chan struct{} // closed when the flusher exits
}

func newBatcher(c net.Conn) *batcher {
	b := &batcher{
		Conn:    c,
		pending: make([]byte, 0, 256<<10),
		spare:   make([]byte, 0, 256<<10),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	b.space.L = &b.mu
	go b.flushLoop()
	return b
}

func (b *batcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	for b.err == nil && !b.closing && len(b.pending) >= maxPending {
		b.space.Wait()
	}
	if b.err != nil || b.closing {
		err := b.err
		b.mu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		return 0, err
	}
	start := len(b.pending)
	b.pending = append(b.pending, p...)
	b.scan(start)
	kick := b.ready > 0
	b.mu.Unlock()
	if kick {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// scan follows the framing through pending[from:] and moves ready to the
// end of the last whole frame.
func (b *batcher) scan(from int) {
	p := b.pending[from:]
	pos := from
	for len(p) > 0 {
		if b.remain == 0 {
			k := copy(b.hdr[b.hdrN:], p)
			b.hdrN += k
			p, pos = p[k:], pos+k
			if b.hdrN < frameHeaderSize {
				return
			}
			b.hdrN = 0
			if b.hdr[frameType] == typeData {
				b.remain = int(binary.BigEndian.Uint32(b.hdr[frameLength:]))
			}
			if b.remain == 0 {
				b.ready = pos
			}
			continue
		}
		k := min(b.remain, len(p))
		b.remain -= k
		p, pos = p[k:], pos+k
		if b.remain == 0 {
			b.ready = pos
		}
	}
}

// flushLoop writes whole frames as they become ready, until Close or a
// write error.
func (b *batcher) flushLoop() {
	defer close(b.done)
	for range b.wake {
		b.mu.Lock()
		if b.ready == 0 {
			closing := b.closing
			b.mu.Unlock()
			if closing {
				return
			}
			continue
		}
		out := b.pending[:b.ready]
		b.pending = append(b.spare[:0], b.pending[b.ready:]...)
		b.spare = nil
		b.ready = 0
		b.space.Broadcast()
		b.mu.Unlock()

		_, err := b.Conn.Write(out)

		b.mu.Lock()
		b.spare = out[:0]
		if err != nil {
			b.err = err
			b.space.Broadcast()
		}
		closing := b.closing && b.ready == 0
		b.mu.Unlock()
		if err != nil || closing {
			return
		}
	}
}

// Close flushes what is whole (yamux's GoAway, say), waiting a moment at
// most, then closes the channel.
func (b *batcher) Close() error {
	b.mu.Lock()
	if !b.closing {
		b.closing = true
		b.space.Broadcast()
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
	select {
	case <-b.done:
	case <-time.After(time.Second):
	}
	return b.Conn.Close()
}
