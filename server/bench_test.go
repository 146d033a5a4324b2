package server_test

import (
	"io"
	"testing"

	"github.com/dstproject/dst/wire"
)

// BenchmarkRead4K measures the data path over net.Pipe and yamux, without
// crypto: 4 KiB READs at queue depths 1 and 32. allocs/op counts the whole
// process, client and yamux included.
func BenchmarkRead4K(b *testing.B) {
	for _, qd := range []int{1, 32} {
		b.Run(map[int]string{1: "QD1", 32: "QD32"}[qd], func(b *testing.B) {
			benchRead(b, qd, 4096)
		})
	}
}

func benchRead(b *testing.B, qd int, size uint32) {
	e := newEnv(b, exportSpec{name: "disk", size: 64 << 20})
	c := e.openRaw(e.cli, "disk")
	slots := make(chan struct{}, qd)
	done := make(chan error, 1)
	n := b.N
	go func() {
		buf := make([]byte, wire.ReplySize+int(size))
		for range n {
			if _, err := io.ReadFull(c.st, buf); err != nil {
				done <- err
				return
			}
			if r, err := wire.DecodeReply(buf); err != nil || r.Status != wire.StatusOK {
				done <- err
				return
			}
			<-slots
		}
		done <- nil
	}()
	var hdr [wire.RequestSize]byte
	blocks := uint64(64<<20) / uint64(size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range n {
		slots <- struct{}{}
		(&wire.Request{Cmd: wire.CmdRead, ID: uint64(i), Offset: uint64(i) % blocks * uint64(size), Length: size}).Encode(hdr[:])
		if _, err := c.st.Write(hdr[:]); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "ops/s")
}
