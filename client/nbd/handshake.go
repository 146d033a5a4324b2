package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
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
	var hello [serverHelloLen]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], hsFixedNewstyle|hsNoZeroes)
	if _, err := h.c.Write(hello[:]); err != nil {
		return nil, fmt.Errorf("nbd: write server hello: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(h.br, cf[:]); err != nil {
		return nil, fmt.Errorf("nbd: read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^clientKnownFlags != 0 {
		return nil, fmt.Errorf("%w: unknown client flags %#x", ErrProtocol, flags)
	}
	h.noZeroes = flags&clientNoZeroes != 0

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
	var hdr [optHeaderLen]byte
	if _, err := io.ReadFull(h.br, hdr[:]); err != nil {
		return nil, false, fmt.Errorf("nbd: read option header: %w", err)
	}
	if m := binary.BigEndian.Uint64(hdr[0:]); m != magicOpt {
		return nil, false, fmt.Errorf("%w: bad option magic %#x", ErrProtocol, m)
	}
	opt := option(binary.BigEndian.Uint32(hdr[8:]))
	n := binary.BigEndian.Uint32(hdr[12:])
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
	case optExportName:
		e, err := h.exportName(string(p))
		return e, err == nil, err
	case optAbort:
		// Clients may hang up without reading the ACK; that is not an error.
		_ = h.reply(opt, repAck, nil)
		return nil, true, nil
	case optList:
		return nil, false, h.list(p)
	case optInfo, optGo:
		return h.infoGo(opt, p)
	default: // STARTTLS, STRUCTURED_REPLY, meta contexts, anything new
		return nil, false, h.reply(opt, repErrUnsup, fmt.Appendf(nil, "option %v is not supported", opt))
	}
}

// tooBig skips an oversized option and refuses it, or gives up on the
// client when even skipping is unreasonable or no error reply is possible.
func (h *handshake) tooBig(opt option, n uint32) error {
	if opt == optExportName || n > maxOptionDiscard {
		return fmt.Errorf("%w: option %v payload of %d bytes", ErrProtocol, opt, n)
	}
	if _, err := io.CopyN(io.Discard, h.br, int64(n)); err != nil {
		return fmt.Errorf("nbd: skip option %v payload: %w", opt, err)
	}
	h.log.Warn("nbd: oversized option refused", "opt", opt, "len", n)
	return h.reply(opt, repErrTooBig, fmt.Appendf(nil, "option payload of %d bytes is too large", n))
}

// reply sends one option reply with a single Write.
func (h *handshake) reply(opt option, typ replyType, data []byte) error {
	b := h.out[:0]
	b = binary.BigEndian.AppendUint64(b, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, uint32(opt))
	b = binary.BigEndian.AppendUint32(b, uint32(typ))
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
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
	b := make([]byte, 10, 10+exportNameZeros)
	binary.BigEndian.PutUint64(b[0:], e.Size)
	binary.BigEndian.PutUint16(b[8:], e.TransmissionFlags())
	if !h.noZeroes {
		b = b[:10+exportNameZeros]
	}
	if _, err := h.c.Write(b); err != nil {
		return nil, fmt.Errorf("nbd: write export name reply: %w", err)
	}
	return e, nil
}

func (h *handshake) list(p []byte) error {
	if len(p) != 0 {
		return h.reply(optList, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
	}
	for _, e := range h.s.Exports {
		// Name length, name, then a description libnbd shows to users.
		d := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
		d = append(d, e.Name...)
		d = append(d, e.Description...)
		if err := h.reply(optList, repServer, d); err != nil {
			return err
		}
	}
	return h.reply(optList, repAck, nil)
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO, whose payload is
// name length (4), name, number of info requests (2), info ids (2 each).
func (h *handshake) infoGo(opt option, p []byte) (*Export, bool, error) {
	if len(p) < 6 {
		return nil, false, h.reply(opt, repErrInvalid, []byte("payload shorter than 6 bytes"))
	}
	nameLen := binary.BigEndian.Uint32(p)
	if uint64(nameLen) > uint64(len(p)-6) {
		return nil, false, h.reply(opt, repErrInvalid, []byte("name length exceeds payload"))
	}
	name := string(p[4 : 4+nameLen])
	rest := p[4+nameLen:]
	nInfo := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+2*nInfo {
		return nil, false, h.reply(opt, repErrInvalid, []byte("info request count does not match payload"))
	}
	e := h.lookup(name)
	if e == nil {
		h.log.Info("nbd: unknown export requested", "opt", opt, "name", name)
		return nil, false, h.reply(opt, repErrUnknown, fmt.Appendf(nil, "export %q not found", name))
	}
	var wantName, wantDesc bool
	for i := range nInfo {
		switch infoType(binary.BigEndian.Uint16(rest[2+2*i:])) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	if err := h.sendInfo(opt, e, wantName, wantDesc); err != nil {
		return nil, false, err
	}
	if err := h.reply(opt, repAck, nil); err != nil {
		return nil, false, err
	}
	return e, opt == optGo, nil
}

// sendInfo sends NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE always (qemu relies
// on the latter even without asking), NAME and DESCRIPTION on request.
func (h *handshake) sendInfo(opt option, e *Export, wantName, wantDesc bool) error {
	d := binary.BigEndian.AppendUint16(nil, uint16(infoExport))
	d = binary.BigEndian.AppendUint64(d, e.Size)
	d = binary.BigEndian.AppendUint16(d, e.TransmissionFlags())
	if err := h.reply(opt, repInfo, d); err != nil {
		return err
	}
	lo, pref, hi := e.blockSizes()
	d = binary.BigEndian.AppendUint16(d[:0], uint16(infoBlockSize))
	d = binary.BigEndian.AppendUint32(d, lo)
	d = binary.BigEndian.AppendUint32(d, pref)
	d = binary.BigEndian.AppendUint32(d, hi)
	if err := h.reply(opt, repInfo, d); err != nil {
		return err
	}
	if wantName {
		d = binary.BigEndian.AppendUint16(d[:0], uint16(infoName))
		if err := h.reply(opt, repInfo, append(d, e.Name...)); err != nil {
			return err
		}
	}
	if wantDesc {
		d = binary.BigEndian.AppendUint16(d[:0], uint16(infoDescription))
		if err := h.reply(opt, repInfo, append(d, e.Description...)); err != nil {
			return err
		}
	}
	return nil
}
