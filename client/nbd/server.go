package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/rawio"
)

// ErrProtocol is wrapped by errors that end a connection because the peer
// broke the protocol (bad magic, unknown client flags, oversized payloads).
var ErrProtocol = errors.New("nbd: protocol error")

// maxPayload bounds a READ or WRITE payload whatever the export announces.
// It is the largest payload the spec says a peer must not treat as abuse, and
// it keeps a single request's buffer allocation bounded.
const maxPayload = 32 << 20

// Block size defaults, used when an Export leaves a field zero. They are the
// protocol's defaults, so announcing them changes nothing for old clients.
const (
	defaultMinBlock       = 1
	defaultPreferredBlock = 4096
)

// Request is one NBD command handed to a Device. The Device must call
// Complete exactly once, from any goroutine, and must not touch the Request
// or its Data after that: both are recycled for later requests.
type Request struct {
	Cmd    nbdwire.Command
	Flags  nbdwire.CmdFlags
	Offset uint64
	Length uint32
	// Data is the payload for CmdWrite and the buffer to fill for CmdRead
	// (len == Length in both cases); nil for other commands, and for
	// CmdRead until ReadBuffer when the Export has LazyReadBuffers. On
	// success a read must fill all of it.
	Data []byte

	cookie  uint64
	conn    *conn
	pending atomic.Bool // set while the Device owns the request
	buf     *[]byte     // pooled backing array of Data, nil if none
	errno   nbdwire.Errno
	cost    int64 // in-flight budget held until the reply is written
	hdr     [nbdwire.SimpleReplySize]byte
	done    func(*Request, error) // set by NewRequest instead of conn
}

// NewRequest makes a request that belongs to no connection, for callers
// that drive a Device directly (an engine's own tests, tools): Complete
// calls done with the result instead of queueing an NBD reply. length is
// the request's length; data must be len(length) for reads and writes.
func NewRequest(cmd nbdwire.Command, flags nbdwire.CmdFlags, offset uint64, length uint32, data []byte,
	done func(*Request, error)) *Request {
	r := &Request{Cmd: cmd, Flags: flags, Offset: offset, Length: length, Data: data, done: done}
	r.pending.Store(true)
	return r
}

// Device is an asynchronous block device. Submit must not block for long:
// queue the request and return; report the result with Request.Complete.
type Device interface {
	Submit(r *Request)
}

// BatchDevice is a Device that can take several requests at once. The
// front end gathers the requests a client sent together (those already in
// its read buffer) and submits them in one call, so the device can send
// them on together instead of one by one.
type BatchDevice interface {
	Device
	SubmitBatch(rs []*Request)
}

// Export is one disk offered to clients.
type Export struct {
	Name, Description string
	Size              uint64
	// CurrentSize, if set, is the export's size now, for exports that
	// may grow while served; Size is then only the size at start. A new
	// connection is told the current size, and requests are checked
	// against it.
	CurrentSize func() uint64
	// Block size constraints announced with NBD_INFO_BLOCK_SIZE. Zero means
	// the protocol default (1, 4096, 32 MiB). MaxBlockSize also bounds the
	// length of READ and WRITE requests; it is capped at 32 MiB.
	MinBlockSize, PreferredBlockSize, MaxBlockSize uint32

	ReadOnly, Flush, FUA, Trim, WriteZeroes, Rotational, MultiConn bool

	Device Device
	// LazyReadBuffers: READs reach the Device with Data nil, and the
	// Device takes the buffer with Request.ReadBuffer once it has the
	// data. With many large READs in flight (a sequential copy keeps
	// tens of MiB of them), a buffer taken when the request arrives has
	// left the CPU's caches by the time its data comes; taken as the data
	// comes, it is the one the previous reply just gave back.
	LazyReadBuffers bool
	// Poller, if set, takes in each connection's socket once it serves
	// this export, so that its reader polls before it sleeps (see
	// rawio.Poller).
	Poller *rawio.Poller
}

// size is the export's size now.
func (e *Export) size() uint64 {
	if e.CurrentSize != nil {
		return e.CurrentSize()
	}
	return e.Size
}

// TransmissionFlags returns the flags announced to clients for e.
func (e *Export) TransmissionFlags() uint16 { return uint16(e.transFlags()) }

