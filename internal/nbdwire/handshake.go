package nbdwire

import (
	"encoding/binary"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Magic numbers of the handshake.
const (
	// MagicNBD ("NBDMAGIC") starts every greeting, old or new style;
	// go-nbd names it after the old style.
	MagicNBD      = protocol.NEGOTIATION_MAGIC_OLDSTYLE
	MagicOpt      = protocol.NEGOTIATION_MAGIC_OPTION // "IHAVEOPT"
	MagicOptReply = protocol.NEGOTIATION_MAGIC_REPLY
)

// Sizes of the handshake's fixed forms, in bytes.
const (
	ServerHelloSize     = 8 + 8 + 2     // magic, magic, handshake flags
	ClientFlagsSize     = 4             // client flags
	OptHeaderSize       = 8 + 4 + 4     // magic, option, length
	OptReplyHeaderSize  = 8 + 4 + 4 + 4 // magic, option, reply type, length
	ExportNameReplySize = 8 + 2         // size, transmission flags
	ExportNameZeroes    = 124           // reserved, after ExportNameReply unless NO_ZEROES
	InfoTypeSize        = 2             // leads every NBD_REP_INFO's data
	InfoExportSize      = 2 + 8 + 2     // info type, size, transmission flags
	InfoBlockSizeSize   = 2 + 4 + 4 + 4 // info type, minimum, preferred, maximum
	infoRequestMinSize  = 4 + 2         // name length, info count
	exportEntryMinSize  = 4             // name length

	// MaxString is the longest string (export name, description, error
	// message) the protocol allows.
	MaxString = 4096
)

// Offsets of the fields of the fixed forms.
const (
	helloMagic    = 0
	helloOptMagic = 8
	helloFlags    = 16

	optMagic  = 0
	optOption = 8
	optLength = 12

	repMagic  = 0
	repOption = 8
	repType   = 12
	repLength = 16

	enSize  = 0
	enFlags = 8

	infoType        = 0
	infoExportSize  = 2
	infoExportFlags = 10
	infoBlockMin    = 2
	infoBlockPref   = 6
	infoBlockMax    = 10
)

// HandshakeFlags are the flags of the server's greeting.
type HandshakeFlags uint16

const (
	HandshakeFixedNewstyle = HandshakeFlags(protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE)
	HandshakeNoZeroes      = HandshakeFlags(1 << 1)
)

var handshakeFlagNames = []string{"FIXED_NEWSTYLE", "NO_ZEROES"}

func (f HandshakeFlags) String() string { return flagString(uint64(f), handshakeFlagNames) }

// ClientFlags are the flags a client answers the greeting with.
type ClientFlags uint32

const (
	ClientFixedNewstyle ClientFlags = 1 << 0
	ClientNoZeroes      ClientFlags = 1 << 1

	// KnownClientFlags are all the client flags the protocol defines; a
	// server must hang up on any other.
	KnownClientFlags = ClientFixedNewstyle | ClientNoZeroes
)

func (f ClientFlags) String() string { return flagString(uint64(f), handshakeFlagNames) }

// Append appends the 4-byte encoding of f to b.
func (f ClientFlags) Append(b []byte) []byte { return binary.BigEndian.AppendUint32(b, uint32(f)) }

// DecodeClientFlags parses the client flags at the start of b.
func DecodeClientFlags(b []byte) (ClientFlags, error) {
	if len(b) < ClientFlagsSize {
		return 0, short("client flags", ClientFlagsSize, len(b))
	}
	return ClientFlags(binary.BigEndian.Uint32(b)), nil
}

// Option is an option a client sends during the handshake.
type Option uint32

const (
	OptExportName      Option = 1
	OptAbort                  = Option(protocol.NEGOTIATION_ID_OPTION_ABORT)
	OptList                   = Option(protocol.NEGOTIATION_ID_OPTION_LIST)
	OptPeekExport      Option = 4 // withdrawn from the protocol
	OptStartTLS        Option = 5
	OptInfo                   = Option(protocol.NEGOTIATION_ID_OPTION_INFO)
	OptGo                     = Option(protocol.NEGOTIATION_ID_OPTION_GO)
	OptStructuredReply Option = 8
	OptListMetaContext Option = 9
	OptSetMetaContext  Option = 10
	OptExtendedHeaders Option = 11
)

var optionNames = map[Option]string{
	OptExportName:      "EXPORT_NAME",
	OptAbort:           "ABORT",
	OptList:            "LIST",
	OptPeekExport:      "PEEK_EXPORT",
	OptStartTLS:        "STARTTLS",
	OptInfo:            "INFO",
	OptGo:              "GO",
	OptStructuredReply: "STRUCTURED_REPLY",
	OptListMetaContext: "LIST_META_CONTEXT",
	OptSetMetaContext:  "SET_META_CONTEXT",
	OptExtendedHeaders: "EXTENDED_HEADERS",
}

func (o Option) String() string { return enumString(o, optionNames, "OPT_", uint64(o)) }

// ReplyType is the type of an option reply; error types have bit 31 set.
type ReplyType uint32

const repErrBit ReplyType = 1 << 31

const (
	RepAck              = ReplyType(protocol.NEGOTIATION_TYPE_REPLY_ACK)
	RepServer           = ReplyType(protocol.NEGOTIATION_TYPE_REPLY_SERVER)
	RepInfo             = ReplyType(protocol.NEGOTIATION_TYPE_REPLY_INFO)
	RepMetaContext      = ReplyType(4)
	RepErrUnsup         = ReplyType(protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED)
	RepErrPolicy        = repErrBit | 2
	RepErrInvalid       = repErrBit | 3
	RepErrPlatform      = repErrBit | 4
	RepErrTLSReqd       = repErrBit | 5
	RepErrUnknown       = ReplyType(protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN)
	RepErrShutdown      = repErrBit | 7
	RepErrBlockSizeReqd = repErrBit | 8
	RepErrTooBig        = repErrBit | 9
	RepErrExtHeaderReqd = repErrBit | 10
)

var replyTypeNames = map[ReplyType]string{
	RepAck:              "ACK",
	RepServer:           "SERVER",
	RepInfo:             "INFO",
	RepMetaContext:      "META_CONTEXT",
	RepErrUnsup:         "ERR_UNSUP",
	RepErrPolicy:        "ERR_POLICY",
	RepErrInvalid:       "ERR_INVALID",
	RepErrPlatform:      "ERR_PLATFORM",
	RepErrTLSReqd:       "ERR_TLS_REQD",
	RepErrUnknown:       "ERR_UNKNOWN",
	RepErrShutdown:      "ERR_SHUTDOWN",
	RepErrBlockSizeReqd: "ERR_BLOCK_SIZE_REQD",
	RepErrTooBig:        "ERR_TOO_BIG",
	RepErrExtHeaderReqd: "ERR_EXT_HEADER_REQD",
}

func (t ReplyType) String() string { return enumString(t, replyTypeNames, "REP_", uint64(t)) }

// IsError reports whether t refuses the option.
func (t ReplyType) IsError() bool { return t&repErrBit != 0 }

// InfoType is an information item of NBD_OPT_INFO and NBD_OPT_GO.
type InfoType uint16

const (
	InfoExport      = InfoType(protocol.NEGOTIATION_TYPE_INFO_EXPORT)
	InfoName        = InfoType(protocol.NEGOTIATION_TYPE_INFO_NAME)
	InfoDescription = InfoType(protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION)
	InfoBlockSize   = InfoType(protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE)
)

var infoTypeNames = map[InfoType]string{
	InfoExport:      "EXPORT",
	InfoName:        "NAME",
	InfoDescription: "DESCRIPTION",
	InfoBlockSize:   "BLOCK_SIZE",
}

func (t InfoType) String() string { return enumString(t, infoTypeNames, "INFO_", uint64(t)) }

// ServerHello is the server's greeting.
type ServerHello struct {
	Flags HandshakeFlags
}

// Append appends the ServerHelloSize-byte encoding of h to b.
func (h ServerHello) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, MagicNBD)
	b = binary.BigEndian.AppendUint64(b, MagicOpt)
	return binary.BigEndian.AppendUint16(b, uint16(h.Flags))
}

