package nbdclient

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/rawio"
)

// ErrClosed is returned by requests made after Close, and by requests that
// were in flight when Close was called.
var ErrClosed = errors.New("nbdclient: client closed")

// ErrConnection is wrapped by the errors of requests failed because the
// connection broke, as opposed to an error the server replied with. The
// cause (often an errno such as EPIPE or ECONNRESET) is wrapped too.
var ErrConnection = errors.New("connection")

// ReplyError is a request's error as the server replied it: the errno,
// and the message of a structured error chunk if there was one. It
// unwraps to the errno as a syscall.Errno, so errors.Is(err, syscall.EIO)
// works.
type ReplyError struct {
	Errno   syscall.Errno
	Message string
}

func (e *ReplyError) Error() string {
	if e.Message == "" {
		return e.Errno.Error()
	}
	return e.Errno.Error() + ": " + e.Message
}

func (e *ReplyError) Unwrap() error { return e.Errno }

// Client is one NBD connection in the transmission phase. Its methods are
// safe for concurrent use. There are no timeouts: Close (within about a
// second) fails whatever is in flight, so a caller facing a silent server
// uses that.
//
// Locking: wmu serializes whole requests (header and payload) on the
// socket, so requests from many goroutines never interleave, and a
// request is registered and written under it; mu guards the pending map
// and the connection's first error. Lock order: wmu, then mu. The reader
// goroutine is the only one that reads the socket, and the only one that
// completes calls.
type Client struct {
	conn net.Conn
	info Export

	wmu sync.Mutex
	hdr [nbdwire.RequestSize]byte // under wmu
	wb  [2][]byte                 // under wmu: the buffers of one writev
	out []byte                    // under wmu: requests queued by Queue, not yet written

	mu      sync.Mutex
	pending map[uint64]*Call
	handle  uint64
	err     error // first connection error; no new requests once set

	// The reader role: whoever holds role reads replies and completes
	// calls, the background reader or a caller of GoWait. The fields
	// after it are the role's.
	role    sync.Mutex
	br      *bufio.Reader
	h       [nbdwire.ChunkSize]byte
	scratch [12]byte // a chunk's offset and hole length
	drain   func()   // see OnDrain

	wake       chan struct{} // one token: calls are pending that nobody reads for
	readerDone chan struct{}
}

// Call is one request. The caller fills the request's fields and Done,
// and passes it to Go; the reader goroutine sets Err and calls Done once
// the reply is in, or the connection ended. Done must not block: it runs
// on the goroutine that reads every reply of the connection.
type Call struct {
	Cmd    nbdwire.Command
	Flags  nbdwire.CmdFlags
	Offset uint64
	Length uint32
	// Data is a WRITE's payload, or where a READ's data goes; its length
	// is Length.
	Data []byte
	Err  error
	Done func(*Call)
	// Owner is the caller's, for Done to find its context without a
	// closure.
	Owner any

	// For a structured READ: the ranges filled so far, in one's room
	// while there is one (the usual reply is a single chunk).
	filled []span
	one    [1]span
	soft   error // the first error chunk; the reply goes on until DONE
}

type span struct{ lo, hi uint64 }

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
	info, err := handshake(conn, export)
	if !stop() || err != nil {
		conn.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	c := &Client{
		conn:       rawio.Wrap(conn),
		info:       info,
		pending:    make(map[uint64]*Call),
		wake:       make(chan struct{}, 1),
		readerDone: make(chan struct{}),
	}
	c.br = bufio.NewReaderSize(drainReader{c}, 64<<10)
	go c.readLoop()
	return c, nil
}

// OnDrain sets f, which whoever reads replies calls when it has completed
// every reply its buffer holds: before it waits on the socket for more,
// and before it stops reading. A caller whose Done functions only gather
// their completions acts on them in f, once per burst of replies instead
// of once per reply. f runs where Done does, and must not block. Calls
// that fail because the connection ended may complete after the last
// drain: Done must act on a failed call at once. Set f before the first
// request.
func (c *Client) OnDrain(f func()) { c.drain = f }

// drainReader is the reader role's view of the socket: it drains before
// every read, which may wait.
type drainReader struct{ c *Client }

func (r drainReader) Read(p []byte) (int, error) {
	if r.c.drain != nil {
		r.c.drain()
	}
	return r.c.conn.Read(p)
}

