package nbdwire

import (
	"encoding/binary"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Magic numbers of the transmission phase.
const (
	MagicRequest     = protocol.TRANSMISSION_MAGIC_REQUEST
	MagicSimpleReply = protocol.TRANSMISSION_MAGIC_REPLY
	// MagicStructuredReply starts a structured reply chunk, which a server
	// may send only once NBD_OPT_STRUCTURED_REPLY was agreed.
	MagicStructuredReply uint32 = 0x668e33ef
)

// Sizes of the transmission phase's fixed forms, in bytes.
const (
	RequestSize     = 4 + 2 + 2 + 8 + 8 + 4 // magic, flags, type, cookie, offset, length
	SimpleReplySize = 4 + 4 + 8             // magic, error, cookie
)

// Offsets of the fields of the fixed forms.
const (
	reqMagic  = 0
	reqFlags  = 4
	reqType   = 6
	reqCookie = 8
	reqOffset = 16
	reqLength = 24

	replyMagic  = 0
	replyErrno  = 4
	replyCookie = 8
)

// Command is the type field of a request.
type Command uint16

const (
	CmdRead                = Command(protocol.TRANSMISSION_TYPE_REQUEST_READ)
	CmdWrite               = Command(protocol.TRANSMISSION_TYPE_REQUEST_WRITE)
	CmdDisc                = Command(protocol.TRANSMISSION_TYPE_REQUEST_DISC)
	CmdFlush       Command = 3
	CmdTrim        Command = 4
	CmdCache       Command = 5
	CmdWriteZeroes Command = 6
	CmdBlockStatus Command = 7
	CmdResize      Command = 8
)

var commandNames = map[Command]string{
	CmdRead:        "READ",
	CmdWrite:       "WRITE",
	CmdDisc:        "DISC",
	CmdFlush:       "FLUSH",
	CmdTrim:        "TRIM",
	CmdCache:       "CACHE",
	CmdWriteZeroes: "WRITE_ZEROES",
	CmdBlockStatus: "BLOCK_STATUS",
	CmdResize:      "RESIZE",
}

func (c Command) String() string { return enumString(c, commandNames, "CMD_", uint64(c)) }

// CmdFlags is the flags field of a request.
type CmdFlags uint16

const (
	FlagFUA      CmdFlags = 1 << 0
	FlagNoHole   CmdFlags = 1 << 1 // WRITE_ZEROES only
	FlagDF       CmdFlags = 1 << 2 // READ with structured replies only
	FlagReqOne   CmdFlags = 1 << 3 // BLOCK_STATUS only
	FlagFastZero CmdFlags = 1 << 4 // WRITE_ZEROES, once the server sent SEND_FAST_ZERO
)

var cmdFlagNames = []string{"FUA", "NO_HOLE", "DF", "REQ_ONE", "FAST_ZERO"}

func (f CmdFlags) String() string { return flagString(uint64(f), cmdFlagNames) }

// TransFlags are the transmission flags a server announces for an export.
type TransFlags uint16

const (
	TransHasFlags        = TransFlags(protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS)
	TransReadOnly        = TransFlags(1 << 1)
	TransSendFlush       = TransFlags(1 << 2)
	TransSendFUA         = TransFlags(1 << 3)
	TransRotational      = TransFlags(1 << 4)
	TransSendTrim        = TransFlags(1 << 5)
	TransSendWriteZeroes = TransFlags(1 << 6)
	TransCanMultiConn    = TransFlags(protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN)
)

// transFlagNames names every bit proto.md defines, including those of
// features dst does not implement (7 SEND_DF, 9 SEND_RESIZE, ...), so a
// peer's flags print in full.
var transFlagNames = []string{
	"HAS_FLAGS", "READ_ONLY", "SEND_FLUSH", "SEND_FUA", "ROTATIONAL", "SEND_TRIM",
	"SEND_WRITE_ZEROES", "SEND_DF", "CAN_MULTI_CONN", "SEND_RESIZE", "SEND_CACHE",
	"SEND_FAST_ZERO", "BLOCK_STATUS_PAYLOAD",
}

func (f TransFlags) String() string { return flagString(uint64(f), transFlagNames) }

// Errno is the error field of a simple reply. The values are fixed by the
// protocol, not by the host's errno numbering (they happen to match
// Linux). An Errno is an error, so a server's device may return one.
type Errno uint32

const (
	EPERM           = Errno(protocol.TRANSMISSION_ERROR_EPERM)
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL          = Errno(protocol.TRANSMISSION_ERROR_EINVAL)
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

var errnoNames = map[Errno]string{
	0:         "OK",
	EPERM:     "EPERM",
	EIO:       "EIO",
	ENOMEM:    "ENOMEM",
	EINVAL:    "EINVAL",
	ENOSPC:    "ENOSPC",
	EOVERFLOW: "EOVERFLOW",
	ENOTSUP:   "ENOTSUP",
	ESHUTDOWN: "ESHUTDOWN",
}

func (e Errno) String() string { return enumString(e, errnoNames, "ERRNO_", uint64(e)) }

// Error names e as an NBD error: "nbd: EIO".
func (e Errno) Error() string { return "nbd: " + e.String() }

// Valid reports whether e is an error the protocol defines, and so may be
// sent. Zero is success, not an error.
func (e Errno) Valid() bool {
	_, ok := errnoNames[e]
	return ok && e != 0
}

// Request is a request header; a WRITE's Length bytes of payload follow it.
type Request struct {
	Flags  CmdFlags
	Cmd    Command
	Cookie uint64
	Offset uint64
	Length uint32
}

// Append appends the RequestSize-byte encoding of r to b.
func (r Request) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, MagicRequest)
	b = binary.BigEndian.AppendUint16(b, uint16(r.Flags))
	b = binary.BigEndian.AppendUint16(b, uint16(r.Cmd))
	b = binary.BigEndian.AppendUint64(b, r.Cookie)
	b = binary.BigEndian.AppendUint64(b, r.Offset)
	return binary.BigEndian.AppendUint32(b, r.Length)
}