// DecodeServerHello parses the greeting at the start of b. An old-style
// greeting is malformed: its second magic is not "IHAVEOPT".
func DecodeServerHello(b []byte) (ServerHello, error) {
	if len(b) < ServerHelloSize {
		return ServerHello{}, short("server greeting", ServerHelloSize, len(b))
	}
	m1, m2 := binary.BigEndian.Uint64(b[helloMagic:]), binary.BigEndian.Uint64(b[helloOptMagic:])
	if m1 != MagicNBD || m2 != MagicOpt {
		return ServerHello{}, malformed("greeting magic %#016x %#016x is not newstyle NBD", m1, m2)
	}
	return ServerHello{Flags: HandshakeFlags(binary.BigEndian.Uint16(b[helloFlags:]))}, nil
}

// OptHeader leads an option; Length bytes of data follow it.
type OptHeader struct {
	Option Option
	Length uint32
}

// Append appends the OptHeaderSize-byte encoding of h to b.
func (h OptHeader) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, MagicOpt)
	b = binary.BigEndian.AppendUint32(b, uint32(h.Option))
	return binary.BigEndian.AppendUint32(b, h.Length)
}

// DecodeOptHeader parses the option header at the start of b. Length is
// not checked: how much data to accept is the server's policy.
func DecodeOptHeader(b []byte) (OptHeader, error) {
	if len(b) < OptHeaderSize {
		return OptHeader{}, short("option header", OptHeaderSize, len(b))
	}
	if m := binary.BigEndian.Uint64(b[optMagic:]); m != MagicOpt {
		return OptHeader{}, malformed("option magic %#x", m)
	}
	return OptHeader{
		Option: Option(binary.BigEndian.Uint32(b[optOption:])),
		Length: binary.BigEndian.Uint32(b[optLength:]),
	}, nil
}

