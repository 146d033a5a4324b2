package servertest

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/dstproject/dst/wire"
)

// Op names a backend operation, for fault injection.
type Op int

const (
	OpRead Op = iota
	OpWrite
	OpWriteFUA
	OpSync
	OpTrim
	OpWriteZeroes
)

var opNames = [...]string{"read", "write", "write-fua", "sync", "trim", "write-zeroes"}

func (o Op) String() string {
	if o >= 0 && int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("op%d", int(o))
}

// ErrInjected is the error Fail makes operations return, unless a Fault
// function returns its own.
var ErrInjected = errors.New("servertest: injected fault")

// Fault decides whether an operation fails: a non-nil error is returned
// instead of doing it. off and n are zero for Sync.
type Fault func(op Op, off, n int64) error

// Counts are how often each operation ran (successful or not).
type Counts struct {
	Reads, Writes, FUAs, Syncs, Trims, WriteZeroes int64
}

// MemBackend is a server.Backend held in memory. It is safe for concurrent
// use. Trim and WriteZeroes zero the range, so tests can check them.
type MemBackend struct {
	mu     sync.RWMutex
	data   []byte
	closed bool

	// Geometry reported by Info; set before handing the backend to the
	// server. NewMemBackend sets 512/4096, not rotational, trim.
	Logical, Physical uint32
	Rotational        bool
	CanTrim           bool
	ID                wire.Identity

	fault atomic.Pointer[Fault]

	reads, writes, fuas, syncs, trims, zeroes atomic.Int64
}

// NewMemBackend returns a zeroed backend of size bytes with a random
// identity.
func NewMemBackend(size int64) *MemBackend {
	m := &MemBackend{data: make([]byte, size), Logical: 512, Physical: 4096, CanTrim: true}
	rand.Read(m.ID[:])
	return m
}

// SetFault installs f (nil removes it).
func (m *MemBackend) SetFault(f Fault) {
	if f == nil {
		m.fault.Store(nil)
		return
	}
	m.fault.Store(&f)
}

// Fail makes every op of kind op fail with ErrInjected until SetFault(nil).
func (m *MemBackend) Fail(op Op) {
	m.SetFault(func(o Op, _, _ int64) error {
		if o == op {
			return ErrInjected
		}
		return nil
	})
}

func (m *MemBackend) check(op Op, off, n int64) error {
	if f := m.fault.Load(); f != nil {
		if err := (*f)(op, off, n); err != nil {
			return fmt.Errorf("servertest: %v at %d+%d: %w", op, off, n, err)
		}
	}
	return nil
}

// bounds checks a range against the size; the server checks ranges
// itself, so a failure here is a server bug the test will see.
func (m *MemBackend) bounds(op Op, off, n int64) error {
	if m.closed {
		return fmt.Errorf("servertest: %v after Close", op)
	}
	if off < 0 || n < 0 || off+n > int64(len(m.data)) {
		return fmt.Errorf("servertest: %v at %d+%d beyond size %d", op, off, n, len(m.data))
	}
	return nil
}

// ReadAt implements io.ReaderAt.
func (m *MemBackend) ReadAt(p []byte, off int64) (int, error) {
	m.reads.Add(1)
	if err := m.check(OpRead, off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed || off < 0 {
		return 0, m.bounds(OpRead, off, int64(len(p)))
	}
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt implements io.WriterAt.
func (m *MemBackend) WriteAt(p []byte, off int64) (int, error) {
	m.writes.Add(1)
	return m.write(OpWrite, p, off)
}

// WriteAtFUA writes like WriteAt; memory is as durable as it gets.
func (m *MemBackend) WriteAtFUA(p []byte, off int64) error {
	m.fuas.Add(1)
	_, err := m.write(OpWriteFUA, p, off)
	return err
}

func (m *MemBackend) write(op Op, p []byte, off int64) (int, error) {
	if err := m.check(op, off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.bounds(op, off, int64(len(p))); err != nil {
		return 0, err
	}
	return copy(m.data[off:], p), nil
}

// Size returns the size.
func (m *MemBackend) Size() (int64, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.data)), nil
}

// Refresh returns the size, which SetSize may have changed
// (server.Refresher).
func (m *MemBackend) Refresh() (int64, error) { return m.Size() }

// SetSize grows or shrinks the backend to n bytes, as a file truncated
// under a running server; new bytes are zero.
func (m *MemBackend) SetSize(n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n <= int64(len(m.data)) {
		m.data = m.data[:n:n]
		return
	}
	m.data = append(m.data, make([]byte, n-int64(len(m.data)))...)
}

// Sync counts and can fail; there is nothing to flush.
func (m *MemBackend) Sync() error {
	m.syncs.Add(1)
	return m.check(OpSync, 0, 0)
}

// Trim zeroes the range.
func (m *MemBackend) Trim(off, n int64) error {
	m.trims.Add(1)
	return m.zero(OpTrim, off, n)
}

// WriteZeroes zeroes the range.
func (m *MemBackend) WriteZeroes(off, n int64, noHole bool) error {
	m.zeroes.Add(1)
	return m.zero(OpWriteZeroes, off, n)
}

func (m *MemBackend) zero(op Op, off, n int64) error {
	if err := m.check(op, off, n); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.bounds(op, off, n); err != nil {
		return err
	}
	clear(m.data[off : off+n])
	return nil
}

// Close marks the backend closed; later operations fail.
func (m *MemBackend) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

// Closed reports whether Close was called.
func (m *MemBackend) Closed() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.closed
}

// Info returns the geometry fields.
func (m *MemBackend) Info() (logical, physical uint32, rotational, canTrim bool) {
	return m.Logical, m.Physical, m.Rotational, m.CanTrim
}

// Identity returns ID.
func (m *MemBackend) Identity() wire.Identity { return m.ID }

// Bytes returns a copy of the contents.
func (m *MemBackend) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}

// Load replaces the contents at off with p, bypassing counters and faults.
func (m *MemBackend) Load(p []byte, off int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
}

// Counts returns the operation counters.
func (m *MemBackend) Counts() Counts {
	return Counts{
		Reads:       m.reads.Load(),
		Writes:      m.writes.Load(),
		FUAs:        m.fuas.Load(),
		Syncs:       m.syncs.Load(),
		Trims:       m.trims.Load(),
		WriteZeroes: m.zeroes.Load(),
	}
}