// release gives up the reader role, draining first.
func (c *Client) release() {
	if c.drain != nil {
		c.drain()
	}
	c.role.Unlock()
}

// Size returns the export's size in bytes.
func (c *Client) Size() uint64 { return c.info.Size }

// Flags returns the export's transmission flags.
func (c *Client) Flags() nbdwire.TransFlags { return c.info.Flags }

// Export returns what the server told of the export at the handshake.
func (c *Client) Export() Export { return c.info }

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(p []byte, off int64) error {
	return c.do(nbdwire.CmdRead, 0, off, int64(len(p)), p)
}

// WriteAt writes p at off; with fua the server makes it durable first.
func (c *Client) WriteAt(p []byte, off int64, fua bool) error {
	var flags nbdwire.CmdFlags
	if fua {
		flags = nbdwire.FlagFUA
	}
	return c.do(nbdwire.CmdWrite, flags, off, int64(len(p)), p)
}

// Flush asks the server to make every completed write durable.
func (c *Client) Flush() error { return c.do(nbdwire.CmdFlush, 0, 0, 0, nil) }

// Trim tells the server n bytes at off are unused.
func (c *Client) Trim(off, n int64) error { return c.do(nbdwire.CmdTrim, 0, off, n, nil) }

// WriteZeroes makes n bytes at off read as zero; flags may hold FUA and
// NO_HOLE.
func (c *Client) WriteZeroes(off, n int64, flags nbdwire.CmdFlags) error {
	return c.do(nbdwire.CmdWriteZeroes, flags, off, n, nil)
}

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
	c.poke()
	<-c.readerDone
	if !alive || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Err returns the error that ended the connection, or nil while it lives.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// do sends one request of n bytes at off and waits for its reply.
func (c *Client) do(cmd nbdwire.Command, flags nbdwire.CmdFlags, off, n int64, data []byte) error {
	if off < 0 || n < 0 || n > math.MaxUint32 {
		return fmt.Errorf("nbdclient: %v at %d+%d: out of range", cmd, off, n)
	}
	done := make(chan struct{})
	cl := &Call{Cmd: cmd, Flags: flags, Offset: uint64(off), Length: uint32(n), Data: data,
		Done: func(*Call) { close(done) }}
	if err := c.Go(cl); err != nil {
		return fmt.Errorf("nbdclient: %v at %d+%d: %w", cmd, off, n, err)
	}
	<-done
	if cl.Err != nil {
		return fmt.Errorf("nbdclient: %v at %d+%d: %w", cmd, off, n, cl.Err)
	}
	return nil
}

// Go sends cl. Unless it returns an error (the connection has ended, or
// cl is malformed), cl.Done is called exactly once, on the reader
// goroutine.
func (c *Client) Go(cl *Call) error {
	if _, err := c.send(cl); err != nil {
		return err
	}
	c.poke()
	return nil
}

// send registers cl under a new handle and writes its request. Both
// happen under wmu, which failAll takes before it fails the pending
// calls: a call is never completed (and its memory reused by Done) while
// its request is still being written.
func (c *Client) send(cl *Call) (uint64, error) {
	c.wmu.Lock()
	h, err := c.register(cl)
	if err != nil {
		c.wmu.Unlock()
		return 0, err
	}
	err = c.writeLocked(cl, h)
	c.wmu.Unlock()
	if err != nil {
		// A failed write breaks the connection: the request may be half
		// sent, so nothing after it could be parsed; whoever reads
		// replies next fails the pending calls, cl among them.
		c.fail(fmt.Errorf("%w: %w", ErrConnection, err))
	}
	return h, nil
}

// register checks cl and makes it pending under a new handle.
func (c *Client) register(cl *Call) (uint64, error) {
	if (cl.Cmd == nbdwire.CmdRead || cl.Cmd == nbdwire.CmdWrite) && len(cl.Data) != int(cl.Length) {
		return 0, fmt.Errorf("nbdclient: %v of %d bytes with a buffer of %d", cl.Cmd, cl.Length, len(cl.Data))
	}
	cl.Err, cl.filled, cl.soft = nil, cl.one[:0], nil
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	c.handle++
	c.pending[c.handle] = cl
	return c.handle, nil
}

