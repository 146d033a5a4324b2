package nbdclient

import (
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/dstproject/dst/internal/nbdwire"
)

// ErrProtocol is wrapped by errors caused by a server breaking the protocol.
var ErrProtocol = errors.New("nbdclient: protocol error")

// maxOptReply bounds an option reply's data: the longest legal one is an
// export description, a string of at most nbdwire.MaxString bytes.
const maxOptReply = 64 << 10

// handshake runs the fixed-newstyle negotiation and NBD_OPT_GO for export
// on c, and returns the export's size and transmission flags.
func handshake(c net.Conn, export string) (size uint64, flags nbdwire.TransFlags, err error) {
	var b [nbdwire.ServerHelloSize]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, 0, fmt.Errorf("nbdclient: reading server greeting: %w", err)
	}
	hello, err := nbdwire.DecodeServerHello(b[:])
	if err != nil {
		return 0, 0, fmt.Errorf("%w: not a newstyle NBD server: %w", ErrProtocol, err)
	}
	if hello.Flags&nbdwire.HandshakeFixedNewstyle == 0 {
		return 0, 0, fmt.Errorf("%w: server does not speak fixed newstyle", ErrProtocol)
	}
	cflags := nbdwire.ClientFixedNewstyle
	if hello.Flags&nbdwire.HandshakeNoZeroes != 0 {
		cflags |= nbdwire.ClientNoZeroes
	}
	if len(export) > nbdwire.MaxString {
		return 0, 0, fmt.Errorf("nbdclient: export name of %d bytes is longer than %d", len(export), nbdwire.MaxString)
	}
	// Client flags and the GO option go out in one write. No info
	// requests: NBD_INFO_EXPORT comes anyway.
	req := nbdwire.InfoRequest{Name: export}
	msg := cflags.Append(nil)
	msg = nbdwire.OptHeader{Option: nbdwire.OptGo, Length: uint32(req.Len())}.Append(msg)
	msg = req.Append(msg)
	if _, err := c.Write(msg); err != nil {
		return 0, 0, fmt.Errorf("nbdclient: sending NBD_OPT_GO: %w", err)
	}
	return goReplies(c, export)
}

// goReplies reads the replies to NBD_OPT_GO up to its ACK or error.
func goReplies(c net.Conn, export string) (size uint64, flags nbdwire.TransFlags, err error) {
	haveInfo := false
	for {
		typ, payload, err := readOptReply(c)
		if err != nil {
			return 0, 0, err
		}
		switch {
		case typ == nbdwire.RepAck:
			if !haveInfo {
				return 0, 0, fmt.Errorf("%w: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return size, flags, nil
		case typ == nbdwire.RepInfo:
			t, err := nbdwire.DecodeInfoType(payload)
			if err != nil {
				return 0, 0, fmt.Errorf("%w: NBD_REP_INFO: %w", ErrProtocol, err)
			}
			if t != nbdwire.InfoExport {
				continue // name, description, block sizes: not needed
			}
			info, err := nbdwire.DecodeExportInfo(payload)
			if err != nil {
				return 0, 0, fmt.Errorf("%w: %w", ErrProtocol, err)
			}
			size, flags = info.Size, info.Flags
			haveInfo = true
		case typ.IsError():
			return 0, 0, fmt.Errorf("nbdclient: export %q: server refused with %v: %q", export, typ, payload)
		default:
			return 0, 0, fmt.Errorf("%w: unexpected reply %v to NBD_OPT_GO", ErrProtocol, typ)
		}
	}
}

func readOptReply(c net.Conn) (typ nbdwire.ReplyType, payload []byte, err error) {
	var b [nbdwire.OptReplyHeaderSize]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, nil, fmt.Errorf("nbdclient: reading option reply: %w", err)
	}
	h, err := nbdwire.DecodeOptReplyHeader(b[:])
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if h.Option != nbdwire.OptGo {
		return 0, nil, fmt.Errorf("%w: reply to option %v, sent only NBD_OPT_GO", ErrProtocol, h.Option)
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
