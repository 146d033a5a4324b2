// Package rawio reads and writes sockets with raw system calls through the
// Go runtime's poller.
//
// Why: a socket's file descriptor is non-blocking, so its read and write
// calls return at once, with data or EAGAIN. Go nevertheless makes them
// through syscall.Syscall, whose entersyscall wakes the runtime's monitor
// thread (sysmon) whenever it sleeps because every P was idle. A block
// device at queue depth one goes idle between requests, so that is a
// thread wake-up, and two or three context switches of sysmon's, for every
// request in each process (perf: 46% of dst attach's and dst serve's
// context switches at QD1 before this package). RawSyscall skips that
// bookkeeping, which only matters for calls that may block; when a call
// would block (EAGAIN), the runtime's poller parks the goroutine as usual
// (syscall.RawConn), so deadlines and Close keep working.
package rawio

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Conn is a net.Conn whose Read, Write and Writev use raw system calls.
type Conn struct {
	net.Conn
	rc syscall.RawConn

	poller  *Poller // set by Poller.Add
	fd      int32
	out     atomic.Bool  // taken out of poller's set
	score   atomic.Int32 // how this Conn's reader's rounds of polling have ended (see tally)
	skipped int          // rounds its reader did not begin since the last probe; used only while polling

	// The runtime's poller runs a function of ours with the descriptor,
	// as often as the socket is ready, until it reports done. A closure
	// per call would escape to the heap with what it shares with its
	// caller: three allocations per Read or Write. So each direction has
	// one op for its arguments and results, and its functions are bound
	// to it once, in Wrap; rmu and wmu let one Read and one Write (or
	// Writev) use them at a time, as the runtime serializes them anyway.
	rmu      sync.Mutex
	rd       op
	readFn   func(fd uintptr) bool
	wmu      sync.Mutex
	wr       op
	writeFn  func(fd uintptr) bool
	writevFn func(fd uintptr) bool
}

// op is one call's arguments and results.
type op struct {
	c     *Conn
	p     []byte          // read into or written from
	bufs  [][]byte        // Writev's
	iov   []syscall.Iovec // Writev's, kept between calls
	n     int64           // bytes moved
	errno syscall.Errno
	wait  bool // Write: wait for room, rather than return what was written
}

// Wrap returns c reading and writing with raw system calls when it is a
// TCP or unix socket, and c itself otherwise (net.Pipe in tests).
func Wrap(c net.Conn) net.Conn {
	sc, ok := c.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return c
	}
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	w := &Conn{Conn: c, rc: rc}
	w.rd.c, w.wr.c = w, w
	w.readFn, w.writeFn, w.writevFn = w.rd.read, w.wr.write, w.wr.writev
	return w
}

// Unwrap returns the connection Wrap was given.
func (c *Conn) Unwrap() net.Conn { return c.Conn }

// Read reads into p, waiting on the poller while there is nothing to read.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	o := &c.rd
	o.p, o.n, o.errno = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := int(o.n), o.errno
	o.p = nil
	c.rmu.Unlock()
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read reads once into o.p, waiting for data.
func (o *op) read(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&o.p[0])), uintptr(len(o.p)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if p := o.c.poller; p != nil && p.poll(o.c) {
				continue
			}
			return false
		}
		o.n, o.errno = int64(r), e
		return true
	}
}

// Close closes the connection, taking it out of its Poller's set first.
func (c *Conn) Close() error {
	if c.poller != nil && !c.out.Swap(true) {
		c.poller.remove(c)
	}
	return c.Conn.Close()
}

// Write writes all of p, waiting on the poller while the socket is full.
func (c *Conn) Write(p []byte) (int, error) { return c.write(p, true) }

// TryWrite writes what of p the socket takes without waiting.
func (c *Conn) TryWrite(p []byte) (int, error) { return c.write(p, false) }

// write writes p until it is all written or, unless wait, the socket is
// full.
func (c *Conn) write(p []byte, wait bool) (int, error) {
	c.wmu.Lock()
	o := &c.wr
	o.p, o.n, o.errno, o.wait = p, 0, 0, wait
	err := c.rc.Write(c.writeFn)
	written, errno := int(o.n), o.errno
	o.p = nil
	c.wmu.Unlock()
	if err == nil && errno != 0 {
		err = errno
	}
	if err != nil {
		return written, c.opError("write", err)
	}
	return written, nil
}