// writeLocked writes cl's request under handle h; wmu is held.
func (c *Client) writeLocked(cl *Call, h uint64) error {
	if len(c.out) > 0 && (cl.Cmd != nbdwire.CmdWrite || len(cl.Data) <= maxQueued) {
		// Behind queued requests: one write for them all.
		c.queueLocked(cl, h)
		return c.flushLocked()
	}
	nbdwire.Request{Flags: cl.Flags, Cmd: cl.Cmd, Cookie: h, Offset: cl.Offset, Length: cl.Length}.Append(c.hdr[:0])
	switch {
	case len(c.out) > 0:
		// A large WRITE behind queued requests: those first.
		if err := c.flushLocked(); err != nil {
			return err
		}
		fallthrough
	case cl.Cmd == nbdwire.CmdWrite && len(cl.Data) > 0:
		// One writev.
		c.wb = [2][]byte{c.hdr[:], cl.Data}
		err := c.writev(c.wb[:])
		c.wb = [2][]byte{}
		return err
	default:
		_, err := c.conn.Write(c.hdr[:])
		return err
	}
}

// maxQueued bounds the payload Queue copies into its buffer; a larger
// WRITE is written at once.
const maxQueued = 64 << 10

// Queue is Go without the write: cl's request joins a buffer that Push,
// or the next request written at once, sends in one system call. A caller
// with more requests in hand queues them and flushes after the last, so
// a burst costs one write here and one wake-up at the server instead of
// one each. Until then the request is not sent: the caller must Push
// before it waits for anything.
func (c *Client) Queue(cl *Call) error {
	if cl.Cmd == nbdwire.CmdWrite && len(cl.Data) > maxQueued {
		return c.Go(cl)
	}
	c.wmu.Lock() // see send
	h, err := c.register(cl)
	if err != nil {
		c.wmu.Unlock()
		return err
	}
	c.queueLocked(cl, h)
	c.wmu.Unlock()
	c.poke()
	return nil
}

// queueLocked appends cl's request under handle h to the requests not
// yet written; wmu is held.
func (c *Client) queueLocked(cl *Call, h uint64) {
	c.out = nbdwire.Request{Flags: cl.Flags, Cmd: cl.Cmd, Cookie: h, Offset: cl.Offset, Length: cl.Length}.Append(c.out)
	if cl.Cmd == nbdwire.CmdWrite {
		c.out = append(c.out, cl.Data...)
	}
}

// Push writes the requests Queue holds.
func (c *Client) Push() {
	c.wmu.Lock()
	err := c.flushLocked()
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("%w: %w", ErrConnection, err))
	}
}

// writev writes bufs in one vectored write where the socket allows.
func (c *Client) writev(bufs [][]byte) error {
	if rc, ok := c.conn.(*rawio.Conn); ok {
		_, err := rc.Writev(bufs)
		return err
	}
	b := net.Buffers(bufs)
	_, err := b.WriteTo(c.conn)
	return err
}

func (c *Client) flushLocked() error {
	if len(c.out) == 0 {
		return nil
	}
	_, err := c.conn.Write(c.out)
	if cap(c.out) > 4<<20 {
		c.out = nil // a burst of large writes: do not keep its buffer
	} else {
		c.out = c.out[:0]
	}
	return err
}

// GoWait is Go, and then, unless another goroutine is reading replies,
// reads them itself until cl's has come: cl.Done runs on the caller's
// goroutine, and a request at queue depth one costs no hand-off to the
// background reader and back. Replies of other calls read meanwhile are
// completed too.
func (c *Client) GoWait(cl *Call) error {
	h, err := c.send(cl)
	if err != nil {
		return err
	}
	if !c.role.TryLock() {
		c.poke()
		return nil
	}
	// Whoever held the role before may have read cl's reply already; cl
	// is then not to be touched (its Done may have reused it), and its
	// handle is no longer pending. While the role is held, a pending
	// handle's reply is still to come.
	for c.isPending(h) {
		x, err := c.readOne()
		if err != nil {
			c.release()
			c.failAll(x, err)
			return nil
		}
		if x != nil {
			x.Done(x)
		}
	}
	c.release()
	if c.pendingCount() > 0 {
		c.poke()
	}
	return nil
}

// poke tells the background reader that calls may be pending.
func (c *Client) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Client) isPending(h uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.pending[h]
	return ok
}

