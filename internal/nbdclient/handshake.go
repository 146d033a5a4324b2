package nbdclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// ErrProtocol is wrapped by errors caused by a server breaking the protocol.
var ErrProtocol = errors.New("nbdclient: protocol error")

// handshake runs the fixed-newstyle negotiation and NBD_OPT_GO for export
// on c, and returns the export's size and transmission flags.
func handshake(c net.Conn, export string) (size uint64, flags uint16, err error) {
	var hello [serverHelloLen]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return 0, 0, fmt.Errorf("nbdclient: reading server greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != magicNBD || binary.BigEndian.Uint64(hello[8:]) != magicOpt {
		return 0, 0, fmt.Errorf("%w: not a newstyle NBD server (greeting % x)", ErrProtocol, hello[:16])
	}
	hs := binary.BigEndian.Uint16(hello[16:])
	if hs&hsFixedNewstyle == 0 {
		return 0, 0, fmt.Errorf("%w: server does not speak fixed newstyle", ErrProtocol)
	}
	cflags := uint32(clientFixedNewstyle)
	if hs&hsNoZeroes != 0 {
		cflags |= clientNoZeroes
	}
	if len(export) > 4096 {
		return 0, 0, fmt.Errorf("nbdclient: export name of %d bytes is longer than 4096", len(export))
	}
	// Client flags and the GO option go out in one write.
	msg := binary.BigEndian.AppendUint32(nil, cflags)
	msg = binary.BigEndian.AppendUint64(msg, magicOpt)
	msg = binary.BigEndian.AppendUint32(msg, optGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(export)+2))
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(export)))
	msg = append(msg, export...)
	msg = binary.BigEndian.AppendUint16(msg, 0) // no info requests: EXPORT comes anyway
	if _, err := c.Write(msg); err != nil {
		return 0, 0, fmt.Errorf("nbdclient: sending NBD_OPT_GO: %w", err)
	}
	return goReplies(c, export)
}

// goReplies reads the replies to NBD_OPT_GO up to its ACK or error.
func goReplies(c net.Conn, export string) (size uint64, flags uint16, err error) {
	haveInfo := false
	for {
		typ, payload, err := readOptReply(c)
		if err != nil {
			return 0, 0, err
		}
		switch {
		case typ == repAck:
			if !haveInfo {
				return 0, 0, fmt.Errorf("%w: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return size, flags, nil
		case typ == repInfo:
			if len(payload) < 2 {
				return 0, 0, fmt.Errorf("%w: NBD_REP_INFO of %d bytes", ErrProtocol, len(payload))
			}
			if binary.BigEndian.Uint16(payload) != infoExport {
				continue // name, description, block sizes: not needed
			}
			if len(payload) != infoExportLen {
				return 0, 0, fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes", ErrProtocol, len(payload))
			}
			size, flags = binary.BigEndian.Uint64(payload[2:]), binary.BigEndian.Uint16(payload[10:])
			haveInfo = true
		case typ&repErrBit != 0:
			return 0, 0, fmt.Errorf("nbdclient: export %q: server refused with %s: %q", export, repName(typ), payload)
		default:
			return 0, 0, fmt.Errorf("%w: unexpected reply %s to NBD_OPT_GO", ErrProtocol, repName(typ))
		}
	}
}

func readOptReply(c net.Conn) (typ uint32, payload []byte, err error) {
	var h [optReplyLen]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return 0, nil, fmt.Errorf("nbdclient: reading option reply: %w", err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
		return 0, nil, fmt.Errorf("%w: option reply magic %#x", ErrProtocol, m)
	}
	if o := binary.BigEndian.Uint32(h[8:]); o != optGo {
		return 0, nil, fmt.Errorf("%w: reply to option %d, sent only NBD_OPT_GO", ErrProtocol, o)
	}
	typ = binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxOptReply {
		return 0, nil, fmt.Errorf("%w: option reply of %d bytes", ErrProtocol, n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(c, payload); err != nil {
		return 0, nil, fmt.Errorf("nbdclient: reading option reply: %w", err)
	}
	return typ, payload, nil
}
