package wire

import (
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"
)

// Cmd is a request's command.
type Cmd uint8

const (
	CmdRead        Cmd = 1
	CmdWrite       Cmd = 2
	CmdFlush       Cmd = 3
	CmdTrim        Cmd = 4
	CmdWriteZeroes Cmd = 5
	CmdDisconnect  Cmd = 6
)

var cmdNames = map[Cmd]string{
	CmdRead:        "READ",
	CmdWrite:       "WRITE",
	CmdFlush:       "FLUSH",
	CmdTrim:        "TRIM",
	CmdWriteZeroes: "WRITE_ZEROES",
	CmdDisconnect:  "DISCONNECT",
}

func (c Cmd) String() string {
	if s, ok := cmdNames[c]; ok {
		return s
	}
	return fmt.Sprintf("CMD_%d", uint8(c))
}

// Valid reports whether c is a command this version knows.
func (c Cmd) Valid() bool { _, ok := cmdNames[c]; return ok }

// ReqFlags are a request's flags.
type ReqFlags uint8

const (
	// FlagFUA asks for the write to be durable before its reply.
	FlagFUA ReqFlags = 1 << 0
	// FlagNoHole asks WRITE_ZEROES to allocate rather than punch a hole.
	FlagNoHole ReqFlags = 1 << 1

	knownReqFlags = FlagFUA | FlagNoHole
)

func (f ReqFlags) String() string {
	s := ""
	if f&FlagFUA != 0 {
		s += "|FUA"
	}
	if f&FlagNoHole != 0 {
		s += "|NO_HOLE"
	}
	if rest := f &^ knownReqFlags; rest != 0 {
		s += fmt.Sprintf("|0x%02x", uint8(rest))
	}
	if s == "" {
		return "0"
	}
	return s[1:]
}

// allowedFlags are the flags cmd takes: FUA on commands that change data,
// NO_HOLE on WRITE_ZEROES.
func allowedFlags(cmd Cmd) ReqFlags {
	switch cmd {
	case CmdWrite, CmdTrim:
		return FlagFUA
	case CmdWriteZeroes:
		return FlagFUA | FlagNoHole
	}
	return 0
}

// Request header layout (big endian):
//
//	0  cmd      u8
//	1  flags    u8
//	2  reserved u16 (zero)
//	4  length   u32  bytes to read, write, trim or zero
//	8  id       u64  transaction id, chosen by the client
//	16 offset   u64
//	24 checksum u64  xxhash64 of the payload (WRITE), else zero
//	32 expires  u64  server clock (ns) after which the request must not
//	                 start; zero for none
//	40 payload  (WRITE only: length bytes)
const (
	reqCmd      = 0
	reqFlags    = 1
	reqReserved = 2
	reqLength   = 4
	reqID       = 8
	reqOffset   = 16
	reqChecksum = 24
	reqExpires  = 32
)

// Request is a data-stream request header.
type Request struct {
	Cmd      Cmd
	Flags    ReqFlags
	Length   uint32
	ID       uint64
	Offset   uint64
	Checksum uint64
	// Expires is the server clock reading (SERVER_INFO, PONG) at which the
	// client gives up on the request: the server does not start it at or
	// after that time. Zero means never.
	Expires uint64
}

// PayloadLen is the number of payload bytes that follow the header.
func (r *Request) PayloadLen() int {
	if r.Cmd == CmdWrite {
		return int(r.Length)
	}
	return 0
}

// Encode writes r into b[:RequestSize].
func (r *Request) Encode(b []byte) {
	_ = b[RequestSize-1]
	b[reqCmd] = byte(r.Cmd)
	b[reqFlags] = byte(r.Flags)
	binary.BigEndian.PutUint16(b[reqReserved:], 0)
	binary.BigEndian.PutUint32(b[reqLength:], r.Length)
	binary.BigEndian.PutUint64(b[reqID:], r.ID)
	binary.BigEndian.PutUint64(b[reqOffset:], r.Offset)
	binary.BigEndian.PutUint64(b[reqChecksum:], r.Checksum)
	binary.BigEndian.PutUint64(b[reqExpires:], r.Expires)
}

// DecodeRequest parses a request header. It checks the layout rules that
// need no context: a known command, known flags, zero reserved bits, a
// payload within MaxPayload, no checksum on requests without payload, and an
// offset range that does not overflow. Range checks against an export's size
// are the server's.
func DecodeRequest(b []byte) (Request, error) {
	if len(b) < RequestSize {
		return Request{}, short("request", RequestSize, len(b))
	}
	r := Request{
		Cmd:      Cmd(b[reqCmd]),
		Flags:    ReqFlags(b[reqFlags]),
		Length:   binary.BigEndian.Uint32(b[reqLength:]),
		ID:       binary.BigEndian.Uint64(b[reqID:]),
		Offset:   binary.BigEndian.Uint64(b[reqOffset:]),
		Checksum: binary.BigEndian.Uint64(b[reqChecksum:]),
		Expires:  binary.BigEndian.Uint64(b[reqExpires:]),
	}
	switch {
	case !r.Cmd.Valid():
		return r, malformed("unknown command %v", r.Cmd)
	case r.Flags&^knownReqFlags != 0:
		return r, malformed("%v request with unknown flags %v", r.Cmd, r.Flags)
	case r.Flags&^allowedFlags(r.Cmd) != 0:
		return r, malformed("%v request with flags %v, which it does not take", r.Cmd, r.Flags)
	case binary.BigEndian.Uint16(b[reqReserved:]) != 0:
		return r, malformed("%v request with nonzero reserved field", r.Cmd)
	case r.Cmd == CmdWrite && r.Length > MaxPayload:
		return r, malformed("WRITE of %d bytes exceeds the %d byte maximum", r.Length, MaxPayload)
	case r.PayloadLen() == 0 && r.Checksum != 0:
		return r, malformed("%v request carries a checksum but no payload", r.Cmd)
	case r.Offset+uint64(r.Length) < r.Offset:
		return r, malformed("%v range %d+%d overflows", r.Cmd, r.Offset, r.Length)
	}
	return r, nil
}

