package crypto

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/flynn/noise"
)

// Protocol constants; CHANNEL.md describes the bytes.
const (
	// ProtocolName starts the Noise prologue. Bump it together with
	// ProtocolVersion when the channel changes incompatibly.
	ProtocolName = "dst/1"

	// ProtocolVersion is the version byte of the preamble.
	ProtocolVersion = 1

	// DefaultRekeyAfter is the number of records after which each direction
	// rekeys when the config leaves RekeyAfter zero. Both peers must use the
	// same value: it is part of the protocol, not a tuning knob.
	DefaultRekeyAfter = 1 << 30

	preambleMagic   = "DSTN"
	preambleLen     = 8
	frameHeaderLen  = 2 // u16 big-endian length before each handshake message
	dhLen           = 32
	tagLen          = 16
	msg1Len         = dhLen + dhLen + tagLen + timestampLen + tagLen // e, s, payload: 108
	msg1MinLen      = dhLen + dhLen + tagLen + tagLen                // with empty payload: 96
	msg2Len         = dhLen + tagLen                                 // e, empty payload: 48
	maxHandshakeLen = noise.MaxMsgLen
)

// ClientConfig configures the initiator side of the handshake.
type ClientConfig struct {
	PrivateKey PrivateKey // this host's identity
	ServerKey  PublicKey  // the server's pinned public key
	Cipher     Cipher     // CipherAuto picks PreferredCipher
	Random     io.Reader  // ephemeral key source; nil means crypto/rand
	RekeyAfter uint64     // records per direction between rekeys; 0 means DefaultRekeyAfter

	// now returns the handshake timestamp in Unix nanoseconds; tests set it
	// for golden transcripts. nil means nextTimestamp.
	now func() uint64
}

// ServerConfig configures the responder side of the handshake.
type ServerConfig struct {
	PrivateKey PrivateKey
	// MoreKeys are further private keys the server answers to, for a
	// rotation in progress: a client may pin PrivateKey's public key or any
	// of these. The first message is tried against each in turn.
	MoreKeys []PrivateKey
	// Authorize decides whether a client key may connect; a non-nil error
	// refuses it. (*AuthorizedKeys).Authorize fits here.
	Authorize  func(PublicKey) error
	Ciphers    []Cipher      // allowed ciphers; empty allows both
	Replay     *ReplayFilter // required; share one per server
	Random     io.Reader     // nil means crypto/rand
	RekeyAfter uint64        // must equal the client's; 0 means DefaultRekeyAfter

	// FirstMessageTimeout, if positive, bounds the wait for the preamble
	// and the first message, counted from the call to Server; ctx still
	// bounds the whole handshake. A client sends both in one write of 118
	// bytes, so they arrive together: a short bound here frees a
	// connection that says nothing (or drips bytes) long before ctx would.
	FirstMessageTimeout time.Duration
	// OnFirstMessage, if set, is called once the preamble and the first
	// message have arrived, before the message is decrypted or checked.
	// Admission control uses it to tell a client that is talking from a
	// connection that is only held open.
	OnFirstMessage func()
}