// write writes o.p until it is all written or, unless o.wait, the socket
// is full.
func (o *op) write(fd uintptr) bool {
	for o.n < int64(len(o.p)) {
		q := o.p[o.n:]
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&q[0])), uintptr(len(q)))
		switch e {
		case 0:
			o.n += int64(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return !o.wait
		default:
			o.errno = e
			return true
		}
	}
	return true
}

// maxIovecs bounds the buffers of one writev call (Linux's UIO_MAXIOV).
const maxIovecs = 1024

// Writev writes every buffer of bufs, in order, with vectored writes.
func (c *Conn) Writev(bufs [][]byte) (int64, error) {
	c.wmu.Lock()
	o := &c.wr
	o.bufs, o.n, o.errno = bufs, 0, 0
	err := c.rc.Write(c.writevFn)
	total, errno := o.n, o.errno
	clear(o.iov[:cap(o.iov)]) // keep no buffer of the caller's reachable
	o.bufs = nil
	c.wmu.Unlock()
	if err == nil && errno != 0 {
		err = errno
	}
	if err != nil {
		return total, c.opError("writev", err)
	}
	return total, nil
}

// writev writes every buffer of o.bufs, waiting for room. A buffer
// written in part is resliced in place, in the caller's slice.
func (o *op) writev(fd uintptr) bool {
	for len(o.bufs) > 0 {
		iov := o.iov[:0]
		for _, b := range o.bufs {
			if len(b) == 0 {
				continue
			}
			iov = append(iov, syscall.Iovec{Base: &b[0]})
			iov[len(iov)-1].SetLen(len(b))
			if len(iov) == maxIovecs {
				break
			}
		}
		o.iov = iov
		if len(iov) == 0 {
			o.bufs = nil
			return true
		}
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		switch e {
		case 0:
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			o.errno = e
			return true
		}
		n := int(r)
		o.n += int64(n)
		for n > 0 && len(o.bufs) > 0 {
			if n >= len(o.bufs[0]) {
				n -= len(o.bufs[0])
				o.bufs = o.bufs[1:]
				continue
			}
			o.bufs[0] = o.bufs[0][n:]
			n = 0
		}
		for len(o.bufs) > 0 && len(o.bufs[0]) == 0 {
			o.bufs = o.bufs[1:]
		}
	}
	return true
}

func (c *Conn) opError(op string, err error) error {
	if _, ok := err.(*net.OpError); ok {
		return err
	}
	if errno, ok := err.(syscall.Errno); ok {
		err = &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(),
			Err: &osSyscallError{op, errno}}
	}
	return err
}

// osSyscallError names the failed call like os.SyscallError does.
type osSyscallError struct {
	call string
	err  syscall.Errno
}

func (e *osSyscallError) Error() string { return e.call + ": " + e.err.Error() }
func (e *osSyscallError) Unwrap() error { return e.err }

// GrowSendBuffer asks for a send buffer of n bytes on a unix socket (the
// kernel doubles the figure for its bookkeeping), past net.core.wmem_max
// when the process may (SO_SNDBUFFORCE, CAP_NET_ADMIN) and up to it
// otherwise. Other sockets are left alone: TCP sizes its own.
//
// Why: a unix stream socket's sender stops once its send buffer holds what
// the reader has not taken yet, and the default, 208 KiB, is less than one
// 256 KiB NBD reply. Each such reply then costs the sender a sleep and the
// reader one more wake-up, and both a trip across CPUs.
func GrowSendBuffer(c net.Conn, n int) error {
	if w, ok := c.(*Conn); ok {
		c = w.Conn
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = GrowSendBufferFd(int(fd), n) }); err != nil {
		return err
	}
	return serr
}

// GrowSendBufferFd is GrowSendBuffer for a socket's descriptor.
func GrowSendBufferFd(fd, n int) error {
	if syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, n) == nil {
		return nil
	}
	return syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, n)
}
