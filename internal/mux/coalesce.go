package mux

import (
	"encoding/binary"
	"net"
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

	// flushAt bounds the coalescing buffer: a body larger than this goes
	// out in pieces of this size rather than being buffered whole.
	flushAt = 1 << 20
)

// coalescer sits between yamux's send loop and the encrypted channel. yamux
// writes each frame as two Writes, header then body; the coalescer follows
// the framing and hands each complete frame to the channel as one Write, so
// it is sealed as one record and sent with one syscall.
//
// Only yamux's send loop writes, one frame at a time, so the coalescer
// needs no lock.
type coalescer struct {
	net.Conn
	sw     slicesWriter // the channel, if it seals several slices at once
	buf    []byte       // pending bytes of the current frame
	hdr    int          // header bytes of the current frame seen so far
	remain int          // body bytes of the current frame still to come
}

// slicesWriter writes a header and a body without their being copied
// together first (crypto.Conn).
type slicesWriter interface {
	WriteSlices(ps ...[]byte) (int, error)
}

// directBody is the body size from which a frame is sent as header and body
// slices rather than copied into the buffer: below it, sealing one record
// costs less than the copy saves.
const directBody = 16 << 10

func newCoalescer(c net.Conn) *coalescer {
	sw, _ := c.(slicesWriter)
	return &coalescer{Conn: c, sw: sw, buf: make([]byte, 0, 64<<10)}
}

func (c *coalescer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if c.remain == 0 {
			k := min(frameHeaderSize-c.hdr, len(p))
			c.buf = append(c.buf, p[:k]...)
			c.hdr += k
			p = p[k:]
			if c.hdr < frameHeaderSize {
				break
			}
			h := c.buf[len(c.buf)-frameHeaderSize:]
			c.hdr = 0
			if h[frameType] == typeData {
				c.remain = int(binary.BigEndian.Uint32(h[frameLength:]))
			}
			if c.remain == 0 {
				if err := c.flush(); err != nil {
					return n - len(p), err
				}
			}
			continue
		}
		if c.sw != nil && len(c.buf) == frameHeaderSize && c.remain >= directBody && len(p) >= c.remain {
			// The whole body is here: seal it where it lies.
			k := c.remain
			_, err := c.sw.WriteSlices(c.buf, p[:k])
			c.buf = c.buf[:0]
			c.remain = 0
			p = p[k:]
			if err != nil {
				return n - len(p), err
			}
			continue
		}
		k := min(c.remain, len(p), flushAt-len(c.buf))
		c.buf = append(c.buf, p[:k]...)
		c.remain -= k
		p = p[k:]
		if c.remain == 0 || len(c.buf) >= flushAt {
			if err := c.flush(); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

func (c *coalescer) flush() error {
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}