// DecodeRequest parses the request header at the start of b. It neither
// allocates nor keeps b. Only the magic number is checked: an unknown
// command or flag, or a range past the export's end, is an error of one
// request, which the server answers with an errno.
func DecodeRequest(b []byte) (Request, error) {
	if len(b) < RequestSize {
		return Request{}, short("request header", RequestSize, len(b))
	}
	if m := binary.BigEndian.Uint32(b[reqMagic:]); m != MagicRequest {
		return Request{}, malformed("request magic %#x", m)
	}
	return Request{
		Flags:  CmdFlags(binary.BigEndian.Uint16(b[reqFlags:])),
		Cmd:    Command(binary.BigEndian.Uint16(b[reqType:])),
		Cookie: binary.BigEndian.Uint64(b[reqCookie:]),
		Offset: binary.BigEndian.Uint64(b[reqOffset:]),
		Length: binary.BigEndian.Uint32(b[reqLength:]),
	}, nil
}

// SimpleReply is a simple reply header; a successful READ's data follows
// it.
type SimpleReply struct {
	Errno  Errno
	Cookie uint64
}

// Append appends the SimpleReplySize-byte encoding of r to b.
func (r SimpleReply) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, MagicSimpleReply)
	b = binary.BigEndian.AppendUint32(b, uint32(r.Errno))
	return binary.BigEndian.AppendUint64(b, r.Cookie)
}

// DecodeSimpleReply parses the simple reply header at the start of b. It
// neither allocates nor keeps b. Errno is not checked: a client takes any
// non-zero value as an error.
func DecodeSimpleReply(b []byte) (SimpleReply, error) {
	if len(b) < SimpleReplySize {
		return SimpleReply{}, short("simple reply", SimpleReplySize, len(b))
	}
	switch m := binary.BigEndian.Uint32(b[replyMagic:]); m {
	case MagicSimpleReply:
	case MagicStructuredReply:
		return SimpleReply{}, malformed("structured reply where a simple reply was expected")
	default:
		return SimpleReply{}, malformed("reply magic %#x", m)
	}
	return SimpleReply{
		Errno:  Errno(binary.BigEndian.Uint32(b[replyErrno:])),
		Cookie: binary.BigEndian.Uint64(b[replyCookie:]),
	}, nil
}

// Structured replies (NBD_OPT_STRUCTURED_REPLY). A reply is one or more
// chunks, each a ChunkSize-byte header and Length bytes of payload; the
// last has FlagDone.
const (
	ChunkSize = 4 + 2 + 2 + 8 + 4 // magic, flags, type, cookie, length

	chunkMagic  = 0
	chunkFlags  = 4
	chunkType   = 6
	chunkCookie = 8
	chunkLength = 16
)

// ChunkFlags is the flags field of a structured reply chunk.
type ChunkFlags uint16

// ChunkDone marks a reply's last chunk.
const ChunkDone ChunkFlags = 1 << 0

