package fdconn

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a net.Conn over a blocking socket file descriptor.
//
// Close may run while other goroutines are blocked in Read or Write: it
// shuts the socket down, which wakes them, and closes the descriptor only
// once no call is using it, so a descriptor number is never reused under a
// call in flight.
type Conn struct {
	fd     int
	laddr  net.Addr
	raddr  net.Addr
	mu     sync.Mutex
	users  int
	closed bool
	idle   *sync.Cond // signalled when users drops to zero after Close
}

// New takes over c, which must be a *net.TCPConn or *net.UnixConn, and
// returns a Conn on a duplicate of its descriptor in blocking mode. c is
// closed; it must not be used again.
func New(c net.Conn) (*Conn, error) {
	if Disabled {
		return nil, errors.New("fdconn: disabled")
	}
	type filer interface{ File() (*os.File, error) }
	fc, ok := c.(filer)
	if !ok {
		return nil, fmt.Errorf("fdconn: %T has no file descriptor", c)
	}
	f, err := fc.File()
	if err != nil {
		return nil, fmt.Errorf("fdconn: %w", err)
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("fdconn: dup: %w", err)
	}
	// O_NONBLOCK belongs to the open file, shared with c's descriptor: c is
	// closed right after, so nothing else depends on it.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fdconn: %w", err)
	}
	unix.CloseOnExec(fd)
	nc := &Conn{fd: fd, laddr: c.LocalAddr(), raddr: c.RemoteAddr()}
	nc.idle = sync.NewCond(&nc.mu)
	c.Close()
	return nc, nil
}

func (c *Conn) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.users++
	return true
}

func (c *Conn) leave() {
	c.mu.Lock()
	c.users--
	if c.users == 0 && c.closed {
		c.idle.Broadcast()
	}
	c.mu.Unlock()
}

// Read returns data already queued on the socket without blocking. When
// there is none, it first yields the processor so that goroutines made
// runnable by the caller (a reader hands what it read to others) run now,
// rather than wait behind a thread parked in the kernel; then it blocks in
// read(2).
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if !c.enter() {
		return 0, net.ErrClosed
	}
	defer c.leave()
	for try := 0; ; try++ {
		var n int
		var err error
		if try < 2 {
			n, err = recvNow(c.fd, p)
			if err == unix.EAGAIN {
				if try == 0 {
					runtime.Gosched()
				}
				continue
			}
		} else {
			n, err = unix.Read(c.fd, p)
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, os.ErrDeadlineExceeded
		case err != nil:
			return 0, c.opError("read", err)
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// recvNow is recv(2) with MSG_DONTWAIT, without allocating.
func recvNow(fd int, p []byte) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
		unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// Write writes all of p, with as many write(2) calls as it takes.
func (c *Conn) Write(p []byte) (int, error) {
	if !c.enter() {
		return 0, net.ErrClosed
	}
	defer c.leave()
	done := 0
	for done < len(p) {
		n, err := unix.Write(c.fd, p[done:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return done, os.ErrDeadlineExceeded
		case err != nil:
			return done, c.opError("write", err)
		}
		done += n
	}
	return done, nil
}

// maxIovecs is the kernel's IOV_MAX: writev takes no more at once.
const maxIovecs = 1024

// WriteBuffers writes all of bufs with writev(2), for callers that would
// otherwise copy a header and a payload together.
func (c *Conn) WriteBuffers(bufs [][]byte) (int64, error) {
	if !c.enter() {
		return 0, net.ErrClosed
	}
	defer c.leave()
	var total int64
	for len(bufs) > 0 {
		n, err := unix.Writev(c.fd, bufs[:min(len(bufs), maxIovecs)])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return total, os.ErrDeadlineExceeded
		case err != nil:
			return total, c.opError("writev", err)
		}
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
	return total, nil
}

func (c *Conn) opError(op string, err error) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return net.ErrClosed
	}
	return &net.OpError{Op: op, Net: "fd", Source: c.laddr, Addr: c.raddr, Err: os.NewSyscallError(op, err)}
}

// Close shuts the socket down, waking blocked calls, and closes the
// descriptor once they have returned.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.closed = true
	unix.Shutdown(c.fd, unix.SHUT_RDWR)
	for c.users > 0 {
		c.idle.Wait()
	}
	c.mu.Unlock()
	return unix.Close(c.fd)
}

// CloseWrite shuts down the sending side.
func (c *Conn) CloseWrite() error { return unix.Shutdown(c.fd, unix.SHUT_WR) }

func (c *Conn) LocalAddr() net.Addr  { return c.laddr }
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func (c *Conn) SetReadDeadline(t time.Time) error  { return c.timeout(unix.SO_RCVTIMEO, t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.timeout(unix.SO_SNDTIMEO, t) }

// timeout sets a socket timeout from a deadline; the zero time clears it.
// A deadline already past becomes the shortest timeout the kernel takes.
func (c *Conn) timeout(opt int, t time.Time) error {
	var tv unix.Timeval
	if !t.IsZero() {
		d := time.Until(t)
		if d < time.Microsecond {
			d = time.Microsecond
		}
		tv = unix.NsecToTimeval(d.Nanoseconds())
	}
	if !c.enter() {
		return net.ErrClosed
	}
	defer c.leave()
	return unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, opt, &tv)
}

var _ net.Conn = (*Conn)(nil)

// Disabled turns New into a no-op failure, for comparing against Go's
// poller (DST_POLLER=1).
var Disabled = os.Getenv("DST_POLLER") != ""

// Listener wraps l so that it accepts Conns.
func Listener(l net.Listener) net.Listener { return listener{l} }

type listener struct{ net.Listener }

// Accept converts each accepted connection; one that cannot be converted
// is handed out as it is, served through the poller.
func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if fc, err := New(c); err == nil {
		return fc, nil
	}
	return c, nil
}