// Status is a reply's outcome: zero for success, else a Linux errno value
// (the same numbers NBD uses), or one of dst's own codes above 0xff.
type Status uint16

const (
	StatusOK        Status = 0
	StatusEPERM     Status = 1
	StatusEIO       Status = 5
	StatusENOMEM    Status = 12
	StatusEBUSY     Status = 16 // another attachment holds the export's writer lease
	StatusEINVAL    Status = 22
	StatusENOSPC    Status = 28
	StatusEOVERFLOW Status = 75
	StatusENOTSUP   Status = 95
	StatusESHUTDOWN Status = 108
	StatusETIMEDOUT Status = 110 // the request expired before it could start
	StatusESTALE    Status = 116 // a newer session of the attachment fenced this one

	// StatusBadChecksum says a request's payload failed its checksum on
	// arrival and was not applied; the client may send it again.
	StatusBadChecksum Status = 0x100
)

var statusNames = map[Status]string{
	StatusOK:          "OK",
	StatusEPERM:       "EPERM",
	StatusEIO:         "EIO",
	StatusENOMEM:      "ENOMEM",
	StatusEBUSY:       "EBUSY",
	StatusEINVAL:      "EINVAL",
	StatusENOSPC:      "ENOSPC",
	StatusEOVERFLOW:   "EOVERFLOW",
	StatusENOTSUP:     "ENOTSUP",
	StatusESHUTDOWN:   "ESHUTDOWN",
	StatusETIMEDOUT:   "ETIMEDOUT",
	StatusESTALE:      "ESTALE",
	StatusBadChecksum: "BAD_CHECKSUM",
}

func (s Status) String() string {
	if n, ok := statusNames[s]; ok {
		return n
	}
	return fmt.Sprintf("STATUS_%d", uint16(s))
}

// Reply header layout (big endian):
//
//	0  cmd      u8   the request's command, echoed
//	1  reserved u8   (zero)
//	2  status   u16
//	4  length   u32  payload bytes that follow (successful READ only)
//	8  id       u64  the request's transaction id
//	16 checksum u64  xxhash64 of the payload, else zero
//	24 payload
const (
	repCmd      = 0
	repReserved = 1
	repStatus   = 2
	repLength   = 4
	repID       = 8
	repChecksum = 16
)

// Reply is a data-stream reply header.
type Reply struct {
	Cmd      Cmd
	Status   Status
	Length   uint32
	ID       uint64
	Checksum uint64
}

// Encode writes r into b[:ReplySize].
func (r *Reply) Encode(b []byte) {
	_ = b[ReplySize-1]
	b[repCmd] = byte(r.Cmd)
	b[repReserved] = 0
	binary.BigEndian.PutUint16(b[repStatus:], uint16(r.Status))
	binary.BigEndian.PutUint32(b[repLength:], r.Length)
	binary.BigEndian.PutUint64(b[repID:], r.ID)
	binary.BigEndian.PutUint64(b[repChecksum:], r.Checksum)
}

// DecodeReply parses a reply header. Only a successful READ carries a
// payload; anything else with a length is malformed.
func DecodeReply(b []byte) (Reply, error) {
	if len(b) < ReplySize {
		return Reply{}, short("reply", ReplySize, len(b))
	}
	r := Reply{
		Cmd:      Cmd(b[repCmd]),
		Status:   Status(binary.BigEndian.Uint16(b[repStatus:])),
		Length:   binary.BigEndian.Uint32(b[repLength:]),
		ID:       binary.BigEndian.Uint64(b[repID:]),
		Checksum: binary.BigEndian.Uint64(b[repChecksum:]),
	}
	switch {
	case !r.Cmd.Valid():
		return r, malformed("reply to unknown command %v", r.Cmd)
	case b[repReserved] != 0:
		return r, malformed("%v reply with nonzero reserved field", r.Cmd)
	case r.Length > MaxPayload:
		return r, malformed("%v reply of %d bytes exceeds the %d byte maximum", r.Cmd, r.Length, MaxPayload)
	case r.Length != 0 && (r.Cmd != CmdRead || r.Status != StatusOK):
		return r, malformed("%v reply with status %v carries %d payload bytes", r.Cmd, r.Status, r.Length)
	case r.Length == 0 && r.Checksum != 0:
		return r, malformed("%v reply carries a checksum but no payload", r.Cmd)
	}
	return r, nil
}

// Checksum is the payload checksum carried in requests and replies:
// xxhash64 of the payload, and zero for an empty one.
func Checksum(payload []byte) uint64 {
	if len(payload) == 0 {
		return 0
	}
	return xxhash.Sum64(payload)
}
