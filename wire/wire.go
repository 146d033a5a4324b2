package wire

import (
	"errors"
	"fmt"
)

// Version is the protocol version spoken on the control stream, carried in
// HELLO and SERVER_INFO. The encrypted channel below has its own version
// (crypto.ProtocolVersion), which is what the Noise prologue binds; it does
// not change with this one.
const Version = 3

// Sizes of the fixed parts of frames, in bytes.
const (
	RequestSize   = 40 // request header on a data stream
	ReplySize     = 24 // reply header on a data stream
	MsgHeaderSize = 8  // control message header
	IdentitySize  = 16 // export identity, server instance id, client attachment id

	// MaxMessage bounds a control message body. Export lists are small;
	// anything larger is a protocol violation, refused before allocating.
	MaxMessage = 1 << 20
	// MaxName bounds export and host names.
	MaxName = 255
	// MaxPayload bounds the payload of one request or reply. Servers
	// announce a maximum transfer no larger than this.
	MaxPayload = 32 << 20
)

// ErrShort is wrapped by decode errors for buffers shorter than a frame.
var ErrShort = errors.New("wire: short buffer")

// ErrMalformed is wrapped by decode errors for frames that break a rule of
// PROTOCOL.md: bad reserved bits, lengths out of range, unknown types.
var ErrMalformed = errors.New("wire: malformed frame")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

func short(what string, need, have int) error {
	return fmt.Errorf("%w: %s needs %d bytes, have %d", ErrShort, what, need, have)
}

// Identity names an export's backing disk (stable across server restarts,
// different for a different disk), a server instance (new at every start)
// or a client attachment (kept across its reconnects).
type Identity [IdentitySize]byte

func (id Identity) String() string { return fmt.Sprintf("%x", id[:]) }

// IsZero reports whether id is all zeros.
func (id Identity) IsZero() bool { return id == Identity{} }
