package nbdclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/dstproject/dst/internal/nbdwire"
)

// ErrClosed is returned by requests made after Close, and by requests that
// were in flight when Close was called.
var ErrClosed = errors.New("nbdclient: client closed")

// ErrConnection is wrapped by the errors of requests failed because the
// connection broke, as opposed to an error the server replied with. The
// cause (often an errno such as EPIPE or ECONNRESET) is wrapped too.
var ErrConnection = errors.New("connection")

// Client is one NBD connection in the transmission phase. Its methods are
// safe for concurrent use; each blocks until its reply arrives or the
// connection ends. There are no timeouts: Close (within about a second)
// fails whatever is in flight, so a test facing a silent server uses that.
//
// Locking: wmu serializes whole requests (header and payload) on the
// socket, so requests from many goroutines never interleave; mu guards the
// pending map and the connection's first error. The reader goroutine is
// the only one that reads the socket.
type Client struct {
	conn  net.Conn
	size  uint64
	flags nbdwire.TransFlags

	wmu sync.Mutex

	mu      sync.Mutex
	pending map[uint64]*call
	handle  uint64
	err     error // first connection error; no new requests once set

	readerDone chan struct{}
}

// call is one request awaiting its reply. buf is where a read's data goes.
type call struct {
	cmd  nbdwire.Command
	buf  []byte
	done chan error // buffered: the reader never blocks on it
}

// Dial connects to the NBD server at addr ("unix" or "tcp" network) and
// opens export. ctx bounds the connection and the handshake.
func Dial(ctx context.Context, network, addr, export string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbdclient: %w", err)
	}
	// Cancelling ctx aborts the handshake's blocked reads and writes.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	size, flags, err := handshake(conn, export)
	if !stop() || err != nil {
		conn.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	c := &Client{
		conn:       conn,
		size:       size,
		flags:      flags,
		pending:    make(map[uint64]*call),
		readerDone: make(chan struct{}),
	}
	go c.readLoop()
	return c, nil
}

// Size returns the export's size in bytes.
func (c *Client) Size() uint64 { return c.size }

// Flags returns the export's transmission flags.
func (c *Client) Flags() nbdwire.TransFlags { return c.flags }

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(p []byte, off int64) error {
	return c.do(nbdwire.CmdRead, 0, off, int64(len(p)), p, nil)
}

// WriteAt writes p at off; with fua the server makes it durable first.
func (c *Client) WriteAt(p []byte, off int64, fua bool) error {
	var flags nbdwire.CmdFlags
	if fua {
		flags = nbdwire.FlagFUA
	}
	return c.do(nbdwire.CmdWrite, flags, off, int64(len(p)), nil, p)
}

// Flush asks the server to make every completed write durable.
func (c *Client) Flush() error { return c.do(nbdwire.CmdFlush, 0, 0, 0, nil, nil) }

// Trim tells the server n bytes at off are unused.
func (c *Client) Trim(off, n int64) error { return c.do(nbdwire.CmdTrim, 0, off, n, nil, nil) }

// Close sends NBD_CMD_DISC and closes the connection. Requests still in
// flight fail with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	alive := c.err == nil
	if alive {
		c.err = ErrClosed
	}
	c.mu.Unlock()
	if alive {
		// The deadline also ends a write blocked by a peer that stopped
		// reading, which holds wmu; Close must not hang on it.
		c.conn.SetWriteDeadline(time.Now().Add(time.Second))
		c.wmu.Lock()
		c.conn.Write(nbdwire.Request{Cmd: nbdwire.CmdDisc}.Append(nil))
		c.wmu.Unlock()
	}
	err := c.conn.Close()
	<-c.readerDone
	if !alive || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// do sends one request of n bytes at off and waits for its reply. rbuf is
// filled by a read; wbuf is a write's payload.
func (c *Client) do(cmd nbdwire.Command, flags nbdwire.CmdFlags, off, n int64, rbuf, wbuf []byte) error {
	if off < 0 || n < 0 || n > math.MaxUint32 {
		return fmt.Errorf("nbdclient: %v at %d+%d: out of range", cmd, off, n)
	}
	cl := &call{cmd: cmd, buf: rbuf, done: make(chan error, 1)}
	h, err := c.register(cl)
	if err != nil {
		return fmt.Errorf("nbdclient: %v at %d+%d: %w", cmd, off, n, err)
	}
	req := nbdwire.Request{Flags: flags, Cmd: cmd, Cookie: h, Offset: uint64(off), Length: uint32(n)}
	c.send(req.Append(make([]byte, 0, nbdwire.RequestSize)), wbuf)
	if err := <-cl.done; err != nil {
		return fmt.Errorf("nbdclient: %v at %d+%d: %w", cmd, off, n, err)
	}
	return nil
}

func (c *Client) register(cl *call) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	c.handle++
	c.pending[c.handle] = cl
	return c.handle, nil
}

// send writes a request. A failed write breaks the connection: the
// request may be half sent, so nothing after it could be parsed.
func (c *Client) send(hdr, payload []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	bufs := net.Buffers{hdr}
	if len(payload) > 0 {
		bufs = append(bufs, payload)
	}
	if _, err := bufs.WriteTo(c.conn); err != nil {
		c.fail(fmt.Errorf("%w: %w", ErrConnection, err))
	}
}

// fail records err as the connection's error and closes the socket; the
// reader then fails every pending request with it.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.conn.Close()
}

// readLoop reads replies until the connection ends, then fails whatever
// is still pending with the connection's first error.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	br := bufio.NewReaderSize(c.conn, 64<<10)
	err := c.readReplies(br)
	c.fail(err)
	c.mu.Lock()
	pending := c.pending
	c.pending = nil
	err = c.err
	c.mu.Unlock()
	for _, cl := range pending {
		cl.done <- err
	}
}

func (c *Client) readReplies(br *bufio.Reader) error {
	var h [nbdwire.SimpleReplySize]byte
	for {
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return fmt.Errorf("%w: %w", ErrConnection, err)
		}
		rep, err := nbdwire.DecodeSimpleReply(h[:]) // a structured reply was not negotiated
		if err != nil {
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		errno, handle := rep.Errno, rep.Cookie
		c.mu.Lock()
		cl := c.pending[handle]
		delete(c.pending, handle)
		c.mu.Unlock()
		if cl == nil {
			return fmt.Errorf("%w: reply for unknown handle %d", ErrProtocol, handle)
		}
		if errno != 0 {
			// Simple replies carry no data after an error.
			cl.done <- syscall.Errno(errno)
			continue
		}
		if cl.cmd == nbdwire.CmdRead {
			if _, err := io.ReadFull(br, cl.buf); err != nil {
				err = fmt.Errorf("%w: reading data: %w", ErrConnection, err)
				cl.done <- err
				return err
			}
		}
		cl.done <- nil
	}
}
