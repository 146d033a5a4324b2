package crypto

import "io"

// recvBuf buffers received records so that one is opened where it landed.
//
// It is bufio.Reader's Peek and Discard with two differences that matter
// for records of up to 64 KiB. bufio moves what it holds to the front of
// its buffer on every fill, so a record that arrived in part is copied once
// more before it is opened; recvBuf moves only a header or the start of a
// small record. While it waits for the rest of a large record it reads only
// that rest and the next header, so that in a stream of large records each
// read ends where a record does. Reading as much as it can is kept for
// headers and small records, where one system call fetching many of them is
// the point, and such a read fills only the buffer's batch window, which
// ends a full record's length before the buffer does: a large record that
// begins inside the window fits behind it whole, so the part of it that
// came with the small ones is never moved to make room for the rest. (A
// stream of 256 KiB WRITEs, each a small record for its header, four full
// ones and a small tail, had a quarter of its bytes moved when the small
// reads could fill the whole buffer.)
//
// A read error, a deadline among them, leaves what was received in the
// buffer and is returned once; the next peek reads again.
type recvBuf struct {
	rd   io.Reader
	buf  []byte
	r, w int // buf[r:w] is received and not yet discarded
}

// exactAbove is the size from which peek reads just the rest of a record
// (and the next header) instead of filling the batch window.
const exactAbove = 16 << 10

func newRecvBuf(rd io.Reader, size int) *recvBuf {
	return &recvBuf{rd: rd, buf: make([]byte, size)}
}

// buffered reports how many received bytes are not yet discarded.
func (b *recvBuf) buffered() int { return b.w - b.r }

// bytes returns the received bytes not yet discarded, valid until the next
// peek.
func (b *recvBuf) bytes() []byte { return b.buf[b.r:b.w] }

// peek returns the next n bytes without consuming them, reading until they
// are there; n must not exceed the buffer. On an error it returns what it
// has, fewer than n bytes.
func (b *recvBuf) peek(n int) ([]byte, error) {
	for empty := 0; b.w-b.r < n; {
		var end int
		if n >= exactAbove {
			if len(b.buf)-b.r < n {
				b.compact()
			}
			end = min(len(b.buf), b.r+n+recordHeaderLen)
		} else {
			// What moves is less than n bytes, and n is small.
			window := len(b.buf) - maxRecordLen
			if b.w >= window || len(b.buf)-b.r < n {
				b.compact()
			}
			end = max(window, b.r+n)
		}
		m, err := b.rd.Read(b.buf[b.w:end])
		if m < 0 || m > end-b.w {
			m = 0 // a broken Reader; the error below, or the loop, goes on
		}
		b.w += m
		if m == 0 && err == nil {
			if empty++; empty == 100 {
				err = io.ErrNoProgress
			}
		}
		if err != nil {
			if b.w-b.r >= n {
				break // got it all anyway; the error comes back on the next read
			}
			return b.buf[b.r:b.w], err
		}
	}
	return b.buf[b.r : b.r+n], nil
}

// compact moves the received bytes not yet discarded to the front.
func (b *recvBuf) compact() {
	b.w = copy(b.buf, b.buf[b.r:b.w])
	b.r = 0
}

// discard drops the first n buffered bytes; n must not exceed buffered.
func (b *recvBuf) discard(n int) {
	b.r += n
	if b.r == b.w {
		b.r, b.w = 0, 0 // empty: the next read starts at the front
	}
}
