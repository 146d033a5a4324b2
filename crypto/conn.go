package crypto

// The record layer.
//
// Locking: a Conn has two independent halves. The read half (rmu) owns the
// receive buffer (recvBuf), the receive CipherState and the plaintext
// buffer; the write half (wmu) owns the send CipherState and the write
// buffer. So one goroutine may Read while another Writes, as yamux does.
// Concurrent Writes are serialized by wmu, and all records of one Write
// leave before the next Write starts. errMu guards only the fatal error,
// which either half may set; once set, both halves return it and the socket
// is closed.
//
// Steady state allocates nothing: records are sealed into a reused write
// buffer and opened from the receive buffer (peek, then discard once
// authenticated) into a reused plaintext buffer or directly into the
// caller's slice. A peek leaves a half-received record in the buffer, so a
// read deadline that expires mid-record does not break the stream.

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/flynn/noise"
)

// Record layout; see CHANNEL.md.
const (
	recordHeaderLen = 4 // type u8, flags u8, ciphertext length u16 BE
	recordTypeData  = 1
	maxCiphertext   = 65535

	// MaxRecordPayload is the largest plaintext carried by one record.
	MaxRecordPayload = maxCiphertext - tagLen

	// maxRecordLen is the largest record on the wire, header and all.
	maxRecordLen = recordHeaderLen + maxCiphertext

	// readBufferSize is a 128 KiB batch window, which one read of small
	// records may fill, and room behind it for a full record that begins
	// at its end (recvBuf).
	readBufferSize = 128<<10 + maxRecordLen

	// writeBatch is how many full records one Write packs per syscall.
	writeBatch = 4
)

// Conn is an encrypted, authenticated connection returned by Client and
// Server. It implements net.Conn.
type Conn struct {
	conn   net.Conn
	peer   PublicKey
	cipher Cipher

	errMu sync.Mutex
	err   error // first fatal error

	rmu     sync.Mutex
	r       *recvBuf
	in      halfConn
	plain   []byte // reused plaintext buffer, MaxRecordPayload bytes
	pending []byte // decrypted, not yet returned by Read; aliases plain

	wmu  sync.Mutex
	out  halfConn
	wbuf []byte
}

// halfConn is the state of one direction.
type halfConn struct {
	cs         *noise.CipherState // holds the key; used only for Rekey
	cipher     Cipher
	aead       cipher.AEAD
	n          uint64 // nonce of the next record
	sinceRekey uint64
	rekeyAfter uint64
	nonce      [12]byte
	ad         [recordHeaderLen]byte
}

func newConn(c net.Conn, peer PublicKey, ciph Cipher, send, recv *noise.CipherState, rekeyAfter uint64) (*Conn, error) {
	if rekeyAfter == 0 {
		rekeyAfter = DefaultRekeyAfter
	}
	conn := &Conn{
		conn:   c,
		peer:   peer,
		cipher: ciph,
		r:      newRecvBuf(c, readBufferSize),
		plain:  make([]byte, MaxRecordPayload),
	}
	if err := conn.in.init(recv, ciph, rekeyAfter); err != nil {
		return nil, err
	}
	if err := conn.out.init(send, ciph, rekeyAfter); err != nil {
		return nil, err
	}
	return conn, nil
}

func (h *halfConn) init(cs *noise.CipherState, c Cipher, rekeyAfter uint64) error {
	aead, err := c.newAEAD(cs.UnsafeKey())
	if err != nil {
		return fmt.Errorf("crypto: record cipher: %w", err)
	}
	*h = halfConn{cs: cs, cipher: c, aead: aead, n: cs.Nonce(), rekeyAfter: rekeyAfter}
	return nil
}

// prepare sets the nonce for the next record. Noise reserves 2^64-1, and a
// nonce must never repeat, so the direction dies instead of wrapping.
func (h *halfConn) prepare() error {
	if h.n >= noise.MaxNonce {
		return fmt.Errorf("crypto: nonce space exhausted after %d records: %w", h.n, ErrRecord)
	}
	h.cipher.putNonce(&h.nonce, h.n)
	return nil
}

// advance counts a record and rekeys every rekeyAfter records. Both peers
// count the same records, so they rekey at the same record index.
func (h *halfConn) advance() error {
	h.n++
	h.sinceRekey++
	if h.sinceRekey < h.rekeyAfter {
		return nil
	}
	h.sinceRekey = 0
	h.cs.Rekey()
	aead, err := h.cipher.newAEAD(h.cs.UnsafeKey())
	if err != nil {
		return fmt.Errorf("crypto: rekey: %w", err)
	}
	h.aead = aead
	return nil
}

