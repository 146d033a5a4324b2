// Package nbdwire is the byte layout of the Network Block Device protocol
// (NetworkBlockDevice/nbd doc/proto.md): its magic numbers, flags, option
// codes, reply and info types, commands and errno values, and encoders and
// decoders for its fixed-size forms. dst's NBD front end (client/nbd), its
// test client (internal/nbdclient) and the raw-protocol tests all speak NBD
// through this package, so each value is declared once.
//
// Like wire/, it is pure: types plus encode/decode over []byte, no
// goroutines, no connections, no clocks. Policy stays with the callers:
// which options to answer, which commands and flags an export allows,
// how long a payload may be. Decoders check only what makes bytes a form:
// the length, the magic number, and lengths that must add up. A failure
// wraps ErrShort or ErrMalformed.
//
// Values go-nbd's protocol package defines are taken from it, so the two
// cannot drift apart; the rest are written out from proto.md.
//
// # Layout
//
// All integers are big endian. Handshake (fixed newstyle):
//
//	S: "NBDMAGIC" (8) "IHAVEOPT" (8) handshake flags (2)        ServerHello
//	C: client flags (4)                                         ClientFlags
//	C: "IHAVEOPT" (8) option (4) length (4)                     OptHeader
//	   data (length)                                            e.g. InfoRequest
//	S: 0x3e889045565a9 (8) option (4) reply type (4) length (4) OptReplyHeader
//	   data (length)                                            e.g. ExportInfo
//
// The client sends options until one ends the handshake. NBD_OPT_LIST is
// answered with an NBD_REP_SERVER per export (ExportEntry), then
// NBD_REP_ACK. NBD_OPT_INFO and NBD_OPT_GO are answered with NBD_REP_INFO
// replies, whose data is an info type (2) and its body (ExportInfo,
// BlockSizeInfo, or text), then NBD_REP_ACK. NBD_OPT_EXPORT_NAME is
// answered with the export's size (8) and transmission flags (2), then 124
// zero bytes unless both sides set NO_ZEROES (ExportNameReply).
// Transmission, with simple replies:
//
//	C: 0x25609513 (4) flags (2) type (2) cookie (8) offset (8) length (4)  Request
//	   [payload (length), NBD_CMD_WRITE only]
//	S: 0x67446698 (4) error (4) cookie (8)                                 SimpleReply
//	   [data (length), NBD_CMD_READ without error only]
//
// Structured replies and extended headers are not implemented; their magic
// numbers and option codes are here only to be recognized and named.
package nbdwire
