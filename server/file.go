package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/dstproject/dst/wire"
	"golang.org/x/sys/unix"
)

// Block sizes announced for regular files: 512-byte addressing, 4 KiB
// preferred, which matches the page cache that serves them.
const (
	fileLogicalBlock  = 512
	filePhysicalBlock = 4096
)

// zeroChunk bounds the buffer used when zeroes have to be written by hand.
const zeroChunk = 1 << 20

// File is a Backend over a regular file or a block device. Reads and writes
// go straight to pread/pwrite on the descriptor, which are safe to issue
// concurrently, so File takes no locks.
type File struct {
	path     string
	fd       int
	f        *os.File // owns fd; keeps it open until Close
	size     int64
	readOnly bool
	blockDev bool

	logical, physical uint32
	rotational        bool
	canTrim           bool
	id                wire.Identity

	// Set once a fast path turned out to be unsupported, so later
	// requests go straight to the fallback.
	noDsyncWrite atomic.Bool // pwritev2(RWF_DSYNC)
	noZeroRange  atomic.Bool // fallocate ZERO_RANGE or BLKZEROOUT
	readNoWait   atomic.Bool // preadv2(RWF_NOWAIT)
	inMemory     bool        // tmpfs or ramfs: reads and writes never wait for a disk
	writeNoWait  atomic.Bool // pwritev2(RWF_NOWAIT)
}

// OpenFile opens a regular file or block device as a Backend. The size is
// rounded down to a whole number of logical blocks, with a warning on log
// (which may be nil).
func OpenFile(path string, readOnly bool, log *slog.Logger) (*File, error) {
	if log == nil {
		log = slog.Default()
	}
	flags := unix.O_RDWR
	if readOnly {
		flags = unix.O_RDONLY
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("server: opening export: %w", err)
	}
	blockDev := st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0
	if blockDev && !readOnly {
		// Linux opens a block device with O_EXCL exclusively: it fails
		// while the device is mounted or held by another exclusive user.
		flags |= unix.O_EXCL
	}
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("server: %s is in use (mounted, or held by another program): "+
			"exporting it read-write would corrupt it; unmount it or export it ,ro", path)
	}
	if err != nil {
		return nil, fmt.Errorf("server: opening export: %w", err)
	}
	if !blockDev {
		if err := lockFile(f, readOnly); err != nil {
			f.Close()
			return nil, err
		}
	}
	b := &File{path: path, f: f, fd: int(f.Fd()), readOnly: readOnly}
	b.inMemory = !blockDev && inMemory(b.fd)
	if err := b.probe(log); err != nil {
		f.Close()
		return nil, err
	}
	return b, nil
}

// lockFile takes an advisory lock on an exported file: exclusive for a
// read-write export, shared for a read-only one, so that two servers never
// export one file read-write, nor one read-write while another reads it.
func lockFile(f *os.File, readOnly bool) error {
	how := unix.LOCK_EX
	if readOnly {
		how = unix.LOCK_SH
	}
	err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return fmt.Errorf("server: %s is already exported (another process holds a lock on it); "+
			"a file may be exported read-write by one server, or read-only by several", f.Name())
	}
	if err != nil && !errors.Is(err, unix.ENOLCK) && !errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("server: locking %s: %w", f.Name(), err)
	}
	return nil
}

// probe fills in size, geometry, trim support and identity.
func (b *File) probe(log *slog.Logger) error {
	var st unix.Stat_t
	if err := unix.Fstat(b.fd, &st); err != nil {
		return fmt.Errorf("server: stat %s: %w", b.path, err)
	}
	var size int64
	var err error
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		size = st.Size
		b.logical, b.physical = fileLogicalBlock, filePhysicalBlock
		b.canTrim = !b.readOnly && b.punchHoleWorks(st.Size)
		b.id, err = fileIdentity(b.fd, log)
	case unix.S_IFBLK:
		b.blockDev = true
		size, err = b.probeBlockDevice(st.Rdev)
	default:
		return fmt.Errorf("server: %s is neither a regular file nor a block device", b.path)
	}
	if err != nil {
		return fmt.Errorf("server: %s: %w", b.path, err)
	}
	if size < int64(b.logical) {
		return fmt.Errorf("server: %s has %d bytes, less than one %d byte block", b.path, size, b.logical)
	}
	if rem := size % int64(b.logical); rem != 0 {
		log.Warn("export size is not a multiple of the block size; the tail is not exported",
			"path", b.path, "size", size, "block", b.logical, "ignored", rem)
		size -= rem
	}
	b.size = size
	return nil
}

// punchHoleWorks asks the file system whether it can punch holes, by
// punching one beyond the end of the file: a no-op where supported,
// EOPNOTSUPP where not. (A zero-length range is EINVAL everywhere.)
func (b *File) punchHoleWorks(end int64) bool {
	err := unix.Fallocate(b.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, end, 1)
	return err == nil
}

