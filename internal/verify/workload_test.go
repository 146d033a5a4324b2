package verify_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/verify"
)

const blockSize = 512

// memDisk is a verify.Disk in memory with a volatile write cache: data
// holds what reads see, durable what survives crash. hook, if set, runs
// before each operation and may fail it (applied reports whether the
// operation should still take effect).
type memDisk struct {
	mu            sync.Mutex
	data, durable []byte
	hook          func(op string, off int64, p []byte) (applied bool, err error)
}

func newMemDisk(blocks int) *memDisk {
	return &memDisk{data: make([]byte, blocks*blockSize), durable: make([]byte, blocks*blockSize)}
}

func (d *memDisk) ReadAt(p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hook != nil {
		if _, err := d.hook("read", off, p); err != nil {
			return err
		}
	}
	copy(p, d.data[off:])
	return nil
}

func (d *memDisk) WriteAt(p []byte, off int64, fua bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	applied, err := true, error(nil)
	if d.hook != nil {
		applied, err = d.hook("write", off, p)
	}
	if applied {
		copy(d.data[off:], p)
		if fua {
			copy(d.durable[off:], p)
		}
	}
	return err
}

func (d *memDisk) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hook != nil {
		if _, err := d.hook("flush", 0, nil); err != nil {
			return err
		}
	}
	copy(d.durable, d.data)
	return nil
}

// crash loses what was not flushed.
func (d *memDisk) crash() {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data, d.durable)
}

func (d *memDisk) setHook(h func(op string, off int64, p []byte) (bool, error)) {
	d.mu.Lock()
	d.hook = h
	d.mu.Unlock()
}

func workload(blocks int, ops int64) *verify.Workload {
	return &verify.Workload{BlockSize: blockSize, Blocks: blocks, Depth: 8, Ops: ops, Seed: 1}
}

func run(t *testing.T, w *verify.Workload, d verify.Disk) {
	t.Helper()
	if err := w.Run(context.Background(), d); err != nil {
		t.Fatal(err)
	}
}

func verifyDisk(t *testing.T, w *verify.Workload, d verify.Disk) verify.Report {
	t.Helper()
	rep, err := w.Verify(d)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestCleanRun(t *testing.T) {
	d := newMemDisk(64)
	w := workload(64, 3000)
	run(t, w, d)
	rep := verifyDisk(t, w, d)
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	total := rep.Reads.Issued + rep.Writes.Issued + rep.Flushes.Issued
	if total != 3000 || rep.Failed() != 0 || rep.Checked != 64 || rep.Reads.Issued == 0 ||
		rep.Flushes.Issued == 0 || rep.FUAWrites.Issued == 0 {
		t.Errorf("report: %v", &rep)
	}
	if rep.BytesWritten != rep.Writes.Issued*blockSize || rep.BytesRead != rep.Reads.Issued*blockSize ||
		rep.Writes.OK != rep.Writes.Issued || rep.Reads.OK != rep.Reads.Issued || rep.Flushes.OK != rep.Flushes.Issued {
		t.Errorf("bytes: %v", &rep)
	}
	// The record carries over into a second run.
	run(t, w, d)
	if rep := verifyDisk(t, w, d); rep.Err() != nil || rep.Writes.Issued < 2*rep.Writes.Issued/3 {
		t.Errorf("second run: %v, %v", rep.Err(), &rep)
	}
}

// TestInjectedFailures fails a tenth of the operations, half of the failed
// writes having landed anyway (a lost reply): errors are counted, and
// nothing is a violation.
func TestInjectedFailures(t *testing.T) {
	d := newMemDisk(32)
	var n, failed atomic.Int64
	d.setHook(func(op string, off int64, p []byte) (bool, error) {
		if n.Add(1)%10 != 0 {
			return true, nil
		}
		failed.Add(1)
		return n.Load()%20 == 0, syscall.EIO
	})
	w := workload(32, 2000)
	run(t, w, d)
	d.setHook(nil)
	rep := verifyDisk(t, w, d)
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	if rep.Failed() != failed.Load() || rep.Errors["EIO"] != failed.Load() || len(rep.Errors) != 1 ||
		rep.Reads.OK+rep.Writes.OK+rep.Flushes.OK+rep.Failed() != 2000 {
		t.Errorf("%d failures injected; report %v", failed.Load(), &rep)
	}
	if len(rep.FirstErrors) == 0 || !strings.Contains(rep.FirstErrors[0], "input/output") {
		t.Errorf("first errors %q", rep.FirstErrors)
	}
}

// brokenDisk drops writes to one block while acknowledging them.
func TestCatchesDroppedWrite(t *testing.T) {
	d := newMemDisk(16)
	d.setHook(func(op string, off int64, p []byte) (bool, error) {
		return !(op == "write" && off == 5*blockSize), nil
	})
	w := workload(16, 500)
	w.ReadPercent = 0 // only Verify may find it
	w.FlushPercent = 5
	run(t, w, d)
	rep := verifyDisk(t, w, d)
	if rep.Violated != 1 || rep.Violations[0].Block != 5 || rep.Violations[0].When != "verify" ||
		!strings.Contains(rep.Violations[0].Found, "before the run") {
		t.Fatalf("violations %v", rep.Violations)
	}
	if rep.Err() == nil {
		t.Error("Err() = nil with a violation")
	}
}

// TestCatchesOnRead checks that reads during the run are checked: the disk
// forgets block 2 right after acknowledging it.
func TestCatchesOnRead(t *testing.T) {
	d := newMemDisk(4)
	d.setHook(func(op string, off int64, p []byte) (bool, error) {
		return !(op == "write" && off == 2*blockSize), nil
	})
	w := workload(4, 400)
	w.Depth = 2
	run(t, w, d)
	rep := w.Report()
	if rep.Violated == 0 || rep.Violations[0].When != "read" || rep.Violations[0].Block != 2 {
		t.Fatalf("violations %v", rep.Violations)
	}
}

func TestCatchesMisdirectedAndTorn(t *testing.T) {
	for _, tt := range []struct {
		name  string
		hook  func(op string, off int64, p []byte) (bool, error)
		found string
	}{
		{"misdirected", nil, "another block"},
		{"torn", func(op string, off int64, p []byte) (bool, error) {
			if op == "write" && off == 3*blockSize {
				clear(p[blockSize/2:])
			}
			return true, nil
		}, "torn"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newMemDisk(8)
			var disk verify.Disk = d
			if tt.hook != nil {
				d.setHook(tt.hook)
			} else {
				disk = &misdirector{d}
			}
			w := workload(8, 300)
			run(t, w, disk)
			rep, _ := w.Verify(d)
			if !slices.ContainsFunc(rep.Violations, func(v verify.Violation) bool {
				return strings.Contains(v.Found, tt.found)
			}) {
				t.Fatalf("no violation finding %q: %v", tt.found, rep.Err())
			}
		})
	}
}

