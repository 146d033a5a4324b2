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

// Sealing thresholds. A body of at least directBody bytes arriving in one
// Write is sealed straight from yamux's buffer instead of being copied
// first. Whole frames wait unsealed, to share records, while the flusher
// is in a write, until sealAt bytes of them have gathered.
const (
	directBody = 16 << 10
	sealAt     = 64 << 10
)

// recordWriter is what a batcher needs from the channel below: turning
// plaintext into records appended to a buffer, and writing such records.
// *crypto.Conn provides both; plainWriter stands in for any other conn.
type recordWriter interface {
	AppendRecords(dst, p []byte) ([]byte, error)
	WriteRecords(b []byte) error
}

// plainWriter makes a plain net.Conn a recordWriter whose records are the
// plaintext itself.
type plainWriter struct{ net.Conn }

func (w plainWriter) AppendRecords(dst, p []byte) ([]byte, error) { return append(dst, p...), nil }

func (w plainWriter) WriteRecords(b []byte) error {
	_, err := w.Conn.Write(b)
	return err
}

// batcher sits between yamux's send loop and the encrypted channel. yamux
// writes every frame with two Writes, header then body, each of which would
// become a record and a syscall of its own. The batcher follows the framing,
// seals whole frames into records and hands them to a flusher goroutine.
// While the flusher is in a write, frames pile up; its next write takes all
// of them at once, in as few records and syscalls as their size allows. A
// frame is never split across flushes at a point the peer could act on half
// of it, and a lone frame pays one goroutine hand-off.
//
// Sealing happens in Write, on yamux's send loop, while the flusher is in a
// system call: a large body is sealed from yamux's buffer where it lies
// (yamux has already copied it once), and small frames are gathered in
// plaintext and sealed together. The records leave in the order they were
// sealed, which is the order of their nonces.
//
// Measured on the 2-core development VM with fio's nbd engine against dst
// attach (4 KiB, QD32), against writing each frame from yamux's send loop:
// random reads 67k vs 55k IOPS, random writes 60k vs 47k.
//
// Locking: mu guards every field below it. yamux's send loop is the only
// caller of Write; the flusher is the only writer to the channel.
type batcher struct {
	net.Conn
	rw      recordWriter
	mu      sync.Mutex
	space   sync.Cond // signalled when the flusher took out
	plain   []byte    // unsealed bytes from yamux
	whole   int       // plain[:whole] are whole frames
	out     []byte    // sealed records, in nonce order
	outN    int       // out[:outN] hold whole frames only
	spare   []byte    // the flusher's last buffer, reused
	writing bool      // the flusher is in a write
	err     error     // the first sealing or write error, sticky
	closing bool

	// Frame parser, fed by Write.
	hdr    [frameHeaderSize]byte
	hdrN   int
	remain int

	wake chan struct{}
	done chan struct{} // closed when the flusher exits
}

func newBatcher(c net.Conn) *batcher {
	rw, ok := c.(recordWriter)
	if !ok {
		rw = plainWriter{c}
	}
	b := &batcher{
		Conn:  c,
		rw:    rw,
		plain: make([]byte, 0, sealAt),
		out:   make([]byte, 0, 256<<10),
		spare: make([]byte, 0, 256<<10),
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	b.space.L = &b.mu
	go b.flushLoop()
	return b
}

func (b *batcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	// Wait for room only while the flusher has something to take: a
	// frame larger than maxPending must still be let in whole.
	for b.err == nil && !b.closing && len(b.out)+len(b.plain) >= maxPending && (b.outN > 0 || b.writing) {
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
	q := p
	if b.hdrN == 0 && b.remain >= directBody && len(q) >= directBody {
		// A large body: seal what precedes it, then the body in place.
		// plain holds whole frames, then this frame's header and
		// perhaps the start of its body.
		n := min(len(q), b.remain)
		b.seal()
		if b.err == nil && len(b.plain) > 0 {
			b.out, b.err = b.rw.AppendRecords(b.out, b.plain)
			b.plain = b.plain[:0]
		}
		if b.err == nil {
			b.out, b.err = b.rw.AppendRecords(b.out, q[:n])
		}
		b.remain -= n
		if b.remain == 0 {
			b.outN = len(b.out)
		}
		q = q[n:]
	}
	if len(q) > 0 {
		start := len(b.plain)
		b.plain = append(b.plain, q...)
		b.scan(start)
	}
	if !b.writing || b.whole >= sealAt {
		b.seal()
	}
	err := b.err
	kick := b.outN > 0 || b.whole > 0
	b.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if kick {
		b.poke()
	}
	return len(p), nil
}

// poke wakes the flusher. Every Write that leaves something for it pokes,
// so a flusher busy in a write finds the wake-up waiting when it is done.
func (b *batcher) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// seal moves the whole frames in plain into out as records.
func (b *batcher) seal() {
	if b.whole == 0 || b.err != nil {
		return
	}
	b.out, b.err = b.rw.AppendRecords(b.out, b.plain[:b.whole])
	b.outN = len(b.out)
	b.plain = b.plain[:copy(b.plain, b.plain[b.whole:])]
	b.whole = 0
}

// scan follows the framing through plain[from:] and moves whole to the
// end of the last whole frame.
func (b *batcher) scan(from int) {
	p := b.plain[from:]
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
				b.whole = pos
			}
			continue
		}
		k := min(b.remain, len(p))
		b.remain -= k
		p, pos = p[k:], pos+k
		if b.remain == 0 {
			b.whole = pos
		}
	}
}

// flushLoop writes whole frames as they become ready, until Close or a
// write error.
func (b *batcher) flushLoop() {
	defer close(b.done)
	for range b.wake {
		b.mu.Lock()
		b.seal() // frames Write left unsealed while we were writing
		if b.outN == 0 || b.err != nil {
			closing := b.closing || b.err != nil
			b.mu.Unlock()
			if closing {
				return
			}
			continue
		}
		buf := b.out[:b.outN]
		b.out = append(b.spare[:0], b.out[b.outN:]...)
		b.outN = 0
		b.spare = nil
		b.writing = true
		b.space.Broadcast()
		b.mu.Unlock()

		err := b.rw.WriteRecords(buf)

		b.mu.Lock()
		b.writing = false
		b.spare = buf[:0]
		if err != nil && b.err == nil {
			b.err = err
		}
		b.space.Broadcast()
		closing := b.closing && b.whole == 0 && b.outN == 0
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
	b.poke()
	select {
	case <-b.done:
	case <-time.After(time.Second):
	}
	return b.Conn.Close()
}
