// Package nbdtest provides an in-memory nbd.Device for tests of the NBD front
// end and of packages built on it.
package nbdtest

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/internal/nbdwire"
)

// MemDevice is an nbd.Device backed by a byte slice. By default it completes
// every request inside Submit; the knobs below add latency, reordering,
// holding and failures. All methods are safe for concurrent use.
type MemDevice struct {
	mu       sync.RWMutex // guards data
	data     []byte
	ctl      sync.Mutex // guards the knobs and held
	latency  time.Duration
	faults   []fault
	paused   bool
	held     []*nbd.Request
	inflight sync.WaitGroup

	submitted, reads, writes, flushes, fuaWrites, trims, zeroes atomic.Int64
}

type fault struct {
	off, end uint64
	err      error
}

// NewMemDevice returns a zero-filled device of size bytes.
func NewMemDevice(size int) *MemDevice {
	return &MemDevice{data: make([]byte, size)}
}

// Size returns the device size in bytes.
func (d *MemDevice) Size() uint64 { return uint64(len(d.data)) }

// SetLatency makes each request complete on its own goroutine after a random
// delay in [0, max), so completions come back out of order. Zero restores
// synchronous completion.
func (d *MemDevice) SetLatency(max time.Duration) {
	d.ctl.Lock()
	d.latency = max
	d.ctl.Unlock()
}

// InjectError makes every request overlapping [off, off+length) fail with err
// (FLUSH fails if any fault is set). Later injections are checked first.
func (d *MemDevice) InjectError(off, length uint64, err error) {
	d.ctl.Lock()
	d.faults = append([]fault{{off, off + length, err}}, d.faults...)
	d.ctl.Unlock()
}

// ClearErrors removes all injected errors.
func (d *MemDevice) ClearErrors() {
	d.ctl.Lock()
	d.faults = nil
	d.ctl.Unlock()
}

// Pause holds every request submitted from now on until Resume.
func (d *MemDevice) Pause() {
	d.ctl.Lock()
	d.paused = true
	d.ctl.Unlock()
}

// Resume completes the held requests, newest first so that their replies
// are reordered, and stops holding.
func (d *MemDevice) Resume() {
	d.ctl.Lock()
	held := d.held
	d.held, d.paused = nil, false
	d.ctl.Unlock()
	for i := len(held) - 1; i >= 0; i-- {
		d.execute(held[i])
	}
}

// Held returns how many requests are waiting for Resume.
func (d *MemDevice) Held() int {
	d.ctl.Lock()
	defer d.ctl.Unlock()
	return len(d.held)
}

// Wait blocks until requests delayed by SetLatency have completed.
func (d *MemDevice) Wait() { d.inflight.Wait() }

// Counters of requests the device has received (Submitted) or executed.
func (d *MemDevice) Submitted() int64 { return d.submitted.Load() }
func (d *MemDevice) Reads() int64     { return d.reads.Load() }
func (d *MemDevice) Writes() int64    { return d.writes.Load() }
func (d *MemDevice) Flushes() int64   { return d.flushes.Load() }
func (d *MemDevice) FUAWrites() int64 { return d.fuaWrites.Load() }
func (d *MemDevice) Trims() int64     { return d.trims.Load() }
func (d *MemDevice) Zeroes() int64    { return d.zeroes.Load() }

// Bytes returns a copy of the contents.
func (d *MemDevice) Bytes() []byte {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return append([]byte(nil), d.data...)
}

// ReadAt copies the contents at off into p (test setup and checks).
func (d *MemDevice) ReadAt(p []byte, off int64) {
	d.mu.RLock()
	copy(p, d.data[off:])
	d.mu.RUnlock()
}

// WriteAt copies p into the contents at off (test setup).
func (d *MemDevice) WriteAt(p []byte, off int64) {
	d.mu.Lock()
	copy(d.data[off:], p)
	d.mu.Unlock()
}

// Submit implements nbd.Device.
func (d *MemDevice) Submit(r *nbd.Request) {
	d.submitted.Add(1)
	d.ctl.Lock()
	if d.paused {
		d.held = append(d.held, r)
		d.ctl.Unlock()
		return
	}
	latency := d.latency
	d.ctl.Unlock()
	if latency <= 0 {
		d.execute(r)
		return
	}
	delay := rand.N(latency)
	d.inflight.Add(1)
	go func() {
		defer d.inflight.Done()
		time.Sleep(delay)
		d.execute(r)
	}()
}

func (d *MemDevice) execute(r *nbd.Request) {
	if err := d.fault(r); err != nil {
		r.Complete(err)
		return
	}
	end := r.Offset + uint64(r.Length)
	if r.Cmd != nbdwire.CmdFlush && end > uint64(len(d.data)) {
		r.Complete(nbdwire.EINVAL) // the front end should have caught this
		return
	}
	switch r.Cmd {
	case nbdwire.CmdRead:
		d.reads.Add(1)
		d.mu.RLock()
		copy(r.Data, d.data[r.Offset:end])
		d.mu.RUnlock()
	case nbdwire.CmdWrite:
		d.writes.Add(1)
		d.mu.Lock()
		copy(d.data[r.Offset:end], r.Data)
		d.mu.Unlock()
	case nbdwire.CmdFlush:
		d.flushes.Add(1)
	case nbdwire.CmdTrim, nbdwire.CmdWriteZeroes:
		if r.Cmd == nbdwire.CmdTrim {
			d.trims.Add(1)
		} else {
			d.zeroes.Add(1)
		}
		d.mu.Lock()
		clear(d.data[r.Offset:end]) // a trimmed range reads back as zeroes here
		d.mu.Unlock()
	default:
		r.Complete(nbdwire.EINVAL)
		return
	}
	if r.Flags&nbdwire.FlagFUA != 0 && r.Cmd != nbdwire.CmdRead {
		d.fuaWrites.Add(1)
	}
	r.Complete(nil)
}

func (d *MemDevice) fault(r *nbd.Request) error {
	d.ctl.Lock()
	defer d.ctl.Unlock()
	end := r.Offset + uint64(r.Length)
	for _, f := range d.faults {
		if r.Cmd == nbdwire.CmdFlush || (r.Offset < f.end && f.off < end) {
			return f.err
		}
	}
	return nil
}