// misdirector swaps blocks 1 and 3 on writes, as a bad offset would.
type misdirector struct{ d *memDisk }

func (m *misdirector) ReadAt(p []byte, off int64) error { return m.d.ReadAt(p, off) }
func (m *misdirector) Flush() error                     { return m.d.Flush() }
func (m *misdirector) WriteAt(p []byte, off int64, fua bool) error {
	switch off {
	case 1 * blockSize:
		off = 3 * blockSize
	case 3 * blockSize:
		off = 1 * blockSize
	}
	return m.d.WriteAt(p, off, fua)
}

// TestCrashRules crashes a volatile disk after writes that no flush
// covered: RequireFlushed accepts the result, RequireAcked must not.
func TestCrashRules(t *testing.T) {
	d := newMemDisk(64)
	w := workload(64, 1500)
	w.Rule = verify.RequireFlushed
	run(t, w, d)
	// A second phase whose flushes all fail: its writes stay volatile.
	d.setHook(func(op string, off int64, p []byte) (bool, error) {
		if op == "flush" {
			return false, syscall.EIO
		}
		return true, nil
	})
	w.Ops = 300
	w.FUAPercent = 0
	w.ReadPercent = 1 // reads before the crash see the volatile data
	run(t, w, d)
	d.setHook(nil)
	d.crash()
	if rep := verifyDisk(t, w, d); rep.Err() != nil {
		t.Fatalf("RequireFlushed after crash: %v", rep.Err())
	}
	w.Rule = verify.RequireAcked
	rep := verifyDisk(t, w, d)
	if rep.Violated == 0 {
		t.Fatalf("RequireAcked accepted a crash that lost acknowledged writes: %v", &rep)
	}
	if rep.Errors["EIO"] != rep.Flushes.Failed || rep.Flushes.Failed == 0 {
		t.Errorf("report %v", &rep)
	}
}

func TestRunConfig(t *testing.T) {
	d := newMemDisk(4)
	for _, w := range []*verify.Workload{
		{Blocks: 0, Ops: 1},
		{Blocks: 4, BlockSize: 16, Ops: 1},
		{Blocks: 4, ReadPercent: 90, FlushPercent: 20, Ops: 1},
		{Blocks: 4}, // would never end
	} {
		if err := w.Run(context.Background(), d); err == nil {
			t.Errorf("Run(%+v) accepted", w)
		}
	}
	// Duration bounds a run without Ops.
	w := &verify.Workload{BlockSize: blockSize, Blocks: 4, Duration: 50 * time.Millisecond}
	t0 := time.Now()
	run(t, w, d)
	if rep := w.Report(); time.Since(t0) > 2*time.Second || rep.Writes.Issued == 0 {
		t.Errorf("duration run took %v: %v", time.Since(t0), &rep)
	}
}

// TestVerifyUnreadable checks that Verify reports blocks it cannot read
// instead of passing them.
func TestVerifyUnreadable(t *testing.T) {
	d := newMemDisk(8)
	w := workload(8, 100)
	run(t, w, d)
	d.setHook(func(op string, off int64, p []byte) (bool, error) {
		if off == 2*blockSize {
			return false, syscall.EIO
		}
		return true, nil
	})
	rep, err := w.Verify(d)
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "1 of 8") || rep.Checked != 7 {
		t.Errorf("Verify = %v, checked %d", err, rep.Checked)
	}
}
