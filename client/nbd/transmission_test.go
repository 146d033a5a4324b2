package nbd_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/client/nbd/nbdtest"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/testsupport"
)

var kinds = []connKind{kindUnix, kindPipe}

// Many writes and reads in flight with random device latency: every reply
// must carry the right data for its cookie.
func TestConcurrentRandomIO(t *testing.T) {
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			const size, block, n = 1 << 20, 4096, 200
			e, dev := memExport(size)
			dev.SetLatency(2 * time.Millisecond)
			ts := startConn(t, kind, &nbd.Server{Exports: []*nbd.Export{e}})
			c := ts.cli
			c.goTransmission("")

			want := make([]byte, size)
			var wg sync.WaitGroup
			for i := range n { // distinct blocks, so writes do not race each other
				blk := uint64(i % (size / block))
				data := bytes.Repeat([]byte{byte(i + 1)}, block)
				copy(want[blk*block:], data)
				wg.Go(func() {
					if e, err := c.do(nbdwire.CmdWrite, nbdwire.FlagFUA, blk*block, block, data, nil); e != 0 || err != nil {
						t.Errorf("write %d: %v %v", blk, e, err)
					}
				})
			}
			wg.Wait()
			for i := range n {
				off := uint64(rand.IntN(size/block)) * block
				length := uint32(block * (1 + rand.IntN(4)))
				length = min(length, uint32(size-off))
				wg.Go(func() {
					got := make([]byte, length)
					if e, err := c.do(nbdwire.CmdRead, 0, off, length, nil, got); e != 0 || err != nil {
						t.Errorf("read %d: %v %v", i, e, err)
					} else if !bytes.Equal(got, want[off:off+uint64(length)]) {
						t.Errorf("read %d at %d: wrong data", i, off)
					}
				})
			}
			wg.Wait()
			if dev.FUAWrites() != n {
				t.Errorf("FUA writes %d, want %d", dev.FUAWrites(), n)
			}
			c.disc()
			if err := ts.wait(t); err != nil {
				t.Errorf("ServeConn = %v", err)
			}
		})
	}
}

// Held requests released newest first must be answered in that order, i.e.
// the server does not serialise replies behind the oldest request.
func TestOutOfOrderReplies(t *testing.T) {
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			const n = 64
			e, dev := memExport(n * 4096)
			for i := range n {
				dev.WriteAt(bytes.Repeat([]byte{byte(i)}, 4096), int64(i*4096))
			}
			ts := startConn(t, kind, &nbd.Server{Exports: []*nbd.Export{e}})
			c := ts.cli
			c.goTransmission("")
			c.record = true
			dev.Pause()
			calls := make([]*call, n)
			for i := range calls {
				calls[i] = newCall()
				calls[i].read = make([]byte, 4096)
				if err := c.start(calls[i], nbdwire.CmdRead, 0, uint64(i*4096), 4096, nil); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, func() bool { return dev.Held() == n })
			dev.Resume()
			for i, cl := range calls {
				if e, err := c.wait(cl); e != 0 || err != nil {
					t.Fatalf("read %d: %v %v", i, e, err)
				}
				if !bytes.Equal(cl.read, bytes.Repeat([]byte{byte(i)}, 4096)) {
					t.Errorf("read %d: wrong data", i)
				}
			}
			c.mu.Lock()
			order := slices.Clone(c.order)
			c.mu.Unlock()
			want := make([]uint64, n)
			for i := range want {
				want[i] = calls[n-1-i].cookie
			}
			if !slices.Equal(order, want) {
				t.Errorf("reply order %v, want %v", order, want)
			}
		})
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