// seal appends one record carrying chunk (at most MaxRecordPayload bytes).
func (h *halfConn) seal(buf, chunk []byte) ([]byte, error) {
	if err := h.prepare(); err != nil {
		return buf, err
	}
	h.ad[0] = recordTypeData
	h.ad[1] = 0
	binary.BigEndian.PutUint16(h.ad[2:], uint16(len(chunk)+tagLen))
	buf = append(buf, h.ad[:]...)
	buf = h.aead.Seal(buf, h.nonce[:], chunk, h.ad[:])
	return buf, h.advance()
}

// failure returns the fatal error, if any.
func (c *Conn) failure() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.err
}

// fail records err as fatal unless an earlier error was, closes the socket
// and returns the first fatal error.
func (c *Conn) fail(err error) error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	if c.err == nil {
		c.err = err
		c.conn.Close()
	}
	return c.err
}

// Read reads decrypted data. After an authentication failure or a broken
// record stream every Read returns the same error.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if err := c.failure(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for len(c.pending) == 0 {
		n, err := c.readRecord(p)
		if err != nil || n > 0 {
			return n, err
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// readRecord reads and opens one record. A record that fits in p is
// decrypted straight into p and its length returned; otherwise it lands in
// c.pending and readRecord returns 0.
func (c *Conn) readRecord(p []byte) (int, error) {
	hdr, err := c.r.peek(recordHeaderLen)
	if err != nil {
		return 0, c.readError(err, len(hdr))
	}
	if hdr[0] != recordTypeData || hdr[1] != 0 {
		return 0, c.fail(fmt.Errorf("crypto: record %d from %s: type %d flags %#x: %w",
			c.in.n, c.peer, hdr[0], hdr[1], ErrRecord))
	}
	ctLen := int(binary.BigEndian.Uint16(hdr[2:]))
	if ctLen < tagLen {
		return 0, c.fail(fmt.Errorf("crypto: record %d from %s: ciphertext length %d shorter than the %d-byte tag: %w",
			c.in.n, c.peer, ctLen, tagLen, ErrRecord))
	}
	rec, err := c.r.peek(recordHeaderLen + ctLen)
	if err != nil {
		return 0, c.readError(err, len(rec))
	}
	if err := c.in.prepare(); err != nil {
		return 0, c.fail(err)
	}
	copy(c.in.ad[:], rec[:recordHeaderLen])
	dst := c.plain[:0]
	direct := len(p) >= ctLen-tagLen
	if direct {
		dst = p[:0]
	}
	pt, err := c.in.aead.Open(dst, c.in.nonce[:], rec[recordHeaderLen:], c.in.ad[:])
	if err != nil {
		return 0, c.fail(fmt.Errorf("crypto: record %d from %s: %w", c.in.n, c.peer, ErrAuth))
	}
	c.r.discard(len(rec))
	if err := c.in.advance(); err != nil {
		return 0, c.fail(err)
	}
	if direct {
		return len(pt), nil
	}
	c.pending = pt
	return 0, nil
}

// readError classifies a socket read error; got is how many bytes of the
// wanted header or record were available.
func (c *Conn) readError(err error, got int) error {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF) && got == 0:
		return io.EOF // clean close between records
	case errors.Is(err, io.EOF):
		return c.fail(fmt.Errorf("crypto: connection from %s closed inside a record (%d bytes of it received): %w: %w",
			c.peer, got, ErrRecord, io.ErrUnexpectedEOF))
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return err // the partial record stays buffered; the stream is intact
	}
	return c.fail(fmt.Errorf("crypto: read: %w", err))
}

