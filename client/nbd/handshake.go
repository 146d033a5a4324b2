package nbd

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/dstproject/dst/internal/nbdwire"
)

const (
	// maxOptionLen caps an option's payload we are willing to buffer. The
	// largest legitimate one is NBD_OPT_INFO/GO: a 4 KiB name plus a few
	// info ids.
	maxOptionLen = 64 << 10
	// maxOptionDiscard is how much of an oversized option we skip to answer
	// NBD_REP_ERR_TOO_BIG; beyond that the client is not worth reading.
	maxOptionDiscard = 1 << 20
	// handshakeTimeout bounds the whole option haggling, so idle or
	// stalled clients do not pin a goroutine forever.
	handshakeTimeout = time.Minute
)

// handshake carries the state of one fixed-newstyle negotiation.
type handshake struct {
	s        *Server
	c        net.Conn
	br       *bufio.Reader
	log      *slog.Logger
	noZeroes bool
	payload  []byte
	out      []byte
}

// handshake negotiates on c and returns the export the client chose, with the
// reader that must be used from now on (it may hold buffered bytes), or a nil
// export if the client sent NBD_OPT_ABORT.
func (s *Server) handshake(ctx context.Context, c net.Conn, log *slog.Logger) (*Export, *bufio.Reader, error) {
	if err := c.SetDeadline(time.Now().Add(handshakeTimeout)); err != nil {
		return nil, nil, fmt.Errorf("nbd: set handshake deadline: %w", err)
	}
	// Cancelling ctx must unblock a read in progress; a past deadline does.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	h := &handshake{s: s, c: c, br: bufio.NewReaderSize(c, 64<<10), log: log}
	e, err := h.run()
	if !stop() {
		return nil, nil, fmt.Errorf("nbd: handshake: %w", context.Cause(ctx))
	}
	if err != nil {
		return nil, nil, err
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return nil, nil, fmt.Errorf("nbd: clear handshake deadline: %w", err)
	}
	return e, h.br, nil
}

func (h *handshake) run() (*Export, error) {
	hello := nbdwire.ServerHello{Flags: nbdwire.HandshakeFixedNewstyle | nbdwire.HandshakeNoZeroes}
	if _, err := h.c.Write(hello.Append(nil)); err != nil {
		return nil, fmt.Errorf("nbd: write server hello: %w", err)
	}
	var cf [nbdwire.ClientFlagsSize]byte
	if _, err := io.ReadFull(h.br, cf[:]); err != nil {
		return nil, fmt.Errorf("nbd: read client flags: %w", err)
	}
	flags, err := nbdwire.DecodeClientFlags(cf[:])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if flags&^nbdwire.KnownClientFlags != 0 {
		return nil, fmt.Errorf("%w: unknown client flags %#x", ErrProtocol, uint32(flags))
	}
	h.noZeroes = flags&nbdwire.ClientNoZeroes != 0

	for {
		e, done, err := h.option()
		if err != nil || done {
			return e, err
		}
	}
}

// option reads and answers one option. done reports the end of haggling:
// with an export for transmission, or with a nil export after an abort.
func (h *handshake) option() (e *Export, done bool, err error) {
	var hdr [nbdwire.OptHeaderSize]byte
	if _, err := io.ReadFull(h.br, hdr[:]); err != nil {
		return nil, false, fmt.Errorf("nbd: read option header: %w", err)
	}
	oh, err := nbdwire.DecodeOptHeader(hdr[:])
	if err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	opt, n := oh.Option, oh.Length
	if n > maxOptionLen {
		return nil, false, h.tooBig(opt, n)
	}
	if cap(h.payload) < int(n) {
		h.payload = make([]byte, n)
	}
	p := h.payload[:n]
	if _, err := io.ReadFull(h.br, p); err != nil {
		return nil, false, fmt.Errorf("nbd: read option %v payload (%d bytes): %w", opt, n, err)
	}
	h.log.Debug("nbd: option", "opt", opt, "len", n)

	switch opt {
	case nbdwire.OptExportName:
		e, err := h.exportName(string(p))
		return e, err == nil, err
	case nbdwire.OptAbort:
		// Clients may hang up without reading the ACK; that is not an error.
		_ = h.reply(opt, nbdwire.RepAck, nil)
		return nil, true, nil
	case nbdwire.OptList:
		return nil, false, h.list(p)
	case nbdwire.OptInfo, nbdwire.OptGo:
		return h.infoGo(opt, p)
	default: // STARTTLS, STRUCTURED_REPLY, meta contexts, anything new
		return nil, false, h.reply(opt, nbdwire.RepErrUnsup, fmt.Appendf(nil, "option %v is not supported", opt))
	}
}

// tooBig skips an oversized option and refuses it, or gives up on the
// client when even skipping is unreasonable or no error reply is possible.
func (h *handshake) tooBig(opt nbdwire.Option, n uint32) error {
	if opt == nbdwire.OptExportName || n > maxOptionDiscard {
		return fmt.Errorf("%w: option %v payload of %d bytes", ErrProtocol, opt, n)
	}
	if _, err := io.CopyN(io.Discard, h.br, int64(n)); err != nil {
		return fmt.Errorf("nbd: skip option %v payload: %w", opt, err)
	}
	h.log.Warn("nbd: oversized option refused", "opt", opt, "len", n)
	return h.reply(opt, nbdwire.RepErrTooBig, fmt.Appendf(nil, "option payload of %d bytes is too large", n))
}

// reply sends one option reply with a single Write.
func (h *handshake) reply(opt nbdwire.Option, typ nbdwire.ReplyType, data []byte) error {
	b := nbdwire.OptReplyHeader{Option: opt, Type: typ, Length: uint32(len(data))}.Append(h.out[:0])
	b = append(b, data...)
	h.out = b
	if _, err := h.c.Write(b); err != nil {
		return fmt.Errorf("nbd: write %v reply to %v: %w", typ, opt, err)
	}
	return nil
}

// lookup finds an export by name; the empty name selects the first one.
func (h *handshake) lookup(name string) *Export {
	for i, e := range h.s.Exports {
		if e.Name == name || (name == "" && i == 0) {
			return e
		}
	}
	return nil
}

func (h *handshake) exportName(name string) (*Export, error) {
	e := h.lookup(name)
	if e == nil {
		// NBD_OPT_EXPORT_NAME has no error reply; hanging up is the answer.
		return nil, fmt.Errorf("nbd: client asked for unknown export %q", name)
	}
	r := nbdwire.ExportNameReply{Size: e.size(), Flags: e.transFlags()}
	if _, err := h.c.Write(r.Append(nil, !h.noZeroes)); err != nil {
		return nil, fmt.Errorf("nbd: write export name reply: %w", err)
	}
	return e, nil
}

func (h *handshake) list(p []byte) error {
	if len(p) != 0 {
		return h.reply(nbdwire.OptList, nbdwire.RepErrInvalid, []byte("NBD_OPT_LIST takes no data"))
	}
	var d []byte
	for _, e := range h.s.Exports {
		// libnbd shows the description to users.
		d = nbdwire.ExportEntry{Name: e.Name, Description: e.Description}.Append(d[:0])
		if err := h.reply(nbdwire.OptList, nbdwire.RepServer, d); err != nil {
			return err
		}
	}
	return h.reply(nbdwire.OptList, nbdwire.RepAck, nil)
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO.
func (h *handshake) infoGo(opt nbdwire.Option, p []byte) (*Export, bool, error) {
	req, err := nbdwire.DecodeInfoRequest(p)
	if err != nil {
		return nil, false, h.reply(opt, nbdwire.RepErrInvalid, []byte(err.Error()))
	}
	e := h.lookup(req.Name)
	if e == nil {
		h.log.Info("nbd: unknown export requested", "opt", opt, "name", req.Name)
		return nil, false, h.reply(opt, nbdwire.RepErrUnknown, fmt.Appendf(nil, "export %q not found", req.Name))
	}
	var wantName, wantDesc bool
	for _, t := range req.Infos {
		switch t {
		case nbdwire.InfoName:
			wantName = true
		case nbdwire.InfoDescription:
			wantDesc = true
		}
	}
	if err := h.sendInfo(opt, e, wantName, wantDesc); err != nil {
		return nil, false, err
	}
	if err := h.reply(opt, nbdwire.RepAck, nil); err != nil {
		return nil, false, err
	}
	return e, opt == nbdwire.OptGo, nil
}

// sendInfo sends NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE always (qemu relies
// on the latter even without asking), NAME and DESCRIPTION on request.
func (h *handshake) sendInfo(opt nbdwire.Option, e *Export, wantName, wantDesc bool) error {
	d := nbdwire.ExportInfo{Size: e.size(), Flags: e.transFlags()}.Append(nil)
	if err := h.reply(opt, nbdwire.RepInfo, d); err != nil {
		return err
	}
	lo, pref, hi := e.blockSizes()
	d = nbdwire.BlockSizeInfo{Min: lo, Preferred: pref, Max: hi}.Append(d[:0])
	if err := h.reply(opt, nbdwire.RepInfo, d); err != nil {
		return err
	}
	if wantName {
		if err := h.reply(opt, nbdwire.RepInfo, nbdwire.AppendInfoText(d[:0], nbdwire.InfoName, e.Name)); err != nil {
			return err
		}
	}
	if wantDesc {
		if err := h.reply(opt, nbdwire.RepInfo, nbdwire.AppendInfoText(d[:0], nbdwire.InfoDescription, e.Description)); err != nil {
			return err
		}
	}
	return nil
}
