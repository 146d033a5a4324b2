package mux

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
)

// recordConn records each Write it receives as one record.
type recordConn struct {
	net.Conn
	writes [][]byte
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.writes = append(r.writes, append([]byte(nil), p...))
	return len(p), nil
}

func frame(typ byte, length uint32, body []byte) []byte {
	h := make([]byte, frameHeaderSize)
	h[0] = 0
	h[frameType] = typ
	binary.BigEndian.PutUint32(h[frameLength:], length)
	return append(h, body...)
}

func TestCoalescerOneWritePerFrame(t *testing.T) {
	body := bytes.Repeat([]byte{0xab}, 5000)
	frames := [][]byte{
		frame(typeData, uint32(len(body)), body), // data with body
		frame(1, 1<<20, nil),                     // window update: length is a delta
		frame(typeData, 0, nil),                  // SYN/FIN-only data frame
		frame(2, 7, nil),                         // ping
		frame(typeData, 3, []byte("xyz")),
	}
	for _, split := range []int{0, 1, 5, 12, 13, 100} {
		rc := &recordConn{}
		c := newCoalescer(rc)
		for _, f := range frames {
			// yamux writes header, then body; also try odd splits.
			parts := [][]byte{f}
			if split > 0 && split < len(f) {
				parts = [][]byte{f[:split], f[split:]}
			}
			for _, p := range parts {
				if n, err := c.Write(p); err != nil || n != len(p) {
					t.Fatalf("split %d: Write = %d, %v", split, n, err)
				}
			}
		}
		if len(rc.writes) != len(frames) {
			t.Fatalf("split %d: %d writes for %d frames", split, len(rc.writes), len(frames))
		}
		for i := range frames {
			if !bytes.Equal(rc.writes[i], frames[i]) {
				t.Fatalf("split %d: write %d differs from frame", split, i)
			}
		}
	}
}

func TestCoalescerBoundsBuffer(t *testing.T) {
	body := make([]byte, 3*flushAt+17)
	rc := &recordConn{}
	c := newCoalescer(rc)
	f := frame(typeData, uint32(len(body)), body)
	if _, err := c.Write(f[:frameHeaderSize]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(f[frameHeaderSize:]); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for _, w := range rc.writes {
		if len(w) > flushAt {
			t.Fatalf("write of %d bytes exceeds %d", len(w), flushAt)
		}
		got = append(got, w...)
	}
	if !bytes.Equal(got, f) {
		t.Fatal("bytes changed in transit")
	}
}

// slicesConn records WriteSlices calls.
type slicesConn struct {
	recordConn
	slices [][][]byte
}

func (s *slicesConn) WriteSlices(ps ...[]byte) (int, error) {
	var cp [][]byte
	n := 0
	for _, p := range ps {
		cp = append(cp, append([]byte(nil), p...))
		n += len(p)
	}
	s.slices = append(s.slices, cp)
	return n, nil
}

func TestCoalescerLargeBodyAsSlices(t *testing.T) {
	body := bytes.Repeat([]byte{7}, directBody)
	small := []byte("small")
	sc := &slicesConn{}
	c := newCoalescer(sc)
	for _, f := range [][]byte{frame(typeData, uint32(len(body)), body), frame(typeData, uint32(len(small)), small)} {
		c.Write(f[:frameHeaderSize])
		c.Write(f[frameHeaderSize:])
	}
	if len(sc.slices) != 1 || len(sc.slices[0]) != 2 || len(sc.slices[0][0]) != frameHeaderSize ||
		!bytes.Equal(sc.slices[0][1], body) {
		t.Fatalf("large frame: got %d WriteSlices calls", len(sc.slices))
	}
	if len(sc.writes) != 1 || !bytes.Equal(sc.writes[0][frameHeaderSize:], small) {
		t.Fatalf("small frame: got %d writes", len(sc.writes))
	}
}