func (b *File) probeBlockDevice(rdev uint64) (int64, error) {
	var size uint64
	if err := ioctlPtr(b.fd, unix.BLKGETSIZE64, unsafe.Pointer(&size)); err != nil {
		return 0, fmt.Errorf("BLKGETSIZE64: %w", err)
	}
	logical, err := unix.IoctlGetInt(b.fd, unix.BLKSSZGET)
	if err != nil {
		return 0, fmt.Errorf("BLKSSZGET: %w", err)
	}
	physical, err := unix.IoctlGetUint32(b.fd, unix.BLKPBSZGET)
	if err != nil {
		return 0, fmt.Errorf("BLKPBSZGET: %w", err)
	}
	b.logical = uint32(logical)
	b.physical = max(physical, b.logical)
	if !validBlockSize(b.logical) {
		return 0, fmt.Errorf("logical block size %d is not a power of two from 512 to 64 KiB", logical)
	}
	if !validBlockSize(b.physical) {
		b.physical = b.logical
	}
	sys := sysBlockDir(rdev)
	b.rotational = readSysfs(sys, "queue/rotational") == "1"
	b.canTrim = !b.readOnly && readSysfs(sys, "queue/discard_max_bytes") != "0"
	b.id = blockIdentity(sys, rdev, size)
	return int64(size), nil
}

func validBlockSize(n uint32) bool { return n >= 512 && n <= 64<<10 && n&(n-1) == 0 }

// ioctlPtr issues an ioctl whose argument is a pointer.
func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// ReadAt reads len(p) bytes at off. Like io.ReaderAt, a short read comes
// with an error: io.EOF at the end of the file.
func (b *File) ReadAt(p []byte, off int64) (int, error) {
	n := b.nowait(unix.SYS_PREADV2, &b.readNoWait, p, off)
	for n < len(p) {
		k, err := unix.Pread(b.fd, p[n:], off+int64(n))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return n, fmt.Errorf("server: reading %s at %d: %w", b.path, off+int64(n), err)
		case k == 0:
			return n, io.EOF
		}
		n += k
	}
	return n, nil
}

// ReadAtNoWait reads all of p at off if it can do so without waiting for
// the disk (the page cache holds it, or the file lives in memory), and
// reports whether it did; if not, the caller reads it with ReadAt.
func (b *File) ReadAtNoWait(p []byte, off int64) bool {
	return len(p) > 0 && b.nowait(unix.SYS_PREADV2, &b.readNoWait, p, off) == len(p)
}

// WriteAtNoWait writes as much of p at off as it can without waiting for
// the disk (the page cache takes it), and returns how much that was; the
// caller writes the rest with WriteAt.
func (b *File) WriteAtNoWait(p []byte, off int64) int {
	if b.readOnly {
		return 0 // WriteAt says why
	}
	return b.nowait(unix.SYS_PWRITEV2, &b.writeNoWait, p, off)
}

// WriteAt writes p at off.
func (b *File) WriteAt(p []byte, off int64) (int, error) {
	if b.readOnly {
		return 0, fmt.Errorf("server: writing %s at %d: read-only export: %w", b.path, off, unix.EPERM)
	}
	n := b.nowait(unix.SYS_PWRITEV2, &b.writeNoWait, p, off)
	for n < len(p) {
		k, err := unix.Pwrite(b.fd, p[n:], off+int64(n))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return n, fmt.Errorf("server: writing %s at %d: %w", b.path, off+int64(n), err)
		case k == 0:
			return n, fmt.Errorf("server: writing %s at %d: %w", b.path, off+int64(n), io.ErrShortWrite)
		}
		n += k
	}
	return n, nil
}

// WriteAtFUA writes p at off with RWF_DSYNC, so only this write's data and
// the metadata needed to read it are flushed, not the whole file's dirty
// pages. Kernels or file systems without it get pwrite then fdatasync.
func (b *File) WriteAtFUA(p []byte, off int64) error {
	if b.readOnly {
		return fmt.Errorf("server: writing %s at %d: read-only export: %w", b.path, off, unix.EPERM)
	}
	if !b.noDsyncWrite.Load() {
		err := b.pwriteDsync(p, off)
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
			return err
		}
		b.noDsyncWrite.Store(true)
	}
	if _, err := b.WriteAt(p, off); err != nil {
		return err
	}
	return b.Sync()
}

func (b *File) pwriteDsync(p []byte, off int64) error {
	iov := [][]byte{p}
	n := 0
	for n < len(p) {
		iov[0] = p[n:]
		k, err := unix.Pwritev2(b.fd, iov, off+int64(n), unix.RWF_DSYNC)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("server: writing %s at %d: %w", b.path, off+int64(n), err)
		case k == 0:
			return fmt.Errorf("server: writing %s at %d: %w", b.path, off+int64(n), io.ErrShortWrite)
		}
		n += k
	}
	return nil
}

// Size returns the exported size: the file's at open, rounded down to
// blocks.
func (b *File) Size() (int64, error) { return b.size, nil }

// Refresh reads the file's or device's size again, rounded down to whole
// logical blocks (Refresher).
func (b *File) Refresh() (int64, error) {
	var size int64
	if b.blockDev {
		var n uint64
		if err := ioctlPtr(b.fd, unix.BLKGETSIZE64, unsafe.Pointer(&n)); err != nil {
			return 0, fmt.Errorf("server: %s: BLKGETSIZE64: %w", b.path, err)
		}
		size = int64(n)
	} else {
		var st unix.Stat_t
		if err := unix.Fstat(b.fd, &st); err != nil {
			return 0, fmt.Errorf("server: stat %s: %w", b.path, err)
		}
		size = st.Size
	}
	return size - size%int64(b.logical), nil
}

