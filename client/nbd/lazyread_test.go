package nbd_test

import (
	"bytes"
	"sync/atomic"
	"testing"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/client/nbd/nbdtest"
	"github.com/dstproject/dst/internal/nbdwire"
)

// lazyDevice is a MemDevice behind an Export with LazyReadBuffers: it
// checks that READs come without a buffer, and takes one with ReadBuffer
// before it reads, except at offset forget, where it answers success
// without ever taking one, as a broken Device would.
type lazyDevice struct {
	*nbdtest.MemDevice
	forget  uint64
	eager   atomic.Int64 // READs that arrived with Data set
	forgets atomic.Int64
}

func (d *lazyDevice) Submit(r *nbd.Request) {
	if r.Cmd != nbdwire.CmdRead {
		d.MemDevice.Submit(r)
		return
	}
	if r.Data != nil {
		d.eager.Add(1)
	}
	if r.Offset == d.forget {
		d.forgets.Add(1)
		r.Complete(nil)
		return
	}
	buf := r.ReadBuffer()
	if len(buf) != int(r.Length) || &buf[0] != &r.Data[0] {
		panic("ReadBuffer did not return Data of Length bytes")
	}
	d.MemDevice.Submit(r)
}

// TestLazyReadBuffers: with LazyReadBuffers a READ reaches the Device
// with no buffer, and the one ReadBuffer takes carries the data back; a
// Device that answers a READ without taking a buffer gets EIO sent for
// it, not a reply whose data never follows, and the connection goes on.
func TestLazyReadBuffers(t *testing.T) {
	const size, forget = 1 << 20, 512 << 10
	e, mem := memExport(size)
	dev := &lazyDevice{MemDevice: mem, forget: forget}
	e.Device, e.LazyReadBuffers = dev, true
	ts := startConn(t, kindUnix, &nbd.Server{Exports: []*nbd.Export{e}})
	c := ts.cli
	c.goTransmission("")

	want := make([]byte, 256<<10)
	for i := range want {
		want[i] = byte(i * 7)
	}
	if got := c.mustDo(nbdwire.CmdWrite, 0, 64<<10, uint32(len(want)), want, nil); got != 0 {
		t.Fatalf("write: %v", got)
	}
	for range 3 {
		got := make([]byte, len(want))
		if errno := c.mustDo(nbdwire.CmdRead, 0, 64<<10, uint32(len(got)), nil, got); errno != 0 {
			t.Fatalf("read: %v", errno)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("read back differs from what was written")
		}
		if errno := c.mustDo(nbdwire.CmdRead, 0, forget, 4096, nil, make([]byte, 4096)); errno != nbdwire.EIO {
			t.Fatalf("read the device answered without a buffer: %v, want EIO", errno)
		}
	}
	if n := dev.eager.Load(); n != 0 {
		t.Errorf("%d READs reached the device with a buffer already taken", n)
	}
	if n := dev.forgets.Load(); n != 3 {
		t.Errorf("the device answered %d READs without a buffer, want 3", n)
	}
	c.disc()
	if err := ts.wait(t); err != nil {
		t.Errorf("ServeConn = %v", err)
	}
}
