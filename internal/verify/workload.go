package verify

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// errorPause is how long a worker waits after a failed operation.
const errorPause = time.Millisecond

// Disk is what a Workload drives. *nbdclient.Client satisfies it.
type Disk interface {
	ReadAt(p []byte, off int64) error
	WriteAt(p []byte, off int64, fua bool) error
	Flush() error
}

// Workload runs random block reads, writes and flushes against a Disk and
// records what was acknowledged. Set the fields before the first Run; Rule,
// Ops, Duration and the mix may change between calls, never during one. Run may be
// called several times, on the same or a new Disk (after a reconnect, say);
// the record carries over. Disk errors are counted in the Report, never
// fatal.
type Workload struct {
	BlockSize int           // bytes per block; 0 means 4096; at least MinBlockSize
	Blocks    int           // blocks used, from offset 0; required
	Depth     int           // operations in flight; 0 means 8
	Ops       int64         // operations per Run; 0 means until Duration or ctx ends
	Duration  time.Duration // length of a Run; 0 means until Ops or ctx ends

	// The mix, in percent of operations (flushes, reads, the rest writes)
	// and of writes (FUA). All zero means 5% flushes, 30% reads, 10% FUA.
	FlushPercent, ReadPercent, FUAPercent int

	Rule Rule   // checked on every read and by Verify
	Seed uint64 // for the choice of operations; 0 picks one

	init sync.Once
	run  uint64 // identifies this workload's writes on the disk

	mu          sync.Mutex
	hist        []history
	busy        []bool // a block with an operation in flight
	nextSeq     uint64
	ackOrder    uint64 // acknowledgements so far
	flushedUpTo uint64 // acknowledgements covered by a completed flush
	rep         Report
}

func (w *Workload) setup() error {
	if w.BlockSize == 0 {
		w.BlockSize = 4096
	}
	if w.Depth == 0 {
		w.Depth = 8
	}
	if w.FlushPercent == 0 && w.ReadPercent == 0 && w.FUAPercent == 0 {
		w.FlushPercent, w.ReadPercent, w.FUAPercent = 5, 30, 10
	}
	switch {
	case w.BlockSize < MinBlockSize:
		return fmt.Errorf("verify: block size %d below %d", w.BlockSize, MinBlockSize)
	case w.Blocks <= 0:
		return fmt.Errorf("verify: %d blocks", w.Blocks)
	case w.Depth < 0:
		return fmt.Errorf("verify: depth %d", w.Depth)
	case w.FlushPercent < 0 || w.ReadPercent < 0 || w.FlushPercent+w.ReadPercent > 100:
		return fmt.Errorf("verify: %d%% flushes and %d%% reads", w.FlushPercent, w.ReadPercent)
	}
	w.init.Do(func() {
		w.run = rand.Uint64()
		if w.Seed == 0 {
			w.Seed = rand.Uint64()
		}
		w.hist = make([]history, w.Blocks)
		for i := range w.hist {
			w.hist[i] = newHistory()
		}
		w.busy = make([]bool, w.Blocks)
	})
	return nil
}

// Run drives d until Ops operations were issued, Duration passed or ctx
// ended, whichever comes first, and waits for the operations in flight.
// It fails only if the Workload is misconfigured.
func (w *Workload) Run(ctx context.Context, d Disk) error {
	if err := w.setup(); err != nil {
		return err
	}
	if w.Ops == 0 && w.Duration == 0 && ctx.Done() == nil {
		return errors.New("verify: Run needs Ops, Duration or a cancellable context")
	}
	if w.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, w.Duration)
		defer cancel()
	}
	w.mu.Lock()
	seed := w.Seed + w.nextSeq // a second Run does not repeat the first
	w.mu.Unlock()
	var issued atomic.Int64
	var wg sync.WaitGroup
	for i := range w.Depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.worker(ctx, d, rand.New(rand.NewPCG(seed, uint64(i))), &issued)
		}()
	}
	wg.Wait()
	return nil
}

func (w *Workload) worker(ctx context.Context, d Disk, r *rand.Rand, issued *atomic.Int64) {
	buf := make([]byte, w.BlockSize)
	for ctx.Err() == nil {
		if w.Ops > 0 && issued.Add(1) > w.Ops {
			return
		}
		x := r.IntN(100)
		var err error
		if x < w.FlushPercent {
			err = w.flush(d)
		} else if b := w.acquire(r); b < 0 {
			runtime.Gosched() // every block busy: Depth is close to Blocks
		} else {
			if x < w.FlushPercent+w.ReadPercent {
				err = w.read(d, b, buf)
			} else {
				err = w.write(d, b, buf, r.IntN(100) < w.FUAPercent)
			}
			w.release(b)
		}
		if err != nil {
			// A dead connection fails at once; do not spin on it.
			time.Sleep(errorPause)
		}
	}
}