// Sync makes all completed writes durable. fdatasync covers writes made
// through any stream, which is what lets exports announce multi-conn.
func (b *File) Sync() error {
	if b.readOnly {
		return nil
	}
	for {
		err := unix.Fdatasync(b.fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("server: syncing %s: %w", b.path, err)
		}
		return nil
	}
}

// Trim discards n bytes at off: a punched hole in a file, a discard on a
// block device. Without support it does nothing, as trim is advisory.
func (b *File) Trim(off, n int64) error {
	switch {
	case b.readOnly:
		return fmt.Errorf("server: trimming %s at %d: read-only export: %w", b.path, off, unix.EPERM)
	case !b.canTrim || n == 0:
		return nil
	case b.blockDev:
		r := [2]uint64{uint64(off), uint64(n)}
		if err := ioctlPtr(b.fd, unix.BLKDISCARD, unsafe.Pointer(&r)); err != nil {
			return fmt.Errorf("server: discarding %s at %d+%d: %w", b.path, off, n, err)
		}
		return nil
	}
	return b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// WriteZeroes makes n bytes at off read as zero: a punched hole when holes
// are allowed and supported, else ZERO_RANGE or BLKZEROOUT, else written
// zeroes.
func (b *File) WriteZeroes(off, n int64, noHole bool) error {
	if b.readOnly {
		return fmt.Errorf("server: zeroing %s at %d: read-only export: %w", b.path, off, unix.EPERM)
	}
	if n == 0 {
		return nil
	}
	if !noHole && b.canTrim && !b.blockDev {
		return b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}
	if !b.noZeroRange.Load() {
		var err error
		if b.blockDev {
			r := [2]uint64{uint64(off), uint64(n)}
			if e := ioctlPtr(b.fd, unix.BLKZEROOUT, unsafe.Pointer(&r)); e != nil {
				err = fmt.Errorf("server: zeroing %s at %d+%d: %w", b.path, off, n, e)
			}
		} else {
			err = b.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOTTY) && !errors.Is(err, unix.EINVAL) {
			return err
		}
		b.noZeroRange.Store(true)
	}
	return b.writeZeroes(off, n)
}

func (b *File) fallocate(mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(b.fd, mode, off, n)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("server: fallocate(0x%x) %s at %d+%d: %w", mode, b.path, off, n, err)
		}
		return nil
	}
}

func (b *File) writeZeroes(off, n int64) error {
	zero := make([]byte, min(n, zeroChunk))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := b.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// Info returns the block sizes, rotational and trim support found at open.
func (b *File) Info() (logical, physical uint32, rotational, canTrim bool) {
	return b.logical, b.physical, b.rotational, b.canTrim
}

// Identity returns the export identity found or made at open.
func (b *File) Identity() wire.Identity { return b.id }

// Close closes the descriptor.
func (b *File) Close() error {
	if err := b.f.Close(); err != nil {
		return fmt.Errorf("server: closing %s: %w", b.path, err)
	}
	return nil
}

// nowait tries a read or write (sysno SYS_PREADV2 or SYS_PWRITEV2) of p at
// off with RWF_NOWAIT, as a raw system call, and returns how many bytes it
// moved; the caller does the rest the usual way. With RWF_NOWAIT the
// kernel refuses (EAGAIN) rather than wait for the disk, so the call is
// quick and need not tell the Go runtime it might block: a page-cache hit
// then costs no scheduler bookkeeping, which would wake the runtime's
// monitor thread on every request of an otherwise idle server (see
// internal/rawio). A file system that does not support it (EOPNOTSUPP) is
// not asked again.
func (b *File) nowait(sysno uintptr, unsupported *atomic.Bool, p []byte, off int64) int {
	if len(p) == 0 || unsupported.Load() && !b.inMemory {
		return 0
	}
	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	var flags uintptr = unix.RWF_NOWAIT
	if b.inMemory {
		// Memory is all there is to wait for; tmpfs does not take the
		// flag (EOPNOTSUPP), and needs none.
		flags = 0
	}
	r, _, e := unix.RawSyscall6(sysno, uintptr(b.fd), uintptr(unsafe.Pointer(&iov)), 1,
		uintptr(off), 0, flags)
	switch e {
	case 0:
		return int(r)
	case unix.EOPNOTSUPP, unix.EINVAL, unix.ENOSYS:
		unsupported.Store(true)
	}
	return 0
}

// inMemory reports whether fd is a file of a file system held in memory
// (tmpfs, ramfs), whose reads and writes never wait for a disk.
func inMemory(fd int) bool {
	var fs unix.Statfs_t
	if unix.Fstatfs(fd, &fs) != nil {
		return false
	}
	return fs.Type == unix.TMPFS_MAGIC || fs.Type == unix.RAMFS_MAGIC
}
