// Package crypto owns dst's secure channel: Curve25519 identity keys and
// their text and file forms, the authorized_keys list, the Noise IK
// handshake (with its cleartext preamble and replay filter) and the record
// layer that turns an authenticated handshake into an encrypted net.Conn.
//
// The byte-level description of the channel lives next to the code in
// CHANNEL.md; keep the two in sync.
//
// Everything above this package (yamux, the NBD control and data protocol)
// sees only a net.Conn whose bytes are confidential and authenticated and
// whose peer is identified by a PublicKey.
package crypto

import "errors"

// Error classes. Every error returned by this package that belongs to one of
// these classes wraps the sentinel, so callers match with errors.Is.
var (
	// ErrHandshake marks a handshake that did not complete: bad preamble,
	// a peer that closed the connection, a message that failed to decrypt.
	ErrHandshake = errors.New("crypto: handshake failed")

	// ErrUnauthorized marks a client whose static key the server's
	// Authorize callback refused.
	ErrUnauthorized = errors.New("crypto: key not authorized")

	// ErrReplay marks a first handshake message whose timestamp was seen
	// before or is too old for the replay window.
	ErrReplay = errors.New("crypto: replayed handshake")

	// ErrAuth marks a record that failed authentication. The Conn is dead.
	ErrAuth = errors.New("crypto: record authentication failed")

	// ErrRecord marks a malformed record header or a broken record stream
	// (truncated record, exhausted nonce). The Conn is dead.
	ErrRecord = errors.New("crypto: bad record")
)
