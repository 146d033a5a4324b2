package crypto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"
)

// records returns a stream of fake records (a 4-byte header whose last two
// bytes are the body's length, then the body) of the given body lengths.
func records(lens ...int) []byte {
	var s []byte
	for i, n := range lens {
		s = binary.BigEndian.AppendUint32(s, uint32(n))
		for j := range n {
			s = append(s, byte(i+j))
		}
	}
	return s
}

// chunky hands out src in reads of at most what next says, and counts the
// reads and the bytes each read asked for.
type chunky struct {
	src   []byte
	next  func() int
	reads int
	asked []int
}

func (c *chunky) Read(p []byte) (int, error) {
	if len(c.src) == 0 {
		return 0, io.EOF
	}
	c.reads++
	c.asked = append(c.asked, len(p))
	n := copy(p, c.src[:min(len(c.src), c.next())])
	c.src = c.src[n:]
	return n, nil
}

// readAll peeks every record of the stream the way readRecord does and
// checks it against the source. It returns how many records there were and
// how many received bytes the buffer moved to its front.
func readAll(t *testing.T, b *recvBuf, want []byte) (records, moved int) {
	t.Helper()
	peek := func(n int) ([]byte, error) {
		r, w := b.r, b.w
		p, err := b.peek(n)
		if b.r == 0 && r > 0 {
			moved += w - r
		}
		return p, err
	}
	for len(want) > 0 {
		hdr, err := peek(recordHeaderLen)
		if err != nil {
			t.Fatalf("record %d: header: %v", records, err)
		}
		n := recordHeaderLen + int(binary.BigEndian.Uint32(hdr))
		rec, err := peek(n)
		if err != nil {
			t.Fatalf("record %d: body of %d bytes: %v", records, n, err)
		}
		if !bytes.Equal(rec, want[:n]) {
			t.Fatalf("record %d: %d bytes differ from what was sent", records, n)
		}
		b.discard(n)
		want = want[n:]
		records++
	}
	if _, err := b.peek(recordHeaderLen); err != io.EOF {
		t.Fatalf("after the last record: %v, want EOF", err)
	}
	return records, moved
}

func TestRecvBufChunked(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var lens []int
	for range 300 {
		switch rng.IntN(3) {
		case 0:
			lens = append(lens, rng.IntN(64))
		case 1:
			lens = append(lens, rng.IntN(8<<10))
		default:
			lens = append(lens, maxCiphertext-rng.IntN(100))
		}
	}
	stream := records(lens...)
	for _, chunk := range []int{1, 7, 4096, 65536, 1 << 20} {
		src := &chunky{src: stream, next: func() int { return 1 + rng.IntN(chunk) }}
		if got, _ := readAll(t, newRecvBuf(src, readBufferSize), stream); got != len(lens) {
			t.Fatalf("chunks up to %d: %d records, want %d", chunk, got, len(lens))
		}
	}
}

// A stream of full records is read one system call per record, each
// ending where a record does, however the socket delivers it: of what was
// received, only the next record's header is moved before it is opened
// (bufio.Reader moves the part of a record that arrived first).
func TestRecvBufLargeRecordsReadExactly(t *testing.T) {
	lens := make([]int, 100)
	for i := range lens {
		lens[i] = maxCiphertext
	}
	stream := records(lens...)
	for _, chunk := range []int{1 << 30, 40000} {
		src := &chunky{src: stream, next: func() int { return chunk }}
		_, moved := readAll(t, newRecvBuf(src, readBufferSize), stream)
		// The first record is the one a greedy first read can leave in part.
		if most := (len(lens)-1)*recordHeaderLen + maxCiphertext; moved > most {
			t.Errorf("deliveries of %d bytes: moved %d bytes of %d records, want at most %d",
				chunk, moved, len(lens), most)
		}
		reads := (recordHeaderLen + maxCiphertext + chunk - 1) / chunk
		if most := len(lens)*reads + 2; src.reads > most {
			t.Errorf("deliveries of %d bytes: %d reads for %d records, want at most %d",
				chunk, src.reads, len(lens), most)
		}
	}
}

// A stream of large WRITEs (per request a small record for its header, four
// full records of payload and a small one for the rest) moves no part of a
// full record, whatever the socket hands over: the small records' greedy
// reads stop where a full record that begins there still fits. Before
// they did, a quarter of the stream was moved.
func TestRecvBufWriteStreamMovesOnlySmallRecords(t *testing.T) {
	var lens []int
	for range 200 {
		lens = append(lens, 40+tagLen, maxCiphertext, maxCiphertext, maxCiphertext, maxCiphertext, 68+tagLen)
	}
	stream := records(lens...)
	rng := rand.New(rand.NewPCG(3, 4))
	for _, chunk := range []int{1 << 30, 200000, 65536, 32768} {
		src := &chunky{src: stream, next: func() int { return 1 + rng.IntN(chunk) }}
		_, moved := readAll(t, newRecvBuf(src, readBufferSize), stream)
		// At most a header and the two small records per request.
		if most := 200 * (3*recordHeaderLen + 40 + 68 + 2*tagLen); moved > most {
			t.Errorf("deliveries of up to %d bytes: moved %d of %d bytes, want at most %d",
				chunk, moved, len(stream), most)
		}
	}
}

// Small records are fetched many per system call.
func TestRecvBufSmallRecordsBatch(t *testing.T) {
	lens := make([]int, 1000)
	for i := range lens {
		lens[i] = 4096 + 24 + tagLen
	}
	stream := records(lens...)
	src := &chunky{src: stream, next: func() int { return 1 << 30 }}
	_, _ = readAll(t, newRecvBuf(src, readBufferSize), stream)
	if most := 2*len(stream)/readBufferSize + 2; src.reads > most {
		t.Fatalf("%d reads for %d records of %d bytes, want at most %d", src.reads, len(lens), lens[0], most)
	}
}

// deadlined fails one read with a timeout when fail is set.
type deadlined struct {
	io.Reader
	fail bool
}

func (d *deadlined) Read(p []byte) (int, error) {
	if d.fail {
		d.fail = false
		return 0, os.ErrDeadlineExceeded
	}
	return d.Reader.Read(p)
}

// A deadline in the middle of a record keeps what arrived of it.
func TestRecvBufDeadlineKeepsPartialRecord(t *testing.T) {
	stream := records(50000)
	src := &chunky{src: stream, next: func() int { return 20000 }}
	d := &deadlined{Reader: src}
	b := newRecvBuf(d, readBufferSize)
	if _, err := b.peek(recordHeaderLen); err != nil {
		t.Fatal(err)
	}
	d.fail = true
	got, err := b.peek(len(stream))
	if !errors.Is(err, os.ErrDeadlineExceeded) || len(got) != 20000 {
		t.Fatalf("peek across a deadline: %d bytes, %v; want the 20000 received and the deadline", len(got), err)
	}
	_, _ = readAll(t, b, stream)
}

func TestRecvBufNoProgress(t *testing.T) {
	b := newRecvBuf(readerFunc(func([]byte) (int, error) { return 0, nil }), 64)
	if _, err := b.peek(4); !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("reader that returns nothing: %v, want io.ErrNoProgress", err)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }
