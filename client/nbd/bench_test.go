package nbd_test

import (
	"net"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/internal/nbdwire"
)

// benchClient connects a tclient to a Server over a unix socket.
func benchClient(b *testing.B) *tclient {
	e, _ := memExport(64 << 20)
	path, _ := serveUnix(b, &nbd.Server{Exports: []*nbd.Export{e}})
	nc, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nc.Close() })
	c := newTClient(b, nc)
	c.goTransmission("")
	return c
}

// readLoop4K issues 4 KiB reads over a reused call until more returns false.
func readLoop4K(b *testing.B, c *tclient, seed uint64, more func() bool) {
	cl := newCall()
	cl.read = make([]byte, 4096)
	off := seed * 4096
	for more() {
		off = (off + 7*4096) % (64 << 20)
		if err := c.start(cl, nbdwire.CmdRead, 0, off, 4096, nil); err != nil {
			b.Error(err)
			return
		}
		if e, err := c.wait(cl); e != 0 || err != nil {
			b.Errorf("read: %v %v", e, err)
			return
		}
	}
}

func BenchmarkRead4KQD1(b *testing.B) {
	c := benchClient(b)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	readLoop4K(b, c, 0, b.Loop)
}

func BenchmarkRead4KQD32(b *testing.B) {
	c := benchClient(b)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.SetParallelism((32 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)) // ~32 client goroutines
	b.ResetTimer()
	var seed atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		readLoop4K(b, c, seed.Add(1), pb.Next)
	})
}

// BenchmarkRead256KQD8 measures bulk throughput: 8 readers of 256 KiB.
func BenchmarkRead256KQD8(b *testing.B) {
	c := benchClient(b)
	b.SetBytes(256 << 10)
	b.ReportAllocs()
	b.SetParallelism((8 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	var seed atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		cl := newCall()
		cl.read = make([]byte, 256<<10)
		off := seed.Add(1) * (256 << 10)
		for pb.Next() {
			off = (off + 3*(256<<10)) % (64 << 20)
			if err := c.start(cl, nbdwire.CmdRead, 0, off, 256<<10, nil); err != nil {
				b.Error(err)
				return
			}
			if e, err := c.wait(cl); e != 0 || err != nil {
				b.Errorf("read: %v %v", e, err)
				return
			}
		}
	})
}

// BenchmarkWrite256KQD8 is the same for writes (payload read path).
func BenchmarkWrite256KQD8(b *testing.B) {
	c := benchClient(b)
	b.SetBytes(256 << 10)
	b.ReportAllocs()
	b.SetParallelism((8 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	var seed atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		cl := newCall()
		data := make([]byte, 256<<10)
		off := seed.Add(1) * (256 << 10)
		for pb.Next() {
			off = (off + 3*(256<<10)) % (64 << 20)
			if err := c.start(cl, nbdwire.CmdWrite, 0, off, 256<<10, data); err != nil {
				b.Error(err)
				return
			}
			if e, err := c.wait(cl); e != 0 || err != nil {
				b.Errorf("write: %v %v", e, err)
				return
			}
		}
	})
}