// acquire picks a random idle block and marks it busy, or returns -1.
func (w *Workload) acquire(r *rand.Rand) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	start := r.IntN(w.Blocks)
	for i := range w.Blocks {
		b := (start + i) % w.Blocks
		if !w.busy[b] {
			w.busy[b] = true
			return b
		}
		if i == 64 { // give up scanning a nearly full disk; try again later
			break
		}
	}
	return -1
}

func (w *Workload) release(b int) {
	w.mu.Lock()
	w.busy[b] = false
	w.mu.Unlock()
}

func (w *Workload) write(d Disk, b int, buf []byte, fua bool) error {
	w.mu.Lock()
	w.nextSeq++
	seq := w.nextSeq
	w.hist[b] = append(w.hist[b].prune(w.flushedUpTo), write{seq: seq, fua: fua})
	w.rep.Writes.Issued++
	if fua {
		w.rep.FUAWrites.Issued++
	}
	w.mu.Unlock()

	fill(buf, w.run, uint64(b), seq)
	err := d.WriteAt(buf, int64(b)*int64(w.BlockSize), fua)

	w.mu.Lock()
	defer w.mu.Unlock()
	h := w.hist[b]
	i := h.find(seq) // the block was busy, so nothing pruned it
	if err != nil {
		h[i].state = stateFailed
		w.rep.Writes.Failed++
		if fua {
			w.rep.FUAWrites.Failed++
		}
		w.rep.addError(err)
		return err
	}
	w.ackOrder++
	h[i].state, h[i].ackOrder = stateAcked, w.ackOrder
	w.rep.Writes.OK++
	if fua {
		w.rep.FUAWrites.OK++
	}
	w.rep.BytesWritten += int64(len(buf))
	return nil
}

func (w *Workload) read(d Disk, b int, buf []byte) error {
	w.mu.Lock()
	w.rep.Reads.Issued++
	w.mu.Unlock()
	err := d.ReadAt(buf, int64(b)*int64(w.BlockSize))
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.rep.Reads.Failed++
		w.rep.addError(err)
		return err
	}
	w.rep.Reads.OK++
	w.rep.BytesRead += int64(len(buf))
	w.check(b, buf, "read")
	return nil
}

// flush covers the writes acknowledged before it was issued.
func (w *Workload) flush(d Disk) error {
	w.mu.Lock()
	w.rep.Flushes.Issued++
	covers := w.ackOrder
	w.mu.Unlock()
	err := d.Flush()
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.rep.Flushes.Failed++
		w.rep.addError(err)
		return err
	}
	w.rep.Flushes.OK++
	w.flushedUpTo = max(w.flushedUpTo, covers)
	return nil
}

// check records a violation if p, read from block b, is not allowed. It
// must be called with mu held.
func (w *Workload) check(b int, p []byte, when string) {
	want := w.hist[b].allowed(w.Rule, w.flushedUpTo)
	c, seq := decode(p, w.run, uint64(b))
	var found string
	switch c {
	case contentOurs:
		if slices.Contains(want, seq) {
			return
		}
		found = fmt.Sprintf("write %d", seq)
	case contentForeign:
		if slices.Contains(want, 0) {
			return
		}
		found = "data from before the run"
	case contentCorrupt:
		found = "torn or corrupt data"
	case contentMisplaced:
		found = fmt.Sprintf("write %d, made for another block", seq)
	}
	w.rep.addViolation(Violation{Block: int64(b), When: when, Rule: w.Rule, Want: want, Found: found})
}

// Verify reads every block of d and checks it against the record under
// w.Rule. Call it after Run has returned. The Report covers the runs and
// the check; the error reports blocks Verify could not read.
func (w *Workload) Verify(d Disk) (Report, error) {
	if err := w.setup(); err != nil {
		return Report{}, err
	}
	var next atomic.Int64
	var unread atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for range w.Depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, w.BlockSize)
			for b := next.Add(1) - 1; b < int64(w.Blocks); b = next.Add(1) - 1 {
				if err := d.ReadAt(buf, b*int64(w.BlockSize)); err != nil {
					unread.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				w.mu.Lock()
				w.rep.Checked++
				w.check(int(b), buf, "verify")
				w.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	rep := w.Report()
	if n := unread.Load(); n > 0 {
		return rep, fmt.Errorf("verify: %d of %d blocks unreadable, first: %w", n, w.Blocks, *firstErr.Load())
	}
	return rep, nil
}

// Report returns what the Workload has done and found so far.
func (w *Workload) Report() Report {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rep.clone()
}