// Every validation rule answers with an errno and keeps the connection
// usable; none of the rejected requests reaches the device.
func TestValidation(t *testing.T) {
	const size = 1 << 20
	full := func() *nbd.Export {
		e, _ := memExport(size)
		e.MaxBlockSize = 64 << 10
		return e
	}
	bare := func() *nbd.Export { // nothing optional advertised
		return &nbd.Export{Size: size, Device: nbdtest.NewMemDevice(size)}
	}
	aligned := func() *nbd.Export {
		e := full()
		e.MinBlockSize = 512
		return e
	}
	readOnly := func() *nbd.Export {
		e := full()
		e.ReadOnly = true
		return e
	}
	type req struct {
		cmd     nbdwire.Command
		flags   nbdwire.CmdFlags
		off     uint64
		length  uint32
		payload bool
	}
	tests := []struct {
		name   string
		export func() *nbd.Export
		req    req
		want   nbdwire.Errno
	}{
		{"unknown command", full, req{cmd: 5, length: 512}, nbdwire.EINVAL},
		{"block status", full, req{cmd: 7, length: 512}, nbdwire.EINVAL},
		{"read past end", full, req{cmd: nbdwire.CmdRead, off: size - 512, length: 1024}, nbdwire.EINVAL},
		{"read offset past end", full, req{cmd: nbdwire.CmdRead, off: size + 4096, length: 512}, nbdwire.EINVAL},
		{"read offset overflow", full, req{cmd: nbdwire.CmdRead, off: 1<<64 - 512, length: 1024}, nbdwire.EINVAL},
		{"write past end", full, req{cmd: nbdwire.CmdWrite, off: size - 512, length: 1024, payload: true}, nbdwire.ENOSPC},
		{"write zeroes past end", full, req{cmd: nbdwire.CmdWriteZeroes, off: size, length: 1}, nbdwire.ENOSPC},
		{"trim past end", full, req{cmd: nbdwire.CmdTrim, off: size - 1, length: 2}, nbdwire.EINVAL},
		{"read too long", full, req{cmd: nbdwire.CmdRead, length: 64<<10 + 1}, nbdwire.EINVAL},
		{"write too long", full, req{cmd: nbdwire.CmdWrite, length: 128 << 10, payload: true}, nbdwire.EINVAL},
		{"flush not advertised", bare, req{cmd: nbdwire.CmdFlush}, nbdwire.EINVAL},
		{"fua not advertised", bare, req{cmd: nbdwire.CmdWrite, flags: nbdwire.FlagFUA, length: 512, payload: true}, nbdwire.EINVAL},
		{"trim not advertised", bare, req{cmd: nbdwire.CmdTrim, length: 512}, nbdwire.EINVAL},
		{"write zeroes not advertised", bare, req{cmd: nbdwire.CmdWriteZeroes, length: 512}, nbdwire.EINVAL},
		{"unknown flag", full, req{cmd: nbdwire.CmdRead, flags: 1 << 12, length: 512}, nbdwire.EINVAL},
		{"DF without structured replies", full, req{cmd: nbdwire.CmdRead, flags: nbdwire.FlagDF, length: 512}, nbdwire.EINVAL},
		{"no hole on write", full, req{cmd: nbdwire.CmdWrite, flags: nbdwire.FlagNoHole, length: 512, payload: true}, nbdwire.EINVAL},
		{"fast zero not advertised", full, req{cmd: nbdwire.CmdWriteZeroes, flags: nbdwire.FlagFastZero, length: 512}, nbdwire.EINVAL},
		{"read only write", readOnly, req{cmd: nbdwire.CmdWrite, length: 4096, payload: true}, nbdwire.EPERM},
		{"read only trim", readOnly, req{cmd: nbdwire.CmdTrim, length: 4096}, nbdwire.EPERM},
		{"read only write zeroes", readOnly, req{cmd: nbdwire.CmdWriteZeroes, length: 4096}, nbdwire.EPERM},
		{"unaligned offset", aligned, req{cmd: nbdwire.CmdRead, off: 100, length: 512}, nbdwire.EINVAL},
		{"unaligned length", aligned, req{cmd: nbdwire.CmdWrite, length: 100, payload: true}, nbdwire.EINVAL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := tt.export()
			dev := e.Device.(*nbdtest.MemDevice)
			ts := startConn(t, kindUnix, &nbd.Server{Exports: []*nbd.Export{e}})
			c := ts.cli
			c.goTransmission("")
			var payload []byte
			if tt.req.payload {
				payload = bytes.Repeat([]byte{0xee}, int(tt.req.length))
			}
			r := tt.req
			if got := c.mustDo(r.cmd, r.flags, r.off, r.length, payload, make([]byte, r.length)); got != tt.want {
				t.Errorf("errno %v, want %v", got, tt.want)
			}
			if n := dev.Submitted(); n != 0 {
				t.Errorf("device got %d requests", n)
			}
			// The stream is still in sync: valid requests round-trip.
			data := bytes.Repeat([]byte{0x5a}, 4096)
			if !e.ReadOnly {
				if got := c.mustDo(nbdwire.CmdWrite, 0, 8192, 4096, data, nil); got != 0 {
					t.Fatalf("write after rejection: %v", got)
				}
			} else {
				dev.WriteAt(data, 8192)
			}
			got := make([]byte, 4096)
			if e := c.mustDo(nbdwire.CmdRead, 0, 8192, 4096, nil, got); e != 0 || !bytes.Equal(got, data) {
				t.Errorf("read after rejection: %v, data ok %v", e, bytes.Equal(got, data))
			}
		})
	}
}

