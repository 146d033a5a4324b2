package nbdclient

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"

	"github.com/dstproject/dst/internal/nbdwire"
)

// ErrProtocol is wrapped by errors caused by a server breaking the protocol.
var ErrProtocol = errors.New("nbdclient: protocol error")

// maxOptReply bounds an option reply's data: the longest legal one is an
// export description, a string of at most nbdwire.MaxString bytes.
const maxOptReply = 64 << 10

// Export is what a server tells of an export at the handshake.
type Export struct {
	Size  uint64
	Flags nbdwire.TransFlags
	// Block sizes from NBD_INFO_BLOCK_SIZE; all zero if the server sent
	// none. A client must honour them: requests aligned to Min, payloads
	// at most Max.
	MinBlock, PreferredBlock, MaxBlock uint32
	// Description is NBD_INFO_DESCRIPTION, if the server sent one.
	Description string
	// Structured says the server agreed to structured replies.
	Structured bool
}

// handshake runs the fixed-newstyle negotiation, asks for structured
// replies, then opens export with NBD_OPT_GO, asking for its block sizes
// and description.
func handshake(c net.Conn, export string) (Export, error) {
	var b [nbdwire.ServerHelloSize]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return Export{}, fmt.Errorf("nbdclient: reading server greeting: %w", err)
	}
	hello, err := nbdwire.DecodeServerHello(b[:])
	if err != nil {
		return Export{}, fmt.Errorf("%w: not a newstyle NBD server: %w", ErrProtocol, err)
	}
	if hello.Flags&nbdwire.HandshakeFixedNewstyle == 0 {
		return Export{}, fmt.Errorf("%w: server does not speak fixed newstyle", ErrProtocol)
	}
	cflags := nbdwire.ClientFixedNewstyle
	if hello.Flags&nbdwire.HandshakeNoZeroes != 0 {
		cflags |= nbdwire.ClientNoZeroes
	}
	if len(export) > nbdwire.MaxString {
		return Export{}, fmt.Errorf("nbdclient: export name of %d bytes is longer than %d", len(export), nbdwire.MaxString)
	}
	// Client flags, STRUCTURED_REPLY and GO go out in one write; a fixed
	// newstyle server answers options in order.
	req := nbdwire.InfoRequest{Name: export, Infos: []nbdwire.InfoType{nbdwire.InfoBlockSize, nbdwire.InfoDescription}}
	msg := cflags.Append(nil)
	msg = nbdwire.OptHeader{Option: nbdwire.OptStructuredReply}.Append(msg)
	msg = nbdwire.OptHeader{Option: nbdwire.OptGo, Length: uint32(req.Len())}.Append(msg)
	msg = req.Append(msg)
	if _, err := c.Write(msg); err != nil {
		return Export{}, fmt.Errorf("nbdclient: sending options: %w", err)
	}
	typ, payload, err := readOptReply(c, nbdwire.OptStructuredReply)
	if err != nil {
		return Export{}, err
	}
	var info Export
	switch {
	case typ == nbdwire.RepAck:
		if len(payload) != 0 {
			return Export{}, fmt.Errorf("%w: NBD_OPT_STRUCTURED_REPLY acknowledged with %d bytes", ErrProtocol, len(payload))
		}
		info.Structured = true
	case typ.IsError():
		// Not offered: simple replies it is.
	default:
		return Export{}, fmt.Errorf("%w: unexpected reply %v to NBD_OPT_STRUCTURED_REPLY", ErrProtocol, typ)
	}
	return goReplies(c, export, info)
}

// goReplies reads the replies to NBD_OPT_GO up to its ACK or error.
func goReplies(c net.Conn, export string, info Export) (Export, error) {
	haveInfo := false
	for {
		typ, payload, err := readOptReply(c, nbdwire.OptGo)
		if err != nil {
			return Export{}, err
		}
		switch {
		case typ == nbdwire.RepAck:
			if !haveInfo {
				return Export{}, fmt.Errorf("%w: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return info, checkBlockSizes(info)
		case typ == nbdwire.RepInfo:
			t, err := nbdwire.DecodeInfoType(payload)
			if err != nil {
				return Export{}, fmt.Errorf("%w: NBD_REP_INFO: %w", ErrProtocol, err)
			}
			switch t {
			case nbdwire.InfoExport:
				e, err := nbdwire.DecodeExportInfo(payload)
				if err != nil {
					return Export{}, fmt.Errorf("%w: %w", ErrProtocol, err)
				}
				info.Size, info.Flags = e.Size, e.Flags
				haveInfo = true
			case nbdwire.InfoBlockSize:
				bs, err := nbdwire.DecodeBlockSizeInfo(payload)
				if err != nil {
					return Export{}, fmt.Errorf("%w: %w", ErrProtocol, err)
				}
				info.MinBlock, info.PreferredBlock, info.MaxBlock = bs.Min, bs.Preferred, bs.Max
			case nbdwire.InfoDescription:
				info.Description = string(payload[nbdwire.InfoTypeSize:])
			}
		case typ.IsError():
			return Export{}, fmt.Errorf("nbdclient: export %q: server refused with %v: %q", export, typ, payload)
		default:
			return Export{}, fmt.Errorf("%w: unexpected reply %v to NBD_OPT_GO", ErrProtocol, typ)
		}
	}
}

// checkBlockSizes applies proto.md's rules to NBD_INFO_BLOCK_SIZE: powers
// of two, minimum 1..64 KiB, preferred at least the minimum and at least
// 512, maximum a multiple of the minimum (or 0xffffffff) and at least the
// minimum.
func checkBlockSizes(i Export) error {
	if i.MinBlock == 0 && i.PreferredBlock == 0 && i.MaxBlock == 0 {
		return nil
	}
	pow2 := func(v uint32) bool { return v != 0 && v&(v-1) == 0 }
	switch {
	case !pow2(i.MinBlock) || i.MinBlock > 64<<10,
		!pow2(i.PreferredBlock) || i.PreferredBlock < max(512, i.MinBlock),
		i.MaxBlock != math.MaxUint32 && (i.MaxBlock%i.MinBlock != 0 || i.MaxBlock < i.MinBlock):
		return fmt.Errorf("%w: block sizes min %d, preferred %d, max %d break the protocol's rules",
			ErrProtocol, i.MinBlock, i.PreferredBlock, i.MaxBlock)
	}
	return nil
}

// readOptReply reads one option reply, which must answer opt.
func readOptReply(c net.Conn, opt nbdwire.Option) (typ nbdwire.ReplyType, payload []byte, err error) {
	var b [nbdwire.OptReplyHeaderSize]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, nil, fmt.Errorf("nbdclient: reading option reply: %w", err)
	}
	h, err := nbdwire.DecodeOptReplyHeader(b[:])
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if h.Option != opt {
		return 0, nil, fmt.Errorf("%w: reply to option %v while waiting for %v", ErrProtocol, h.Option, opt)
	}
	if h.Length > maxOptReply {
		return 0, nil, fmt.Errorf("%w: option reply of %d bytes", ErrProtocol, h.Length)
	}
	payload = make([]byte, h.Length)
	if _, err := io.ReadFull(c, payload); err != nil {
		return 0, nil, fmt.Errorf("nbdclient: reading option reply: %w", err)
	}
	return h.Type, payload, nil
}