func (c *Client) pendingCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
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

// readLoop is the background reader: it reads replies while calls are
// pending and nobody else holds the reader role, and sleeps otherwise.
// When the connection ends it fails whatever is pending.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	for range c.wake {
		c.role.Lock()
		for c.pendingCount() > 0 {
			x, err := c.readOne()
			if err != nil {
				c.release()
				c.failAll(x, err)
				return
			}
			if x != nil {
				x.Done(x)
			}
		}
		c.release()
		if c.Err() != nil {
			c.failAll(nil, c.Err())
			return
		}
	}
}

// failAll ends the connection with err and fails every pending call, x
// (already taken out, its Err set) first.
func (c *Client) failAll(x *Call, err error) {
	c.fail(err)
	if x != nil {
		x.Done(x)
	}
	// A request being written when the connection failed is still its
	// writer's (see send); fail has closed the socket, so that write ends
	// soon.
	c.wmu.Lock()
	c.mu.Lock()
	pending := c.pending
	c.pending = map[uint64]*Call{}
	err = c.err
	c.mu.Unlock()
	c.wmu.Unlock()
	for _, cl := range pending {
		cl.Err = err
		cl.Done(cl)
	}
	// A GoWait caller that failed wakes the background reader, which
	// then sees the error and exits.
	c.poke()
}

// readOne reads one reply or chunk under the reader role and returns the
// call it completed, if it did (a chunk without DONE completes nothing).
// On an error, the returned call (if any) has been taken out and carries
// the error. Any reply that breaks the protocol (an unknown handle, a
// chunk too long for its request or outside its range, data the request
// did not ask for) ends the connection: nothing after it can be trusted.
func (c *Client) readOne() (*Call, error) {
	br, h := c.br, c.h[:]
	if _, err := io.ReadFull(br, h[:4]); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConnection, err)
	}
	switch m := binary.BigEndian.Uint32(h[:4]); m {
	case nbdwire.MagicSimpleReply:
		return c.readSimple(br, h[:nbdwire.SimpleReplySize])
	case nbdwire.MagicStructuredReply:
		if !c.info.Structured {
			return nil, fmt.Errorf("%w: structured reply, which was not negotiated", ErrProtocol)
		}
		return c.readChunk(br, h)
	default:
		return nil, fmt.Errorf("%w: reply magic %#x", ErrProtocol, m)
	}
}

// take removes and returns the call waiting for handle, or nil.
func (c *Client) take(handle uint64, remove bool) *Call {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.pending[handle]
	if remove {
		delete(c.pending, handle)
	}
	return cl
}

func (c *Client) readSimple(br *bufio.Reader, h []byte) (*Call, error) {
	if _, err := io.ReadFull(br, h[4:]); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConnection, err)
	}
	rep, err := nbdwire.DecodeSimpleReply(h)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	cl := c.take(rep.Cookie, true)
	if cl == nil {
		return nil, fmt.Errorf("%w: reply for unknown handle %d", ErrProtocol, rep.Cookie)
	}
	switch {
	case rep.Errno != 0:
		// Simple replies carry no data after an error.
		cl.Err = &ReplyError{Errno: syscall.Errno(rep.Errno)}
	case cl.Cmd == nbdwire.CmdRead:
		if _, err := io.ReadFull(br, cl.Data); err != nil {
			cl.Err = fmt.Errorf("%w: reading data: %w", ErrConnection, err)
			return cl, cl.Err
		}
	}
	return cl, nil
}

// maxErrorChunk bounds an error chunk's payload: errno, length, the
// longest message the protocol allows, an offset.
const maxErrorChunk = nbdwire.ChunkErrorMinSize + nbdwire.MaxString + 8