// Client runs the initiator side of the handshake over c and returns the
// encrypted connection. It honours ctx's deadline and cancellation during
// the handshake only. On error c is closed.
func Client(ctx context.Context, c net.Conn, cfg *ClientConfig) (*Conn, error) {
	var conn *Conn
	err := cfg.check()
	if err == nil {
		err = withContext(ctx, c, func() (err error) {
			conn, err = clientHandshake(c, cfg)
			return err
		})
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return conn, nil
}

// Server runs the responder side of the handshake over c. A client whose key
// is refused, whose first message does not decrypt or that fails the replay
// check gets nothing back: c is closed without a byte written. On error c is
// closed.
func Server(ctx context.Context, c net.Conn, cfg *ServerConfig) (*Conn, error) {
	var conn *Conn
	err := cfg.check()
	if err == nil {
		err = withContext(ctx, c, func() (err error) {
			conn, err = serverHandshake(ctx, c, cfg)
			return err
		})
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return conn, nil
}

func (cfg *ClientConfig) check() error {
	switch {
	case cfg == nil:
		return errors.New("crypto: nil ClientConfig")
	case cfg.PrivateKey.IsZero():
		return errors.New("crypto: ClientConfig.PrivateKey is not set")
	case cfg.ServerKey.IsZero():
		return errors.New("crypto: ClientConfig.ServerKey is not set (pin the server's public key)")
	case cfg.Cipher != CipherAuto && !cfg.Cipher.valid():
		return fmt.Errorf("crypto: ClientConfig.Cipher %v is not supported", cfg.Cipher)
	}
	return nil
}

func (cfg *ServerConfig) check() error {
	switch {
	case cfg == nil:
		return errors.New("crypto: nil ServerConfig")
	case cfg.PrivateKey.IsZero():
		return errors.New("crypto: ServerConfig.PrivateKey is not set")
	case cfg.Authorize == nil:
		return errors.New("crypto: ServerConfig.Authorize is nil")
	case slices.ContainsFunc(cfg.MoreKeys, PrivateKey.IsZero):
		return errors.New("crypto: ServerConfig.MoreKeys holds a zero key")
	case cfg.Replay == nil:
		return errors.New("crypto: ServerConfig.Replay is nil")
	}
	for _, c := range cfg.Ciphers {
		if !c.valid() {
			return fmt.Errorf("crypto: ServerConfig.Ciphers: %v is not a concrete cipher", c)
		}
	}
	return nil
}

func (cfg *ServerConfig) allows(c Cipher) bool {
	if len(cfg.Ciphers) == 0 {
		return c.valid()
	}
	for _, a := range cfg.Ciphers {
		if a == c {
			return true
		}
	}
	return false
}

func (cfg *ServerConfig) allowedNames() string {
	if len(cfg.Ciphers) == 0 {
		return CipherChaChaPoly.String() + ", " + CipherAESGCM.String()
	}
	names := make([]string, len(cfg.Ciphers))
	for i, c := range cfg.Ciphers {
		names[i] = c.String()
	}
	return strings.Join(names, ", ")
}

// withContext runs fn with c's deadlines following ctx, and clears them
// afterwards so the returned Conn starts without deadlines.
func withContext(ctx context.Context, c net.Conn, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("crypto: handshake not started: %w", err)
	}
	deadline, hasDeadline := ctx.Deadline()
	if hasDeadline {
		if err := c.SetDeadline(deadline); err != nil {
			return fmt.Errorf("crypto: setting handshake deadline: %w", err)
		}
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.SetDeadline(time.Unix(1, 0)) // in the past: unblocks pending I/O
		close(fired)
	})
	err := fn()
	if !stop() {
		<-fired // make sure the past deadline is set before clearing it
	}
	ctxErr := ctx.Err()
	// The socket deadline may fire just before ctx's timer; a shorter
	// deadline set inside fn (the server's first-message timeout) is not
	// ctx's doing.
	if ctxErr == nil && hasDeadline && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(deadline) {
		ctxErr = context.DeadlineExceeded
	}
	if err != nil && ctxErr != nil {
		return fmt.Errorf("crypto: handshake with %s aborted (%w): %w", c.RemoteAddr(), ctxErr, err)
	}
	if err != nil {
		return err
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("crypto: clearing handshake deadline: %w", err)
	}
	return nil
}

func clientHandshake(c net.Conn, cfg *ClientConfig) (*Conn, error) {
	cipher := cfg.Cipher
	if cipher == CipherAuto {
		cipher = PreferredCipher()
	}
	pre := makePreamble(cipher)
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:   cipher.suite(),
		Random:        cfg.Random,
		Pattern:       noise.HandshakeIK,
		Initiator:     true,
		Prologue:      prologue(pre),
		StaticKeypair: keypair(cfg.PrivateKey),
		PeerStatic:    cfg.ServerKey[:],
	})
	if err != nil {
		return nil, fmt.Errorf("crypto: starting handshake: %w", err)
	}
	now := cfg.now
	if now == nil {
		now = nextTimestamp
	}
	var ts [timestampLen]byte
	putTimestamp(ts[:], now())

	// Preamble and first message leave in one write.
	buf := make([]byte, preambleLen+frameHeaderLen, preambleLen+frameHeaderLen+msg1Len)
	copy(buf, pre[:])
	buf, _, _, err = hs.WriteMessage(buf, ts[:])
	if err != nil {
		return nil, fmt.Errorf("crypto: writing handshake message: %w", err)
	}
	binary.BigEndian.PutUint16(buf[preambleLen:], uint16(len(buf)-preambleLen-frameHeaderLen))
	if _, err := c.Write(buf); err != nil {
		if peerClosed(err) {
			return nil, serverHungUp(c, cipher, err)
		}
		return nil, fmt.Errorf("crypto: sending handshake to %s: %w", c.RemoteAddr(), err)
	}

	msg, err := readFrame(c, msg2Len, msg2Len)
	if err != nil {
		if peerClosed(err) {
			return nil, serverHungUp(c, cipher, err)
		}
		return nil, fmt.Errorf("crypto: reading handshake response from %s: %w", c.RemoteAddr(), err)
	}
	payload, send, recv, err := hs.ReadMessage(nil, msg)
	if err != nil {
		return nil, fmt.Errorf("crypto: handshake response from %s failed to decrypt (corrupted in transit, or not a dst server): %w: %w",
			c.RemoteAddr(), ErrHandshake, err)
	}
	if len(payload) != 0 || send == nil {
		return nil, fmt.Errorf("crypto: unexpected handshake response payload of %d bytes: %w", len(payload), ErrHandshake)
	}
	return newConn(c, cfg.ServerKey, cipher, send, recv, cfg.RekeyAfter)
}