func TestZeroLengthAndFlush(t *testing.T) {
	e, dev := memExport(1 << 20)
	ts := startConn(t, kindUnix, &nbd.Server{Exports: []*nbd.Export{e}})
	c := ts.cli
	c.goTransmission("")
	for _, cmd := range []nbdwire.Command{nbdwire.CmdRead, nbdwire.CmdWrite, nbdwire.CmdTrim, nbdwire.CmdWriteZeroes} {
		if got := c.mustDo(cmd, 0, 4096, 0, nil, nil); got != 0 {
			t.Errorf("zero-length %v: %v", cmd, got)
		}
	}
	if n := dev.Submitted(); n != 0 {
		t.Errorf("zero-length requests reached the device: %d", n)
	}
	if got := c.mustDo(nbdwire.CmdFlush, 0, 0, 0, nil, nil); got != 0 || dev.Flushes() != 1 {
		t.Errorf("flush: %v, device flushes %d", got, dev.Flushes())
	}
	// FUA on a read is accepted (clients are known to send it) and NO_HOLE
	// on WRITE_ZEROES too.
	if got := c.mustDo(nbdwire.CmdRead, nbdwire.FlagFUA, 0, 512, nil, make([]byte, 512)); got != 0 {
		t.Errorf("read with FUA: %v", got)
	}
	dev.WriteAt(bytes.Repeat([]byte{1}, 4096), 0)
	if got := c.mustDo(nbdwire.CmdWriteZeroes, nbdwire.FlagNoHole|nbdwire.FlagFUA, 0, 4096, nil, nil); got != 0 {
		t.Errorf("write zeroes: %v", got)
	}
	if got := c.mustDo(nbdwire.CmdTrim, 0, 4096, 4096, nil, nil); got != 0 {
		t.Errorf("trim: %v", got)
	}
	if !bytes.Equal(dev.Bytes()[:4096], make([]byte, 4096)) || dev.Zeroes() != 1 || dev.Trims() != 1 || dev.FUAWrites() != 1 {
		t.Errorf("device: zeroes %d trims %d fua %d", dev.Zeroes(), dev.Trims(), dev.FUAWrites())
	}
}