func (c *Client) readChunk(br *bufio.Reader, h []byte) (*Call, error) {
	if _, err := io.ReadFull(br, h[4:]); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConnection, err)
	}
	ch, err := nbdwire.DecodeChunk(h)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	done := ch.Flags&nbdwire.ChunkDone != 0
	cl := c.take(ch.Cookie, done)
	if cl == nil {
		return nil, fmt.Errorf("%w: %v chunk for unknown handle %d", ErrProtocol, ch.Type, ch.Cookie)
	}
	if err := c.chunkPayload(br, cl, ch); err != nil {
		if !errors.Is(err, ErrConnection) {
			err = fmt.Errorf("%w: %v reply to %v at %d+%d: %w", ErrProtocol, ch.Type, cl.Cmd, cl.Offset, cl.Length, err)
		}
		if !done {
			c.take(ch.Cookie, true)
		}
		cl.Err = err
		return cl, err
	}
	if !done {
		return nil, nil
	}
	switch {
	case cl.soft != nil:
		cl.Err = cl.soft
	case cl.Cmd == nbdwire.CmdRead && !covers(cl.filled, uint64(cl.Length)):
		cl.Err = fmt.Errorf("%w: READ at %d+%d: the reply's chunks do not cover it", ErrProtocol, cl.Offset, cl.Length)
		return cl, cl.Err
	}
	return cl, nil
}

// chunkPayload reads and applies one chunk's payload; an error means the
// connection must end.
func (c *Client) chunkPayload(br *bufio.Reader, cl *Call, ch nbdwire.Chunk) error {
	read := cl.Cmd == nbdwire.CmdRead
	switch {
	case ch.Type == nbdwire.ChunkNone:
		if ch.Length != 0 || ch.Flags&nbdwire.ChunkDone == 0 {
			return errors.New("NONE chunk with a payload or without DONE")
		}
		return nil
	case ch.Type.IsError():
		if ch.Length > maxErrorChunk {
			return fmt.Errorf("error chunk of %d bytes", ch.Length)
		}
		b := make([]byte, ch.Length)
		if _, err := io.ReadFull(br, b); err != nil {
			return fmt.Errorf("%w: %w", ErrConnection, err)
		}
		e, err := nbdwire.DecodeChunkErr(ch.Type, b)
		if err != nil {
			return err
		}
		if cl.soft == nil {
			cl.soft = &ReplyError{Errno: syscall.Errno(e.Errno), Message: e.Message}
		}
		return nil
	case ch.Type == nbdwire.ChunkOffsetData && read:
		if ch.Length < 8 || ch.Length-8 > cl.Length {
			return fmt.Errorf("data chunk of %d bytes for a read of %d", ch.Length, cl.Length)
		}
		b := c.scratch[:8]
		if _, err := io.ReadFull(br, b); err != nil {
			return fmt.Errorf("%w: %w", ErrConnection, err)
		}
		lo, err := cl.fill(binary.BigEndian.Uint64(b), uint64(ch.Length-8))
		if err != nil {
			return err
		}
		if _, err := io.ReadFull(br, cl.Data[lo:lo+uint64(ch.Length-8)]); err != nil {
			return fmt.Errorf("%w: %w", ErrConnection, err)
		}
		return nil
	case ch.Type == nbdwire.ChunkOffsetHole && read:
		if ch.Length != 12 {
			return fmt.Errorf("hole chunk of %d bytes", ch.Length)
		}
		b := c.scratch[:12]
		if _, err := io.ReadFull(br, b); err != nil {
			return fmt.Errorf("%w: %w", ErrConnection, err)
		}
		n := uint64(binary.BigEndian.Uint32(b[8:]))
		lo, err := cl.fill(binary.BigEndian.Uint64(b[:]), n)
		if err != nil {
			return err
		}
		clear(cl.Data[lo : lo+n])
		return nil
	}
	return errors.New("chunk type not allowed for this request")
}

// fill records that the reply covers n bytes at the export offset off and
// returns where they go in cl.Data: within the request, and overlapping
// nothing filled before.
func (cl *Call) fill(off, n uint64) (uint64, error) {
	if n == 0 || off < cl.Offset || off-cl.Offset > uint64(cl.Length) || n > uint64(cl.Length)-(off-cl.Offset) {
		return 0, fmt.Errorf("chunk of %d bytes at %d is outside the request", n, off)
	}
	lo := off - cl.Offset
	for _, s := range cl.filled {
		if lo < s.hi && s.lo < lo+n {
			return 0, fmt.Errorf("chunk of %d bytes at %d overlaps an earlier one", n, off)
		}
	}
	cl.filled = append(cl.filled, span{lo, lo + n})
	return lo, nil
}

// covers reports whether the non-overlapping spans add up to n bytes.
func covers(spans []span, n uint64) bool {
	var sum uint64
	for _, s := range spans {
		sum += s.hi - s.lo
	}
	return sum == n
}
