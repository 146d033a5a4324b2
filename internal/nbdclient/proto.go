package nbdclient

import "strconv"

// Wire constants of the NBD protocol (doc/proto.md in the NBD repository).
const (
	magicNBD         = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt         = 0x49484156454f5054 // "IHAVEOPT"
	magicOptReply    = 0x3e889045565a9
	magicRequest     = 0x25609513
	magicSimpleReply = 0x67446698
	magicStructured  = 0x668e33ef // only if negotiated; never here

	serverHelloLen = 8 + 8 + 2     // magic, magic, handshake flags
	optHeaderLen   = 8 + 4 + 4     // magic, option, length
	optReplyLen    = 8 + 4 + 4 + 4 // magic, option, type, length
	requestLen     = 4 + 2 + 2 + 8 + 8 + 4
	replyLen       = 4 + 4 + 8

	// maxOptReply bounds an option reply's payload: the longest legal one
	// is an export description, which the spec caps at 4 KiB.
	maxOptReply = 64 << 10
)

// Handshake flags.
const (
	hsFixedNewstyle     = 1 << 0
	hsNoZeroes          = 1 << 1
	clientFixedNewstyle = 1 << 0
	clientNoZeroes      = 1 << 1
)

// Options, option reply types and info types used by NBD_OPT_GO.
const (
	optGo     = 7
	repAck    = 1
	repInfo   = 3
	repErrBit = 1 << 31

	infoExport    = 0
	infoExportLen = 2 + 8 + 2 // type, size, transmission flags
)

var repErrNames = map[uint32]string{
	repErrBit | 1: "ERR_UNSUP",
	repErrBit | 2: "ERR_POLICY",
	repErrBit | 3: "ERR_INVALID",
	repErrBit | 4: "ERR_PLATFORM",
	repErrBit | 5: "ERR_TLS_REQD",
	repErrBit | 6: "ERR_UNKNOWN",
	repErrBit | 7: "ERR_SHUTDOWN",
	repErrBit | 8: "ERR_BLOCK_SIZE_REQD",
	repErrBit | 9: "ERR_TOO_BIG",
}

func repName(t uint32) string {
	if s, ok := repErrNames[t]; ok {
		return s
	}
	return "REP_" + strconv.FormatUint(uint64(t), 10)
}

// Transmission flags announced by the server for the export.
const (
	FlagHasFlags     uint16 = 1 << 0
	FlagReadOnly     uint16 = 1 << 1
	FlagSendFlush    uint16 = 1 << 2
	FlagSendFUA      uint16 = 1 << 3
	FlagRotational   uint16 = 1 << 4
	FlagSendTrim     uint16 = 1 << 5
	FlagWriteZeroes  uint16 = 1 << 6
	FlagCanMultiConn uint16 = 1 << 8
)

// command is the type field of a request.
type command uint16

const (
	cmdRead  command = 0
	cmdWrite command = 1
	cmdDisc  command = 2
	cmdFlush command = 3
	cmdTrim  command = 4
)

var commandNames = [...]string{"read", "write", "disc", "flush", "trim"}

func (c command) String() string {
	if int(c) < len(commandNames) {
		return commandNames[c]
	}
	return "cmd" + strconv.Itoa(int(c))
}

// cmdFlagFUA is the request flag asking for a durable write.
const cmdFlagFUA = 1 << 0