func TestDeviceErrorMapping(t *testing.T) {
	tests := []struct {
		err  error
		want nbdwire.Errno
	}{
		{syscall.EIO, nbdwire.EIO},
		{syscall.ENOSPC, nbdwire.ENOSPC},
		{syscall.EDQUOT, nbdwire.ENOSPC},
		{syscall.EFBIG, nbdwire.ENOSPC},
		{syscall.EPERM, nbdwire.EPERM},
		{syscall.ENOMEM, nbdwire.ENOMEM},
		{syscall.EINVAL, nbdwire.EINVAL},
		{syscall.EOPNOTSUPP, nbdwire.ENOTSUP},
		{syscall.ESHUTDOWN, nbdwire.ESHUTDOWN},
		{fmt.Errorf("engine: read block 7: %w", syscall.EOVERFLOW), nbdwire.EOVERFLOW},
		{syscall.ECONNRESET, nbdwire.EIO},
		{errors.New("anything"), nbdwire.EIO},
		{nbdwire.ENOSPC, nbdwire.ENOSPC},
		{nbdwire.Errno(4242), nbdwire.EIO},
	}
	for _, tt := range tests {
		if got := nbd.ErrnoOf(tt.err); got != tt.want {
			t.Errorf("errnoOf(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}

	// End to end, for a failing read (no data may follow the error header)
	// and a failing write.
	e, dev := memExport(1 << 20)
	dev.SetLatency(time.Millisecond)
	ts := startConn(t, kindUnix, &nbd.Server{Exports: []*nbd.Export{e}})
	c := ts.cli
	c.goTransmission("")
	dev.InjectError(64<<10, 4096, fmt.Errorf("backend: %w", syscall.EIO))
	dev.InjectError(128<<10, 4096, syscall.ENOSPC)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			off := uint64(64<<10 + (i%3)*(64<<10))
			want := []nbdwire.Errno{nbdwire.EIO, nbdwire.ENOSPC, 0}[i%3]
			got, err := c.do(nbdwire.CmdRead, 0, off, 4096, nil, make([]byte, 4096))
			if err != nil || got != want {
				t.Errorf("read at %d: %v %v, want %v", off, got, err, want)
			}
			got, err = c.do(nbdwire.CmdWrite, 0, off, 4096, make([]byte, 4096), nil)
			if err != nil || got != want {
				t.Errorf("write at %d: %v %v, want %v", off, got, err, want)
			}
		})
	}
	wg.Wait()
	dev.ClearErrors()
	if got := c.mustDo(nbdwire.CmdRead, 0, 64<<10, 4096, nil, make([]byte, 4096)); got != 0 {
		t.Errorf("read after clearing: %v", got)
	}
}

// Violations that make the stream unparseable close the connection.
func TestTransmissionHangsUp(t *testing.T) {
	tests := []struct {
		name string
		send func(c *tclient)
	}{
		{"bad request magic", func(c *tclient) { c.mustWrite(make([]byte, 28)) }},
		{"oversized invalid write", func(c *tclient) {
			c.mustWrite(reqBytes(nbdwire.CmdWrite, 0, 1, 0, 64<<20, nil))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _ := memExport(1 << 20)
			ts := startConn(t, kindUnix, &nbd.Server{Exports: []*nbd.Export{e}})
			ts.cli.goTransmission("")
			tt.send(ts.cli)
			if err := ts.wait(t); !errors.Is(err, nbd.ErrProtocol) {
				t.Errorf("ServeConn = %v, want ErrProtocol", err)
			}
			if err := ts.cli.waitClosed(5 * time.Second); err == nil {
				t.Error("client saw a clean stream end")
			}
		})
	}
}

// NBD_CMD_DISC waits for every submitted request to be answered.
func TestDiscDrains(t *testing.T) {
	testsupport.LeakCheck(t)
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			e, dev := memExport(1 << 20)
			ts := startConn(t, kind, &nbd.Server{Exports: []*nbd.Export{e}})
			c := ts.cli
			c.goTransmission("")
			dev.Pause()
			calls := make([]*call, 32)
			for i := range calls {
				calls[i] = newCall()
				data := bytes.Repeat([]byte{byte(i + 1)}, 4096)
				if err := c.start(calls[i], nbdwire.CmdWrite, 0, uint64(i)*4096, 4096, data); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, func() bool { return dev.Held() == len(calls) })
			c.disc()
			time.Sleep(20 * time.Millisecond)
			select {
			case err := <-ts.done:
				t.Fatalf("ServeConn returned before the device finished: %v", err)
			default:
			}
			dev.Resume()
			for i, cl := range calls {
				if e, err := c.wait(cl); e != 0 || err != nil {
					t.Errorf("write %d: %v %v", i, e, err)
				}
			}
			if err := ts.wait(t); err != nil {
				t.Errorf("ServeConn = %v", err)
			}
			if err := c.waitClosed(5 * time.Second); err == nil || err.Error() != "EOF" {
				t.Errorf("client: %v, want EOF", err)
			}
			if got := dev.Bytes()[31*4096]; got != 32 {
				t.Errorf("last write not applied: %d", got)
			}
		})
	}
}