func serverHandshake(ctx context.Context, c net.Conn, cfg *ServerConfig) (*Conn, error) {
	firstBy, err := cfg.setFirstDeadline(ctx, c)
	if err != nil {
		return nil, err
	}
	var pre [preambleLen]byte
	if _, err := io.ReadFull(c, pre[:]); err != nil {
		return nil, cfg.firstReadError(ctx, c, "reading preamble", firstBy, err)
	}
	cipher, err := cfg.checkPreamble(pre)
	if err != nil {
		return nil, fmt.Errorf("crypto: client %s: %w", c.RemoteAddr(), err)
	}
	msg, err := readFrame(c, msg1MinLen, maxHandshakeLen)
	if err != nil {
		return nil, cfg.firstReadError(ctx, c, "reading first handshake message", firstBy, err)
	}
	if !firstBy.IsZero() {
		// Back to ctx's deadline. A cancellation that set its past
		// deadline before this line would be undone by it, so look again.
		ctxDeadline, _ := ctx.Deadline()
		if err := c.SetReadDeadline(ctxDeadline); err != nil {
			return nil, fmt.Errorf("crypto: restoring handshake deadline: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("crypto: handshake with %s: %w: %w", c.RemoteAddr(), ErrHandshake, err)
		}
	}
	if cfg.OnFirstMessage != nil {
		cfg.OnFirstMessage()
	}
	hs, payload, err := cfg.readFirst(cipher, pre, msg)
	if err != nil {
		return nil, fmt.Errorf("crypto: first handshake message from %s failed to decrypt: "+
			"the client pinned a server key that is not %s, or the message was corrupted: %w: %w",
			c.RemoteAddr(), cfg.publicKeys(), ErrHandshake, err)
	}
	peer := PublicKey(hs.PeerStatic())
	if err := cfg.Authorize(peer); err != nil {
		if errors.Is(err, ErrUnauthorized) {
			return nil, fmt.Errorf("crypto: client %s with key %s refused: %w", c.RemoteAddr(), peer, err)
		}
		return nil, fmt.Errorf("crypto: client %s with key %s refused: %w: %w", c.RemoteAddr(), peer, ErrUnauthorized, err)
	}
	ts, err := parseTimestamp(payload)
	if err != nil {
		return nil, fmt.Errorf("crypto: client %s key %s: %w: %w", c.RemoteAddr(), peer, ErrHandshake, err)
	}
	if err := cfg.Replay.check(peer, ts); err != nil {
		return nil, fmt.Errorf("crypto: client %s key %s: %w", c.RemoteAddr(), peer, err)
	}

	buf := make([]byte, frameHeaderLen, frameHeaderLen+msg2Len)
	buf, recv, send, err := hs.WriteMessage(buf, nil)
	if err != nil {
		return nil, fmt.Errorf("crypto: writing handshake response: %w", err)
	}
	binary.BigEndian.PutUint16(buf, uint16(len(buf)-frameHeaderLen))
	if _, err := c.Write(buf); err != nil {
		return nil, fmt.Errorf("crypto: sending handshake response to %s: %w", c.RemoteAddr(), err)
	}
	return newConn(c, peer, cipher, send, recv, cfg.RekeyAfter)
}

// readFirst opens the first handshake message with whichever of the
// server's keys the client encrypted it to, and returns the handshake
// state that succeeded with the message's payload.
func (cfg *ServerConfig) readFirst(cipher Cipher, pre [preambleLen]byte, msg []byte) (*noise.HandshakeState, []byte, error) {
	var err error
	for i := -1; i < len(cfg.MoreKeys); i++ {
		k := cfg.PrivateKey
		if i >= 0 {
			k = cfg.MoreKeys[i]
		}
		var hs *noise.HandshakeState
		hs, err = noise.NewHandshakeState(noise.Config{
			CipherSuite:   cipher.suite(),
			Random:        cfg.Random,
			Pattern:       noise.HandshakeIK,
			Prologue:      prologue(pre),
			StaticKeypair: keypair(k),
		})
		if err != nil {
			return nil, nil, fmt.Errorf("starting handshake: %w", err)
		}
		var payload []byte
		if payload, _, _, err = hs.ReadMessage(nil, msg); err == nil {
			return hs, payload, nil
		}
	}
	return nil, nil, err
}

// publicKeys names the keys the server answers to, for error messages.
func (cfg *ServerConfig) publicKeys() string {
	names := []string{cfg.PrivateKey.Public().String()}
	for _, k := range cfg.MoreKeys {
		names = append(names, k.Public().String())
	}
	return strings.Join(names, " or ")
}

// setFirstDeadline applies FirstMessageTimeout to c's reads when it ends
// before ctx's deadline, and returns when it ends (zero if not applied).
func (cfg *ServerConfig) setFirstDeadline(ctx context.Context, c net.Conn) (time.Time, error) {
	if cfg.FirstMessageTimeout <= 0 {
		return time.Time{}, nil
	}
	firstBy := time.Now().Add(cfg.FirstMessageTimeout)
	if d, ok := ctx.Deadline(); ok && !firstBy.Before(d) {
		return time.Time{}, nil
	}
	if err := c.SetReadDeadline(firstBy); err != nil {
		return time.Time{}, fmt.Errorf("crypto: setting first-message deadline: %w", err)
	}
	return firstBy, nil
}

// firstReadError describes a failed read of the preamble or the first
// message, naming the first-message timeout when that is what ended it.
func (cfg *ServerConfig) firstReadError(ctx context.Context, c net.Conn, what string, firstBy time.Time, err error) error {
	if !errors.Is(err, ErrHandshake) {
		err = fmt.Errorf("%w: %w", ErrHandshake, err)
	}
	if !firstBy.IsZero() && ctx.Err() == nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("crypto: %s from %s: not complete within the first-message timeout (%v): %w",
			what, c.RemoteAddr(), cfg.FirstMessageTimeout, err)
	}
	return fmt.Errorf("crypto: %s from %s: %w", what, c.RemoteAddr(), err)
}

func makePreamble(c Cipher) [preambleLen]byte {
	var p [preambleLen]byte
	copy(p[:], preambleMagic)
	p[4] = ProtocolVersion
	p[5] = byte(c)
	return p // p[6:8] reserved, zero
}

// checkPreamble validates the client's preamble and returns its cipher.
func (cfg *ServerConfig) checkPreamble(p [preambleLen]byte) (Cipher, error) {
	if string(p[:4]) != preambleMagic {
		return 0, fmt.Errorf("bad preamble magic %q (not a dst client?): %w", p[:4], ErrHandshake)
	}
	if p[4] != ProtocolVersion {
		return 0, fmt.Errorf("client speaks channel version %d, this server speaks %d: %w", p[4], ProtocolVersion, ErrHandshake)
	}
	if p[6] != 0 || p[7] != 0 {
		return 0, fmt.Errorf("reserved preamble bytes %#x %#x are not zero: %w", p[6], p[7], ErrHandshake)
	}
	c := Cipher(p[5])
	if !cfg.allows(c) {
		return 0, fmt.Errorf("client asked for cipher %v, this server allows %s: %w", c, cfg.allowedNames(), ErrHandshake)
	}
	return c, nil
}

// prologue binds the protocol name and the cleartext preamble into the
// handshake hash, so a preamble altered in transit (a cipher downgrade, say)
// makes the handshake fail.
func prologue(p [preambleLen]byte) []byte {
	return append([]byte(ProtocolName), p[:]...)
}

func keypair(k PrivateKey) noise.DHKey {
	pub := k.Public()
	return noise.DHKey{Private: append([]byte(nil), k[:]...), Public: pub[:]}
}

// readFrame reads one length-prefixed handshake message whose length must be
// within [minLen, maxLen].
func readFrame(c net.Conn, minLen, maxLen int) ([]byte, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n < minLen || n > maxLen {
		return nil, fmt.Errorf("handshake message length %d outside [%d, %d]: %w", n, minLen, maxLen, ErrHandshake)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(c, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

// serverHungUp explains a connection the server closed before msg2. The
// server tells an unauthenticated peer nothing, so the client cannot know
// whether its key was refused, the server's key is not the pinned one, or
// the server was shedding load; only the server's log says which.
func serverHungUp(c net.Conn, cipher Cipher, err error) error {
	return fmt.Errorf("crypto: server %s: connection closed before the handshake completed: "+
		"the server may be overloaded or not reachable, or may not accept this client's key; check its log "+
		"(it also closes the connection if its key is not the one pinned with --server-key, "+
		"or if it does not accept protocol %s with cipher %s): %w: %w",
		c.RemoteAddr(), ProtocolName, cipher, ErrHandshake, err)
}

// peerClosed reports whether err means the peer hung up on us.
func peerClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.ErrClosedPipe) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