// OptReplyHeader leads an option reply; Length bytes of data follow it.
type OptReplyHeader struct {
	Option Option
	Type   ReplyType
	Length uint32
}

// Append appends the OptReplyHeaderSize-byte encoding of h to b.
func (h OptReplyHeader) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, MagicOptReply)
	b = binary.BigEndian.AppendUint32(b, uint32(h.Option))
	b = binary.BigEndian.AppendUint32(b, uint32(h.Type))
	return binary.BigEndian.AppendUint32(b, h.Length)
}

// DecodeOptReplyHeader parses the option reply header at the start of b.
// Length is not checked: how much data to accept is the client's policy.
func DecodeOptReplyHeader(b []byte) (OptReplyHeader, error) {
	if len(b) < OptReplyHeaderSize {
		return OptReplyHeader{}, short("option reply header", OptReplyHeaderSize, len(b))
	}
	if m := binary.BigEndian.Uint64(b[repMagic:]); m != MagicOptReply {
		return OptReplyHeader{}, malformed("option reply magic %#x", m)
	}
	return OptReplyHeader{
		Option: Option(binary.BigEndian.Uint32(b[repOption:])),
		Type:   ReplyType(binary.BigEndian.Uint32(b[repType:])),
		Length: binary.BigEndian.Uint32(b[repLength:]),
	}, nil
}

// ExportNameReply answers NBD_OPT_EXPORT_NAME, which has no error reply.
type ExportNameReply struct {
	Size  uint64
	Flags TransFlags
}

// Append appends the encoding of r to b: ExportNameReplySize bytes, then
// ExportNameZeroes zero bytes if zeroes (both sides did not agree on
// NO_ZEROES).
func (r ExportNameReply) Append(b []byte, zeroes bool) []byte {
	b = binary.BigEndian.AppendUint64(b, r.Size)
	b = binary.BigEndian.AppendUint16(b, uint16(r.Flags))
	if zeroes {
		b = append(b, make([]byte, ExportNameZeroes)...)
	}
	return b
}

// DecodeExportNameReply parses the reply at the start of b, without the
// zero bytes that may follow it.
func DecodeExportNameReply(b []byte) (ExportNameReply, error) {
	if len(b) < ExportNameReplySize {
		return ExportNameReply{}, short("export name reply", ExportNameReplySize, len(b))
	}
	return ExportNameReply{
		Size:  binary.BigEndian.Uint64(b[enSize:]),
		Flags: TransFlags(binary.BigEndian.Uint16(b[enFlags:])),
	}, nil
}

// ExportEntry is the data of an NBD_REP_SERVER reply to NBD_OPT_LIST:
//
//	0 name length u32
//	4 name
//	  description (the rest; may be empty)
type ExportEntry struct {
	Name, Description string
}

// Append appends the encoding of e to b.
func (e ExportEntry) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(e.Name)))
	b = append(b, e.Name...)
	return append(b, e.Description...)
}

// DecodeExportEntry parses the whole of b, a reply's data, as an
// ExportEntry.
func DecodeExportEntry(b []byte) (ExportEntry, error) {
	if len(b) < exportEntryMinSize {
		return ExportEntry{}, short("export list entry", exportEntryMinSize, len(b))
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-exportEntryMinSize) {
		return ExportEntry{}, malformed("export list entry name of %d bytes in %d bytes of data", n, len(b))
	}
	return ExportEntry{Name: string(b[4 : 4+n]), Description: string(b[4+n:])}, nil
}

// InfoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO:
//
//	0 name length u32
//	4 name
//	  count       u16
//	  info types  u16 each (count of them)
type InfoRequest struct {
	Name  string
	Infos []InfoType
}

// Len is the length of r's encoding, for the option header.
func (r InfoRequest) Len() int { return infoRequestMinSize + len(r.Name) + 2*len(r.Infos) }

// Append appends the encoding of r to b. The name must not be longer than
// MaxString and there must be fewer than 1<<16 infos; the encoding of r
// would not decode otherwise.
func (r InfoRequest) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Name)))
	b = append(b, r.Name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Infos)))
	for _, t := range r.Infos {
		b = binary.BigEndian.AppendUint16(b, uint16(t))
	}
	return b
}

// DecodeInfoRequest parses the whole of b, an option's data, as an
// InfoRequest. Lengths must add up exactly. The name's length is not
// capped here: a server may answer a long name as an unknown export.
func DecodeInfoRequest(b []byte) (InfoRequest, error) {
	if len(b) < infoRequestMinSize {
		return InfoRequest{}, short("info request", infoRequestMinSize, len(b))
	}
	nameLen := binary.BigEndian.Uint32(b)
	if uint64(nameLen) > uint64(len(b)-infoRequestMinSize) {
		return InfoRequest{}, malformed("info request name of %d bytes in %d bytes of data", nameLen, len(b))
	}
	r := InfoRequest{Name: string(b[4 : 4+nameLen])}
	rest := b[4+nameLen:]
	n := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+2*n {
		return InfoRequest{}, malformed("info request count %d with %d bytes of info types", n, len(rest)-2)
	}
	if n > 0 {
		r.Infos = make([]InfoType, n)
		for i := range r.Infos {
			r.Infos[i] = InfoType(binary.BigEndian.Uint16(rest[2+2*i:]))
		}
	}
	return r, nil
}

// DecodeInfoType returns the type of the info item b, the data of an
// NBD_REP_INFO.
func DecodeInfoType(b []byte) (InfoType, error) {
	if len(b) < InfoTypeSize {
		return 0, short("info item", InfoTypeSize, len(b))
	}
	return InfoType(binary.BigEndian.Uint16(b[infoType:])), nil
}

// AppendInfoText appends an NBD_INFO_NAME or NBD_INFO_DESCRIPTION item,
// whose body is the text itself, to b.
func AppendInfoText(b []byte, t InfoType, text string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(t))
	return append(b, text...)
}

// ExportInfo is the body of NBD_INFO_EXPORT, which every successful
// NBD_OPT_INFO and NBD_OPT_GO carries.
type ExportInfo struct {
	Size  uint64
	Flags TransFlags
}

// Append appends the InfoExportSize-byte item, type included, to b.
func (i ExportInfo) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(InfoExport))
	b = binary.BigEndian.AppendUint64(b, i.Size)
	return binary.BigEndian.AppendUint16(b, uint16(i.Flags))
}

// DecodeExportInfo parses the whole of b, an NBD_REP_INFO's data, as an
// NBD_INFO_EXPORT item.
func DecodeExportInfo(b []byte) (ExportInfo, error) {
	if err := checkInfo(b, InfoExport, InfoExportSize); err != nil {
		return ExportInfo{}, err
	}
	return ExportInfo{
		Size:  binary.BigEndian.Uint64(b[infoExportSize:]),
		Flags: TransFlags(binary.BigEndian.Uint16(b[infoExportFlags:])),
	}, nil
}

// BlockSizeInfo is the body of NBD_INFO_BLOCK_SIZE: the export's minimum,
// preferred and maximum block sizes.
type BlockSizeInfo struct {
	Min, Preferred, Max uint32
}

// Append appends the InfoBlockSizeSize-byte item, type included, to b.
func (i BlockSizeInfo) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(InfoBlockSize))
	b = binary.BigEndian.AppendUint32(b, i.Min)
	b = binary.BigEndian.AppendUint32(b, i.Preferred)
	return binary.BigEndian.AppendUint32(b, i.Max)
}

// DecodeBlockSizeInfo parses the whole of b, an NBD_REP_INFO's data, as an
// NBD_INFO_BLOCK_SIZE item. The sizes are not checked against the
// protocol's rules (powers of two, min ≤ preferred ≤ max): that is the
// client's decision.
func DecodeBlockSizeInfo(b []byte) (BlockSizeInfo, error) {
	if err := checkInfo(b, InfoBlockSize, InfoBlockSizeSize); err != nil {
		return BlockSizeInfo{}, err
	}
	return BlockSizeInfo{
		Min:       binary.BigEndian.Uint32(b[infoBlockMin:]),
		Preferred: binary.BigEndian.Uint32(b[infoBlockPref:]),
		Max:       binary.BigEndian.Uint32(b[infoBlockMax:]),
	}, nil
}

// checkInfo checks that b is an info item of type t and exactly size bytes.
func checkInfo(b []byte, t InfoType, size int) error {
	if len(b) < size {
		return short("NBD_INFO_"+t.String(), size, len(b))
	}
	if got := InfoType(binary.BigEndian.Uint16(b[infoType:])); got != t {
		return malformed("info type %v where %v was expected", got, t)
	}
	if len(b) != size {
		return malformed("NBD_INFO_%v of %d bytes, want %d", t, len(b), size)
	}
	return nil
}