// A client vanishing with requests pending must not leak goroutines or
// make late completions block or panic.
func TestAbruptClose(t *testing.T) {
	testsupport.LeakCheck(t)
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			e, dev := memExport(1 << 20)
			ts := startConn(t, kind, &nbd.Server{Exports: []*nbd.Export{e}})
			c := ts.cli
			c.goTransmission("")
			dev.Pause()
			for i := range 40 {
				cmd, payload := nbdwire.CmdRead, []byte(nil)
				if i%2 == 1 {
					cmd, payload = nbdwire.CmdWrite, make([]byte, 8192)
				}
				cl := newCall()
				cl.read = make([]byte, 8192)
				if err := c.start(cl, cmd, 0, uint64(i)*8192, 8192, payload); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, func() bool { return dev.Held() == 40 })
			c.nc.Close()
			time.Sleep(10 * time.Millisecond)
			dev.Resume()
			if err := ts.wait(t); err == nil {
				t.Error("ServeConn = nil after an abrupt close")
			}
		})
	}
}

// Cancelling the context drains what is in flight, then closes.
func TestCancelDrains(t *testing.T) {
	testsupport.LeakCheck(t)
	e, dev := memExport(1 << 20)
	dev.SetLatency(20 * time.Millisecond)
	ts := startConn(t, kindUnix, &nbd.Server{Exports: []*nbd.Export{e}})
	c := ts.cli
	c.goTransmission("")
	calls := make([]*call, 16)
	for i := range calls {
		calls[i] = newCall()
		calls[i].read = make([]byte, 4096)
		if err := c.start(calls[i], nbdwire.CmdRead, 0, uint64(i)*4096, 4096, nil); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return dev.Submitted() == int64(len(calls)) })
	ts.cancel()
	for i, cl := range calls {
		if e, err := c.wait(cl); e != 0 || err != nil {
			t.Errorf("read %d: %v %v", i, e, err)
		}
	}
	if err := ts.wait(t); err != nil {
		t.Errorf("ServeConn = %v", err)
	}
	dev.Wait()
}

// A device that never answers is given up on after the drain timeout, and
// its late completions are harmless. Over net.Pipe it runs on synctest's
// clock, where ServeConn must return exactly at the timeout; over a unix
// socket, on the real clock, not before it.
func TestDrainTimeout(t *testing.T) {
	const drain = 50 * time.Millisecond
	defer nbd.SetDrainTimeout(drain)()
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			if kind == kindPipe {
				testsupport.Synctest(t, func(t *testing.T) { testDrainTimeout(t, kind, drain, 0) })
			} else {
				testDrainTimeout(t, kind, drain-10*time.Millisecond, 10*time.Second)
			}
		})
	}
}

// testDrainTimeout wants ServeConn to return within [lo, lo+slack] of its
// cancellation.
func testDrainTimeout(t *testing.T, kind connKind, lo, slack time.Duration) {
	testsupport.LeakCheck(t)
	e, dev := memExport(1 << 20)
	ts := startConn(t, kind, &nbd.Server{Exports: []*nbd.Export{e}})
	c := ts.cli
	c.goTransmission("")
	dev.Pause()
	for i := range 8 {
		if err := c.start(newCall(), nbdwire.CmdWrite, 0, uint64(i)*4096, 4096, make([]byte, 4096)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return dev.Held() == 8 })
	ts.cancel()
	start := time.Now()
	if err := ts.wait(t); err != nil {
		t.Errorf("ServeConn = %v", err)
	}
	if d := time.Since(start); d < lo || d > lo+slack {
		t.Errorf("returned %v after the cancellation, want from %v to %v", d, lo, lo+slack)
	}
	dev.Resume() // completes on a finished connection
}

// A second Complete for the same request is ignored.
type doubleDevice struct{ *nbdtest.MemDevice }

func (d doubleDevice) Submit(r *nbd.Request) {
	r.Complete(nil)
	r.Complete(syscall.EIO)
}

func TestDoubleComplete(t *testing.T) {
	e, _ := memExport(1 << 20)
	e.Device = doubleDevice{}
	ts := startConn(t, kindUnix, &nbd.Server{Exports: []*nbd.Export{e}})
	c := ts.cli
	c.goTransmission("")
	for range 10 {
		if got := c.mustDo(nbdwire.CmdFlush, 0, 0, 0, nil, nil); got != 0 {
			t.Errorf("flush: %v", got)
		}
	}
	c.disc()
	if err := ts.wait(t); err != nil {
		t.Errorf("ServeConn = %v", err)
	}
}