func (e *Export) transFlags() nbdwire.TransFlags {
	f := nbdwire.TransHasFlags
	set := func(b bool, bit nbdwire.TransFlags) {
		if b {
			f |= bit
		}
	}
	set(e.ReadOnly, nbdwire.TransReadOnly)
	set(e.Flush, nbdwire.TransSendFlush)
	set(e.FUA, nbdwire.TransSendFUA)
	set(e.Rotational, nbdwire.TransRotational)
	set(e.Trim, nbdwire.TransSendTrim)
	set(e.WriteZeroes, nbdwire.TransSendWriteZeroes)
	set(e.MultiConn, nbdwire.TransCanMultiConn)
	return f
}

// blockSizes returns the effective minimum, preferred and maximum sizes.
func (e *Export) blockSizes() (lo, pref, hi uint32) {
	lo, pref, hi = e.MinBlockSize, e.PreferredBlockSize, e.MaxBlockSize
	if lo == 0 {
		lo = defaultMinBlock
	}
	if pref == 0 {
		pref = max(defaultPreferredBlock, lo)
	}
	if hi == 0 || hi > maxPayload {
		hi = maxPayload
	}
	return lo, pref, hi
}

func (e *Export) validate() error {
	if e == nil {
		return errors.New("nbd: nil export")
	}
	if e.Device == nil {
		return fmt.Errorf("nbd: export %q has no device", e.Name)
	}
	lo, pref, hi := e.blockSizes()
	pow2 := func(v uint32) bool { return v&(v-1) == 0 }
	switch {
	case !pow2(lo) || lo > 64<<10:
		return fmt.Errorf("nbd: export %q: minimum block size %d is not a power of two <= 64 KiB", e.Name, lo)
	case !pow2(pref) || pref < lo:
		return fmt.Errorf("nbd: export %q: preferred block size %d is not a power of two >= %d", e.Name, pref, lo)
	case hi < pref:
		return fmt.Errorf("nbd: export %q: maximum block size %d is below the preferred %d", e.Name, hi, pref)
	}
	return nil
}

// Server serves a set of exports to NBD clients.
type Server struct {
	Exports []*Export    // the first is also the default export (empty name)
	Logger  *slog.Logger // nil means slog.Default()
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) validate() error {
	for _, e := range s.Exports {
		if err := e.validate(); err != nil {
			return err
		}
	}
	return nil
}

// Serve accepts connections on l and serves each in its own goroutine. When
// ctx is done it closes l, lets every connection drain (bounded) and returns
// nil. Any other accept failure is returned after the same drain.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if err := s.validate(); err != nil {
		return err
	}
	log := s.logger()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	var wg sync.WaitGroup
	defer wg.Wait()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("nbd: accept: %w", err)
			}
			// EMFILE and friends pass; retry like net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Warn("nbd: accept", "err", err, "retry", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.ServeConn(ctx, c) // logs its own outcome
		}()
	}
}

// ServeConn runs the fixed-newstyle handshake on c and then the transmission
// phase for the export the client chose. It closes c before returning. The
// result is nil when the client left cleanly (NBD_OPT_ABORT or NBD_CMD_DISC).
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	defer c.Close()
	c = rawio.Wrap(c)
	if err := s.validate(); err != nil {
		return err
	}
	log := s.logger().With("remote", remoteAddr(c))
	log.Debug("nbd: connection opened")
	e, br, err := s.handshake(ctx, c, log)
	if err != nil {
		if ctx.Err() != nil {
			log.Debug("nbd: handshake cancelled", "err", err)
		} else {
			log.Warn("nbd: handshake failed", "err", err)
		}
		return err
	}
	if e == nil {
		log.Debug("nbd: client aborted the handshake")
		return nil
	}
	return serveTransmission(ctx, c, br, e, log)
}

// remoteAddr names the peer for logs; unix socket peers are usually unnamed.
func remoteAddr(c net.Conn) string {
	a := c.RemoteAddr()
	if a == nil || a.String() == "" || a.String() == "@" {
		if l := c.LocalAddr(); l != nil {
			return l.Network() + ":" + l.String()
		}
		return "unknown"
	}
	return a.Network() + ":" + a.String()
}
