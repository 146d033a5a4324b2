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
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Conn is a net.Conn whose Read, Write and Writev use raw system calls.
type Conn struct {
	net.Conn
	rc syscall.RawConn

	poller *Poller // set by Poller.Add
	fd     int32
	out    atomic.Bool // taken out of poller's set
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
	return &Conn{Conn: c, rc: rc}
}

// Unwrap returns the connection Wrap was given.
func (c *Conn) Unwrap() net.Conn { return c.Conn }

// Read reads into p, waiting on the poller while there is nothing to read.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				if c.poller != nil && c.poller.poll(int32(fd)) {
					continue
				}
				return false
			}
			n, errno = int(r), e
			return true
		}
	})
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

// Close closes the connection, taking it out of its Poller's set first.
func (c *Conn) Close() error {
	if c.poller != nil && !c.out.Swap(true) {
		c.poller.remove(c.fd)
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
	written := 0
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for written < len(p) {
			q := p[written:]
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&q[0])), uintptr(len(q)))
			switch e {
			case 0:
				written += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return !wait
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err == nil && errno != 0 {
		err = errno
	}
	if err != nil {
		return written, c.opError("write", err)
	}
	return written, nil
}

// maxIovecs bounds the buffers of one writev call (Linux's UIO_MAXIOV).
const maxIovecs = 1024

// Writev writes every buffer of bufs, in order, with vectored writes.
func (c *Conn) Writev(bufs [][]byte) (int64, error) {
	iov := make([]syscall.Iovec, 0, min(len(bufs), maxIovecs))
	var total int64
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for len(bufs) > 0 {
			iov = iov[:0]
			for _, b := range bufs {
				if len(b) == 0 {
					continue
				}
				iov = append(iov, syscall.Iovec{Base: &b[0]})
				iov[len(iov)-1].SetLen(len(b))
				if len(iov) == maxIovecs {
					break
				}
			}
			if len(iov) == 0 {
				bufs = nil
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
				errno = e
				return true
			}
			n := int(r)
			total += int64(n)
			for n > 0 && len(bufs) > 0 {
				if n >= len(bufs[0]) {
					n -= len(bufs[0])
					bufs = bufs[1:]
					continue
				}
				bufs[0] = bufs[0][n:]
				n = 0
			}
			for len(bufs) > 0 && len(bufs[0]) == 0 {
				bufs = bufs[1:]
			}
		}
		return true
	})
	clear(iov)
	if err == nil && errno != 0 {
		err = errno
	}
	if err != nil {
		return total, c.opError("writev", err)
	}
	return total, nil
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
