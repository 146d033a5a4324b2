package nbd_test

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/client/nbd/nbdtest"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/testsupport"
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

// captureDevice hands every request it gets to the test.
type captureDevice struct{ got chan *nbd.Request }

func (d captureDevice) Submit(r *nbd.Request) { d.got <- r }

// recordingConn keeps what is written to it, and counts the writes.
type recordingConn struct {
	net.Conn
	mu     sync.Mutex
	out    bytes.Buffer
	writes int
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	return c.out.Write(p)
}

func (c *recordingConn) written() ([]byte, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes()), c.writes
}

// TestCompleteDeferred completes three requests as one burst: nothing is
// written until the connection CompleteDeferred returned is flushed, and
// then the three replies go out in one write.
func TestCompleteDeferred(t *testing.T) {
	const size, block = 1 << 20, 4096
	dev := captureDevice{got: make(chan *nbd.Request, 8)}
	e := &nbd.Export{Name: "mem", Size: size, Device: dev}
	cli, srv := net.Pipe()
	conn := &recordingConn{Conn: srv}
	served := make(chan error, 1)
	go func() { served <- nbd.ServeTransmission(context.Background(), conn, e, testsupport.Logger(t)) }()

	var reqs []byte
	for i := range 3 {
		reqs = nbdwire.Request{Cmd: nbdwire.CmdRead, Cookie: uint64(i), Offset: uint64(i) * block, Length: block}.Append(reqs)
	}
	if _, err := cli.Write(reqs); err != nil {
		t.Fatal(err)
	}
	var flusher interface{ Flush() }
	for i := range 3 {
		r := <-dev.got
		for j := range r.Data {
			r.Data[j] = byte(r.Offset/block) + 1
		}
		f := r.CompleteDeferred(nil)
		if f == nil || (flusher != nil && f != flusher) {
			t.Fatalf("request %d: CompleteDeferred returned %v, want the connection (%v)", i, f, flusher)
		}
		flusher = f
		// Complete would have written the reply by now, from this goroutine.
		if _, n := conn.written(); n != 0 {
			t.Fatalf("request %d: %d writes before the flush, want 0", i, n)
		}
	}
	flusher.Flush()
	out, n := conn.written()
	if n != 1 {
		t.Errorf("%d writes for the burst of 3 replies, want 1", n)
	}
	if len(out) != 3*(nbdwire.SimpleReplySize+block) {
		t.Fatalf("wrote %d bytes, want 3 replies of %d", len(out), nbdwire.SimpleReplySize+block)
	}
	for i := range 3 {
		b := out[i*(nbdwire.SimpleReplySize+block):]
		rep, err := nbdwire.DecodeSimpleReply(b)
		if err != nil || rep.Errno != 0 || b[nbdwire.SimpleReplySize] != byte(rep.Cookie)+1 {
			t.Fatalf("reply %d: %+v, %v, data %d", i, rep, err, b[nbdwire.SimpleReplySize])
		}
	}
	if _, err := cli.Write(nbdwire.Request{Cmd: nbdwire.CmdDisc}.Append(nil)); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("ServeTransmission = %v", err)
	}
}
