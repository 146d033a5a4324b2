package nbd_test

import (
	"bytes"
	"sync"
	"testing"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/client/nbd/nbdtest"
	"github.com/dstproject/dst/internal/nbdwire"
)

// batchDevice is a MemDevice that takes batches and records their sizes.
type batchDevice struct {
	*nbdtest.MemDevice
	mu      sync.Mutex
	batches []int
}

func (d *batchDevice) SubmitBatch(rs []*nbd.Request) {
	d.mu.Lock()
	d.batches = append(d.batches, len(rs))
	d.mu.Unlock()
	for _, r := range rs {
		d.MemDevice.Submit(r)
	}
}

func (d *batchDevice) stats() (calls, largest, total int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range d.batches {
		largest = max(largest, n)
		total += n
	}
	return len(d.batches), largest, total
}

// TestSubmitBatch pipelines more requests than the connection admits at
// once into a device that holds them: the front end must submit what it
// gathered before it waits for budget (else nothing would ever complete),
// and requests that arrived together must go to the device together.
func TestSubmitBatch(t *testing.T) {
	const size, block, n = 1 << 20, 4096, 400 // n > the 256 admitted at once
	dev := &batchDevice{MemDevice: nbdtest.NewMemDevice(size)}
	e := &nbd.Export{Name: "mem", Size: size, Flush: true, FUA: true, Device: dev}
	ts := startConn(t, kindUnix, &nbd.Server{Exports: []*nbd.Export{e}})
	c := ts.cli
	c.goTransmission("")

	dev.Pause()
	calls := make([]*call, n)
	for i := range calls {
		calls[i] = newCall()
		data := bytes.Repeat([]byte{byte(i)}, block)
		off := uint64(i%(size/block)) * block
		if i >= size/block {
			// Second pass over the disk: reads, so nothing races the writes.
			calls[i].read = make([]byte, block)
			if err := c.start(calls[i], nbdwire.CmdRead, 0, off, block, nil); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := c.start(calls[i], nbdwire.CmdWrite, 0, off, block, data); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return dev.Held() >= 256 })
	dev.Resume()
	for i, cl := range calls {
		if e, err := c.wait(cl); e != 0 || err != nil {
			t.Fatalf("request %d: %v %v", i, e, err)
		}
	}
	batches, largest, total := dev.stats()
	if total != n {
		t.Fatalf("device saw %d requests, want %d", total, n)
	}
	if largest < 2 {
		t.Errorf("no batch held more than one request (%d batches)", batches)
	}
	t.Logf("%d requests in %d batches, largest %d", total, batches, largest)
	c.disc()
	if err := ts.wait(t); err != nil {
		t.Errorf("ServeConn = %v", err)
	}
}
