package nbd_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/client/nbd/nbdtest"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/testsupport"
)

// streamConn is a connection whose client has already sent everything: it
// reads from a fixed stream, recording the size of every read, and
// discards what is written to it.
type streamConn struct {
	net.Conn // nil; only the methods below are used
	mu       sync.Mutex
	src      *bytes.Reader
	asked    []int
}

func (c *streamConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked = append(c.asked, len(p))
	return c.src.Read(p)
}

func (c *streamConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *streamConn) Close() error                     { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "test", Net: "unix"} }
func (c *streamConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "test", Net: "unix"} }

// TestBigWritesBypassReadBuffer sends a stream of 256 KiB WRITEs, then
// small ones: the big payloads, and the header after each, are read
// straight from the socket, so no byte of a payload passes through the
// 64 KiB read buffer and is copied twice; small requests are still
// fetched many per read.
func TestBigWritesBypassReadBuffer(t *testing.T) {
	const size, big, small, nbig, nsmall = 8 << 20, 256 << 10, 4096, 16, 64
	rng := rand.New(rand.NewPCG(3, 4))
	want := make([]byte, size)
	var stream []byte
	write := func(i int, off uint64, n int) {
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		copy(want[off:], data)
		stream = nbdwire.Request{Cmd: nbdwire.CmdWrite, Cookie: uint64(i), Offset: off, Length: uint32(n)}.Append(stream)
		stream = append(stream, data...)
	}
	for i := range nbig {
		write(i, uint64(i)*big, big)
	}
	for i := range nsmall {
		write(nbig+i, uint64(nbig*big+i*small), small)
	}
	stream = nbdwire.Request{Cmd: nbdwire.CmdDisc}.Append(stream)

	dev := nbdtest.NewMemDevice(size)
	e := &nbd.Export{Name: "mem", Size: size, Flush: true, FUA: true, Device: dev}
	c := &streamConn{src: bytes.NewReader(stream)}
	if err := nbd.ServeTransmission(context.Background(), c, e, testsupport.Logger(t)); err != nil {
		t.Fatalf("ServeTransmission = %v", err)
	}
	if !bytes.Equal(dev.Bytes(), want) {
		t.Fatal("device contents differ from what was written")
	}

	// Reads into the read buffer ask for all of it (64 KiB); count them and
	// what they could have taken in.
	var fills, total int
	for _, n := range c.asked {
		total += n
		if n == 64<<10 {
			fills++
		}
	}
	// The first header fills the buffer; after that, only the small
	// requests do, a few reads for all of them.
	if most := 1 + (nsmall*(small+nbdwire.RequestSize))/(64<<10) + 2; fills > most {
		t.Errorf("%d reads through the 64 KiB buffer, want at most %d (reads asked for %v)", fills, most, c.asked)
	}
	t.Logf("%d reads, %d through the buffer, for %d bytes", len(c.asked), fills, len(stream))
}