// Write encrypts p into records of at most MaxRecordPayload bytes, up to
// writeBatch records per system call. Any error, including a write
// deadline, is fatal: part of a record may have been sent.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.failure(); err != nil {
		return 0, err
	}
	written := 0
	for len(p) > 0 {
		n := min(len(p), writeBatch*MaxRecordPayload)
		c.growWriteBuffer(n)
		buf, err := c.sealRecords(c.wbuf[:0], p[:n])
		if err != nil {
			return written, err
		}
		if err := c.writeSealed(buf); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// AppendRecords seals p into records, appends them to dst and returns the
// extended buffer, for a later WriteRecords. It is Write split in two, so a
// caller can seal on one goroutine while another is in a write. Records
// must be written in the order they were sealed, and a Conn written this
// way must not also be written with Write. Any error is fatal.
func (c *Conn) AppendRecords(dst, p []byte) ([]byte, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.failure(); err != nil {
		return dst, err
	}
	return c.sealRecords(dst, p)
}

// WriteRecords writes records made by AppendRecords. Any error, including a
// write deadline, is fatal.
func (c *Conn) WriteRecords(b []byte) error {
	if err := c.failure(); err != nil {
		return err
	}
	return c.writeSealed(b)
}

// sealRecords appends p to dst as records of at most MaxRecordPayload
// bytes. The caller holds wmu.
func (c *Conn) sealRecords(dst, p []byte) ([]byte, error) {
	for len(p) > 0 {
		chunk := p[:min(len(p), MaxRecordPayload)]
		var err error
		if dst, err = c.out.seal(dst, chunk); err != nil {
			return dst, c.fail(err)
		}
		p = p[len(chunk):]
	}
	return dst, nil
}

// TryWriteRecords writes as much of b, records made by AppendRecords, as
// the socket takes without waiting, and returns how much that was; the
// caller writes the rest later with WriteRecords. It lets a goroutine that
// must never block on a peer (a server worker answering a client that
// stopped reading) hand what is left to one that may. Over a connection
// without a file descriptor (net.Pipe in tests) it writes all of b. Any
// error is fatal.
func (c *Conn) TryWriteRecords(b []byte) (int, error) {
	if err := c.failure(); err != nil {
		return 0, err
	}
	if tw, ok := c.conn.(interface{ TryWrite([]byte) (int, error) }); ok {
		n, err := tw.TryWrite(b)
		if err != nil {
			return n, c.fail(fmt.Errorf("crypto: write to %s: %w", c.peer, err))
		}
		return n, nil
	}
	sc, ok := c.conn.(syscall.Conn)
	if !ok {
		return len(b), c.writeSealed(b)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return len(b), c.writeSealed(b)
	}
	var n int
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		n, werr = syscall.Write(int(fd), b)
		if werr == syscall.EAGAIN || werr == syscall.EINTR {
			n, werr = 0, nil
		}
		return true // done, whether or not the socket took it all
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return max(n, 0), c.fail(fmt.Errorf("crypto: write to %s: %w", c.peer, err))
	}
	return n, nil
}

// Buffered reports how many bytes are waiting to be read without a system
// call: decrypted plaintext not yet returned by Read, and received bytes
// of records not yet opened. Zero means the next Read waits on the socket.
// It must be called from the goroutine that reads.
func (c *Conn) Buffered() int {
	return len(c.pending) + c.r.buffered()
}

// Readable reports how many bytes of plaintext Read can return without
// waiting on the socket: decrypted plaintext not yet returned, and the
// plaintext of the whole records received and not yet opened (a record
// that fails to open returns its error at once, which is no wait either).
// It must be called from the goroutine that reads.
func (c *Conn) Readable() int {
	n := len(c.pending)
	b := c.r.bytes()
	for len(b) >= recordHeaderLen {
		ct := int(binary.BigEndian.Uint16(b[2:]))
		if ct < tagLen || len(b) < recordHeaderLen+ct {
			break
		}
		n += ct - tagLen
		b = b[recordHeaderLen+ct:]
	}
	return n
}

// Decrypted reports how many bytes of plaintext are waiting to be read:
// reading at most that many never waits, which Buffered cannot promise (a
// record may have arrived only in part). It must be called from the
// goroutine that reads.
func (c *Conn) Decrypted() int { return len(c.pending) }

// writeSealed writes sealed records to the socket.
func (c *Conn) writeSealed(b []byte) error {
	if _, err := c.conn.Write(b); err != nil {
		return c.fail(fmt.Errorf("crypto: write to %s: %w", c.peer, err))
	}
	return nil
}

// growWriteBuffer makes room for the records of n bytes, at most
// writeBatch records' worth. It allocates only when a Write is larger than
// any before it.
func (c *Conn) growWriteBuffer(n int) {
	records := (n + MaxRecordPayload - 1) / MaxRecordPayload
	need := n + records*(recordHeaderLen+tagLen)
	if cap(c.wbuf) < need {
		c.wbuf = make([]byte, 0, need)
	}
}

// Close closes the underlying connection. Later Reads and Writes return an
// error wrapping net.ErrClosed.
func (c *Conn) Close() error {
	c.errMu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("crypto: %w", net.ErrClosed)
	}
	c.errMu.Unlock()
	return c.conn.Close()
}

// PeerKey returns the authenticated static public key of the peer.
func (c *Conn) PeerKey() PublicKey { return c.peer }

// Cipher returns the negotiated cipher.
func (c *Conn) Cipher() Cipher { return c.cipher }

// LocalAddr returns the underlying connection's local address.
func (c *Conn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr returns the underlying connection's remote address.
func (c *Conn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// SetDeadline sets the underlying connection's deadlines.
func (c *Conn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline sets the underlying connection's read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// SetWriteDeadline sets the underlying connection's write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }
