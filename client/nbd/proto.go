package nbd

import (
	"strconv"
	"strings"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Magic numbers and fixed sizes of the wire messages. go-nbd's protocol
// package is used where it defines the value so both stay in agreement.
const (
	magicNBD         = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicOpt         = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOptReply    = protocol.NEGOTIATION_MAGIC_REPLY
	magicRequest     = protocol.TRANSMISSION_MAGIC_REQUEST
	magicSimpleReply = protocol.TRANSMISSION_MAGIC_REPLY

	serverHelloLen  = 8 + 8 + 2     // magic, magic, handshake flags
	optHeaderLen    = 8 + 4 + 4     // magic, option, length
	optReplyLen     = 8 + 4 + 4 + 4 // magic, option, type, length
	requestLen      = 4 + 2 + 2 + 8 + 8 + 4
	simpleReplyLen  = 4 + 4 + 8
	exportNameZeros = 124 // reserved padding after an NBD_OPT_EXPORT_NAME reply
)

// Handshake flags sent by the server and client flags sent back.
const (
	hsFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	hsNoZeroes      = uint16(1 << 1)

	clientFixedNewstyle = uint32(1 << 0)
	clientNoZeroes      = uint32(1 << 1)
	clientKnownFlags    = clientFixedNewstyle | clientNoZeroes
)

// Transmission flags, announced per export (see Export.TransmissionFlags).
const (
	TransHasFlags        = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	TransReadOnly        = uint16(1 << 1)
	TransSendFlush       = uint16(1 << 2)
	TransSendFUA         = uint16(1 << 3)
	TransRotational      = uint16(1 << 4)
	TransSendTrim        = uint16(1 << 5)
	TransSendWriteZeroes = uint16(1 << 6)
	TransCanMultiConn    = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
)

// Command is the type field of a transmission request.
type Command uint16

const (
	CmdRead        Command = Command(protocol.TRANSMISSION_TYPE_REQUEST_READ)
	CmdWrite       Command = Command(protocol.TRANSMISSION_TYPE_REQUEST_WRITE)
	CmdDisc        Command = Command(protocol.TRANSMISSION_TYPE_REQUEST_DISC)
	CmdFlush       Command = 3
	CmdTrim        Command = 4
	CmdWriteZeroes Command = 6
)

var commandNames = map[Command]string{
	CmdRead:        "READ",
	CmdWrite:       "WRITE",
	CmdDisc:        "DISC",
	CmdFlush:       "FLUSH",
	CmdTrim:        "TRIM",
	5:              "CACHE",
	CmdWriteZeroes: "WRITE_ZEROES",
	7:              "BLOCK_STATUS",
	8:              "RESIZE",
}

func (c Command) String() string {
	if s, ok := commandNames[c]; ok {
		return s
	}
	return "CMD_" + strconv.Itoa(int(c))
}

// CmdFlags is the flags field of a transmission request.
type CmdFlags uint16

const (
	FlagFUA      CmdFlags = 1 << 0
	FlagNoHole   CmdFlags = 1 << 1
	FlagDF       CmdFlags = 1 << 2 // only with structured replies; never valid here
	FlagReqOne   CmdFlags = 1 << 3 // only for BLOCK_STATUS; never valid here
	FlagFastZero CmdFlags = 1 << 4 // never advertised; never valid here
)

var cmdFlagNames = []string{"FUA", "NO_HOLE", "DF", "REQ_ONE", "FAST_ZERO"}

func (f CmdFlags) String() string {
	if f == 0 {
		return "0"
	}
	var parts []string
	for i, name := range cmdFlagNames {
		if f&(1<<i) != 0 {
			parts = append(parts, name)
			f &^= 1 << i
		}
	}
	if f != 0 {
		parts = append(parts, "0x"+strconv.FormatUint(uint64(f), 16))
	}
	return strings.Join(parts, "|")
}

// option is an option id sent during the handshake.
type option uint32

const (
	optExportName     option = 1
	optAbort          option = option(protocol.NEGOTIATION_ID_OPTION_ABORT)
	optList           option = option(protocol.NEGOTIATION_ID_OPTION_LIST)
	optStartTLS       option = 5
	optInfo           option = option(protocol.NEGOTIATION_ID_OPTION_INFO)
	optGo             option = option(protocol.NEGOTIATION_ID_OPTION_GO)
	optStructuredRepl option = 8
)

var optionNames = map[option]string{
	optExportName:     "EXPORT_NAME",
	optAbort:          "ABORT",
	optList:           "LIST",
	4:                 "PEEK_EXPORT",
	optStartTLS:       "STARTTLS",
	optInfo:           "INFO",
	optGo:             "GO",
	optStructuredRepl: "STRUCTURED_REPLY",
	9:                 "LIST_META_CONTEXT",
	10:                "SET_META_CONTEXT",
	11:                "EXTENDED_HEADERS",
}

func (o option) String() string {
	if s, ok := optionNames[o]; ok {
		return s
	}
	return "OPT_" + strconv.FormatUint(uint64(o), 10)
}

// replyType is the type of an option reply; error types have bit 31 set.
type replyType uint32

const (
	repAck        replyType = replyType(protocol.NEGOTIATION_TYPE_REPLY_ACK)
	repServer     replyType = replyType(protocol.NEGOTIATION_TYPE_REPLY_SERVER)
	repInfo       replyType = replyType(protocol.NEGOTIATION_TYPE_REPLY_INFO)
	repErrUnsup   replyType = replyType(protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED)
	repErrPolicy  replyType = 1<<31 | 2
	repErrInvalid replyType = 1<<31 | 3
	repErrUnknown replyType = replyType(protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN)
	repErrTooBig  replyType = 1<<31 | 9
)

var replyTypeNames = map[replyType]string{
	repAck:        "ACK",
	repServer:     "SERVER",
	repInfo:       "INFO",
	4:             "META_CONTEXT",
	repErrUnsup:   "ERR_UNSUP",
	repErrPolicy:  "ERR_POLICY",
	repErrInvalid: "ERR_INVALID",
	1<<31 | 4:     "ERR_PLATFORM",
	1<<31 | 5:     "ERR_TLS_REQD",
	repErrUnknown: "ERR_UNKNOWN",
	1<<31 | 7:     "ERR_SHUTDOWN",
	1<<31 | 8:     "ERR_BLOCK_SIZE_REQD",
	repErrTooBig:  "ERR_TOO_BIG",
}

func (t replyType) String() string {
	if s, ok := replyTypeNames[t]; ok {
		return s
	}
	return "REP_" + strconv.FormatUint(uint64(t), 10)
}

// infoType is an information item of NBD_OPT_INFO and NBD_OPT_GO.
type infoType uint16

const (
	infoExport      infoType = infoType(protocol.NEGOTIATION_TYPE_INFO_EXPORT)
	infoName        infoType = infoType(protocol.NEGOTIATION_TYPE_INFO_NAME)
	infoDescription infoType = infoType(protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION)
	infoBlockSize   infoType = infoType(protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE)
)

var infoTypeNames = []string{"EXPORT", "NAME", "DESCRIPTION", "BLOCK_SIZE"}

func (t infoType) String() string {
	if int(t) < len(infoTypeNames) {
		return infoTypeNames[t]
	}
	return "INFO_" + strconv.Itoa(int(t))
}