// ChunkType is the type field of a structured reply chunk. Error types
// have bit 15 set.
type ChunkType uint16

const (
	ChunkNone        ChunkType = 0
	ChunkOffsetData  ChunkType = 1
	ChunkOffsetHole  ChunkType = 2
	ChunkBlockStatus ChunkType = 5
	ChunkError       ChunkType = 1<<15 | 1
	ChunkErrorOffset ChunkType = 1<<15 | 2
)

var chunkTypeNames = map[ChunkType]string{
	ChunkNone:        "NONE",
	ChunkOffsetData:  "OFFSET_DATA",
	ChunkOffsetHole:  "OFFSET_HOLE",
	ChunkBlockStatus: "BLOCK_STATUS",
	ChunkError:       "ERROR",
	ChunkErrorOffset: "ERROR_OFFSET",
}

func (t ChunkType) String() string { return enumString(t, chunkTypeNames, "REPLY_TYPE_", uint64(t)) }

// IsError reports whether t is an error chunk.
func (t ChunkType) IsError() bool { return t&(1<<15) != 0 }

// Chunk is a structured reply chunk's header.
type Chunk struct {
	Flags  ChunkFlags
	Type   ChunkType
	Cookie uint64
	Length uint32 // of the payload that follows
}

// Append appends the ChunkSize-byte encoding of c to b.
func (c Chunk) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, MagicStructuredReply)
	b = binary.BigEndian.AppendUint16(b, uint16(c.Flags))
	b = binary.BigEndian.AppendUint16(b, uint16(c.Type))
	b = binary.BigEndian.AppendUint64(b, c.Cookie)
	return binary.BigEndian.AppendUint32(b, c.Length)
}

// DecodeChunk parses the chunk header at the start of b. Neither the type
// nor the length is checked here: what is legal depends on the request.
func DecodeChunk(b []byte) (Chunk, error) {
	if len(b) < ChunkSize {
		return Chunk{}, short("structured reply chunk", ChunkSize, len(b))
	}
	if m := binary.BigEndian.Uint32(b[chunkMagic:]); m != MagicStructuredReply {
		return Chunk{}, malformed("structured reply magic %#x", m)
	}
	return Chunk{
		Flags:  ChunkFlags(binary.BigEndian.Uint16(b[chunkFlags:])),
		Type:   ChunkType(binary.BigEndian.Uint16(b[chunkType:])),
		Cookie: binary.BigEndian.Uint64(b[chunkCookie:]),
		Length: binary.BigEndian.Uint32(b[chunkLength:]),
	}, nil
}

// ChunkErrorMinSize is the shortest payload of an error chunk: the error
// and the message's length.
const ChunkErrorMinSize = 4 + 2

// ChunkErr is the payload of an ERROR or ERROR_OFFSET chunk.
type ChunkErr struct {
	Errno   Errno
	Message string
	Offset  uint64 // ERROR_OFFSET only
}

// DecodeChunkErr parses the whole of b, the payload of an error chunk of
// type t. The errno must not be zero.
func DecodeChunkErr(t ChunkType, b []byte) (ChunkErr, error) {
	if len(b) < ChunkErrorMinSize {
		return ChunkErr{}, short("error chunk", ChunkErrorMinSize, len(b))
	}
	e := ChunkErr{Errno: Errno(binary.BigEndian.Uint32(b))}
	if e.Errno == 0 {
		return ChunkErr{}, malformed("error chunk with error 0")
	}
	n := int(binary.BigEndian.Uint16(b[4:]))
	rest := b[ChunkErrorMinSize:]
	if n > len(rest) {
		return ChunkErr{}, malformed("error chunk message of %d bytes in %d", n, len(rest))
	}
	e.Message, rest = string(rest[:n]), rest[n:]
	want := 0
	if t == ChunkErrorOffset {
		want = 8
	}
	if len(rest) != want {
		return ChunkErr{}, malformed("%v chunk has %d bytes after its message, want %d", t, len(rest), want)
	}
	if want == 8 {
		e.Offset = binary.BigEndian.Uint64(rest)
	}
	return e, nil
}

// AppendChunkErr appends the payload of an error chunk of type t to b.
func AppendChunkErr(b []byte, t ChunkType, e ChunkErr) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(e.Errno))
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.Message)))
	b = append(b, e.Message...)
	if t == ChunkErrorOffset {
		b = binary.BigEndian.AppendUint64(b, e.Offset)
	}
	return b
}
