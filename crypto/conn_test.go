package crypto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"

	"github.com/dstproject/dst/internal/testsupport"
	"github.com/flynn/noise"
)

func pattern(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestRecordSizes(t *testing.T) {
	sizes := []int{1, 15, 16, 17, 4096, MaxRecordPayload - 1, MaxRecordPayload, MaxRecordPayload + 1,
		writeBatch*MaxRecordPayload + 7, 1 << 20}
	for _, ct := range connTypes {
		for _, c := range ciphers {
			t.Run(ct.name+"/"+c.String(), func(t *testing.T) {
				testsupport.LeakCheck(t)
				cl, sv := mustPair(t, ct.pair, newTestPeers(c))
				for i, n := range sizes {
					msg := pattern(n, uint64(i))
					errc := make(chan error, 1)
					go func() {
						_, err := cl.Write(msg)
						errc <- err
					}()
					// Odd read sizes exercise plaintext carried across Reads
					// as well as records decrypted straight into p.
					got := make([]byte, 0, n)
					buf := make([]byte, []int{7, 1000, MaxRecordPayload, 200000}[i%4])
					for len(got) < n {
						k, err := sv.Read(buf[:min(len(buf), n-len(got))])
						if err != nil {
							t.Fatalf("size %d: read after %d bytes: %v", n, len(got), err)
						}
						got = append(got, buf[:k]...)
					}
					if err := <-errc; err != nil {
						t.Fatalf("size %d: write: %v", n, err)
					}
					if !bytes.Equal(got, msg) {
						t.Fatalf("size %d: data mismatch", n)
					}
				}
			})
		}
	}
}

func TestWriteEmpty(t *testing.T) {
	a, b, wire := memPair(t, CipherChaChaPoly, 0)
	if n, err := a.Write(nil); n != 0 || err != nil || wire.buf.Len() != 0 {
		t.Errorf("Write(nil) = %d, %v, sent %d bytes", n, err, wire.buf.Len())
	}
	if n, err := b.Read(nil); n != 0 || err != nil {
		t.Errorf("Read(nil) = %d, %v", n, err)
	}
}

// TestRecordFraming checks the record header and the one-write-per-batch
// rule on the bytes that reach the socket.
func TestRecordFraming(t *testing.T) {
	for _, c := range ciphers {
		a, _, wire := memPair(t, c, 0)
		n := 2*MaxRecordPayload + 100
		if _, err := a.Write(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		raw := wire.buf.Bytes()
		var lens []int
		for len(raw) > 0 {
			if len(raw) < recordHeaderLen || raw[0] != recordTypeData || raw[1] != 0 {
				t.Fatalf("bad header % x", raw[:min(len(raw), 4)])
			}
			l := int(binary.BigEndian.Uint16(raw[2:]))
			lens = append(lens, l)
			raw = raw[min(len(raw), recordHeaderLen+l):]
		}
		want := []int{maxCiphertext, maxCiphertext, 100 + tagLen}
		if fmt.Sprint(lens) != fmt.Sprint(want) {
			t.Errorf("%v: record ciphertext lengths %v, want %v", c, lens, want)
		}
	}
}

// TestNoiseInterop decrypts our records with flynn/noise's own
// CipherState, proving the nonce layout and rekey follow the Noise spec.
func TestNoiseInterop(t *testing.T) {
	for _, c := range ciphers {
		t.Run(c.String(), func(t *testing.T) {
			const rekeyAfter = 2
			iSend, _, _, _ := noiseSplit(t, c)
			ref := noise.UnsafeNewCipherState(c.suite(), iSend.UnsafeKey(), 0)
			wire := &memConn{}
			a, err := newConn(wire, PublicKey{}, c, iSend, iSend, rekeyAfter)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 7 {
				msg := []byte(fmt.Sprintf("record %d", i))
				if _, err := a.Write(msg); err != nil {
					t.Fatal(err)
				}
				rec := wire.buf.Next(recordHeaderLen + len(msg) + tagLen)
				pt, err := ref.Decrypt(nil, rec[:recordHeaderLen], rec[recordHeaderLen:])
				if err != nil || !bytes.Equal(pt, msg) {
					t.Fatalf("record %d: noise.CipherState.Decrypt = %q, %v", i, pt, err)
				}
				if (i+1)%rekeyAfter == 0 {
					ref.Rekey()
				}
			}
		})
	}
}

func TestRekey(t *testing.T) {
	for _, c := range ciphers {
		t.Run(c.String(), func(t *testing.T) {
			p := newTestPeers(c)
			p.ccfg.RekeyAfter, p.scfg.RekeyAfter = 3, 3
			cl, sv := mustPair(t, connTypes[1].pair, p)
			var wg sync.WaitGroup
			for _, dir := range [][2]*Conn{{cl, sv}, {sv, cl}} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					w, r := dir[0], dir[1]
					go func() {
						for i := range 100 {
							w.Write(pattern(100+i, uint64(i)))
						}
					}()
					for i := range 100 {
						got := make([]byte, 100+i)
						if _, err := io.ReadFull(r, got); err != nil {
							t.Errorf("record %d: %v", i, err)
							return
						}
						if !bytes.Equal(got, pattern(100+i, uint64(i))) {
							t.Errorf("record %d corrupted", i)
							return
						}
					}
				}()
			}
			wg.Wait()
			if cl.out.n != 100 || sv.in.n != 100 {
				t.Errorf("nonces %d/%d, want 100", cl.out.n, sv.in.n)
			}
		})
	}
}

// TestRekeyMismatch proves rekeying changes keys: peers that disagree on
// RekeyAfter fail authentication exactly at the first rekey.
func TestRekeyMismatch(t *testing.T) {
	a, b, _ := memPair(t, CipherChaChaPoly, 3)
	b.in.rekeyAfter = 4
	buf := make([]byte, 10)
	for i := range 4 {
		if _, err := a.Write([]byte("0123456789")); err != nil {
			t.Fatal(err)
		}
		_, err := io.ReadFull(b, buf)
		if i < 3 && err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if i == 3 && !errors.Is(err, ErrAuth) {
			t.Fatalf("record after mismatched rekey: %v, want ErrAuth", err)
		}
	}
}

// flipConn flips one bit of the byte at offset at (counted from arming) in
// the data read from the wrapped conn.
type flipConn struct {
	net.Conn
	mu     sync.Mutex
	armed  bool
	at     int
	offset int
}

func (f *flipConn) Read(b []byte) (int, error) {
	n, err := f.Conn.Read(b)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.armed {
		if i := f.at - f.offset; i >= 0 && i < n {
			b[i] ^= 1
		}
		f.offset += n
	}
	return n, err
}

func TestTamperedRecord(t *testing.T) {
	secret := []byte("hello world, this is secret")
	tests := []struct {
		name string
		at   int
		want error
	}{
		{"type", 0, ErrRecord},
		{"flags", 1, ErrRecord},
		{"length", 3, ErrAuth}, // 43 -> 42: shorter ciphertext, wrong AD
		{"ciphertext", recordHeaderLen + 3, ErrAuth},
		{"tag", recordHeaderLen + len(secret) + 2, ErrAuth},
	}
	for _, ct := range connTypes {
		for _, tt := range tests {
			t.Run(ct.name+"/"+tt.name, func(t *testing.T) {
				testsupport.LeakCheck(t)
				p := newTestPeers(CipherChaChaPoly)
				var fc *flipConn
				pair := func(t testing.TB) (net.Conn, net.Conn) {
					c, s := ct.pair(t)
					fc = &flipConn{Conn: s}
					return c, fc
				}
				cl, sv := mustPair(t, pair, p)
				fc.mu.Lock()
				fc.armed, fc.at = true, tt.at
				fc.mu.Unlock()
				go cl.Write(secret)
				buf := make([]byte, 100)
				n, err := sv.Read(buf)
				if n != 0 || !errors.Is(err, tt.want) {
					t.Fatalf("Read = %d, %v; want 0, %v", n, err, tt.want)
				}
				if bytes.Contains(buf, secret[:5]) {
					t.Error("plaintext of a failed record reached the caller's buffer")
				}
				// The Conn is dead for good, in both directions, and the
				// socket is closed.
				if _, err2 := sv.Read(buf); err2 != err {
					t.Errorf("second Read = %v, want the same %v", err2, err)
				}
				if _, err2 := sv.Write([]byte("x")); err2 != err {
					t.Errorf("Write after failure = %v, want %v", err2, err)
				}
				if _, err := fc.Conn.Read(buf); err == nil {
					t.Error("underlying conn still open")
				}
			})
		}
	}
}

func TestBadLengthHeader(t *testing.T) {
	_, b, wire := memPair(t, CipherChaChaPoly, 0)
	wire.buf.Write([]byte{recordTypeData, 0, 0, tagLen - 1})
	if _, err := b.Read(make([]byte, 10)); !errors.Is(err, ErrRecord) {
		t.Errorf("ciphertext shorter than the tag: %v, want ErrRecord", err)
	}
}

func TestReadDeadlineMidRecord(t *testing.T) {
	a, b, wire := memPair(t, CipherAESGCM, 0)
	msg := []byte("split across a timeout")
	if _, err := a.Write(msg); err != nil {
		t.Fatal(err)
	}
	whole := bytes.Clone(wire.buf.Bytes())
	for _, cut := range []int{2, recordHeaderLen + 5} {
		wire.buf.Reset()
		wire.buf.Write(whole[:cut])
		// memConn reports a timeout when empty, like an expired deadline.
		if _, err := b.Read(make([]byte, 100)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("cut at %d: %v, want a timeout", cut, err)
		}
		wire.buf.Write(whole[cut:])
		got := make([]byte, 100)
		n, err := b.Read(got)
		if err != nil || !bytes.Equal(got[:n], msg) {
			t.Fatalf("after timeout at %d: %q, %v", cut, got[:n], err)
		}
		if _, err := a.Write(msg); err != nil { // next record for the next cut
			t.Fatal(err)
		}
		whole = bytes.Clone(wire.buf.Bytes())
	}
}

func TestEOF(t *testing.T) {
	a, b, wire := memPair(t, CipherChaChaPoly, 0)
	wire.eof = true
	if _, err := b.Read(make([]byte, 10)); err != io.EOF {
		t.Errorf("clean EOF: %v, want io.EOF", err)
	}
	a.Write([]byte("truncated"))
	wire.buf.Truncate(wire.buf.Len() - 1)
	_, err := b.Read(make([]byte, 10))
	if !errors.Is(err, ErrRecord) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("EOF inside a record: %v, want ErrRecord and io.ErrUnexpectedEOF", err)
	}
}

func TestNonceExhaustion(t *testing.T) {
	a, _, _ := memPair(t, CipherChaChaPoly, 0)
	a.out.n = noise.MaxNonce
	if _, err := a.Write([]byte("x")); !errors.Is(err, ErrRecord) {
		t.Errorf("Write at MaxNonce: %v, want ErrRecord", err)
	}
	c, d, _ := memPair(t, CipherChaChaPoly, 0)
	d.in.n = noise.MaxNonce
	c.Write([]byte("x"))
	if _, err := d.Read(make([]byte, 1)); !errors.Is(err, ErrRecord) {
		t.Errorf("Read at MaxNonce: %v, want ErrRecord", err)
	}
}

func TestClose(t *testing.T) {
	for _, ct := range connTypes {
		t.Run(ct.name, func(t *testing.T) {
			testsupport.LeakCheck(t)
			cl, sv := mustPair(t, ct.pair, newTestPeers(CipherChaChaPoly))
			readErr := make(chan error, 1)
			go func() {
				_, err := sv.Read(make([]byte, 10))
				readErr <- err
			}()
			cl.Close()
			if err := <-readErr; err != io.EOF {
				t.Errorf("peer Read after Close = %v, want io.EOF", err)
			}
			if _, err := cl.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
				t.Errorf("Read after Close = %v", err)
			}
			if _, err := cl.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Errorf("Write after Close = %v", err)
			}
			if cl.LocalAddr() == nil || cl.RemoteAddr() == nil {
				t.Error("nil addresses")
			}
		})
	}
}

// TestConcurrentWriters checks that each Write's records stay contiguous
// while several goroutines write and the peer writes back at the same time.
func TestConcurrentWriters(t *testing.T) {
	for _, ct := range connTypes {
		t.Run(ct.name, func(t *testing.T) {
			testsupport.LeakCheck(t)
			cl, sv := mustPair(t, ct.pair, newTestPeers(CipherAESGCM))
			const writers, each, size = 4, 8, 3*MaxRecordPayload + 11
			var wg sync.WaitGroup
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					msg := bytes.Repeat([]byte{byte('a' + w)}, size)
					for range each {
						if _, err := cl.Write(msg); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			// Traffic the other way at the same time.
			wg.Add(2)
			go func() { defer wg.Done(); sv.Write(make([]byte, 1<<20)) }()
			go func() { defer wg.Done(); io.ReadFull(cl, make([]byte, 1<<20)) }()
			buf := make([]byte, size)
			for i := range writers * each {
				if _, err := io.ReadFull(sv, buf); err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				if bytes.Count(buf, buf[:1]) != size {
					t.Fatalf("message %d interleaved with another Write", i)
				}
			}
			wg.Wait()
		})
	}
}

func TestZeroAllocs(t *testing.T) {
	for _, c := range ciphers {
		for _, size := range []int{4096, 3*MaxRecordPayload + 5} {
			a, b, _ := memPair(t, c, 0)
			msg := make([]byte, size)
			small := make([]byte, 1000) // forces the pending-plaintext path
			big := make([]byte, size)
			run := func() {
				if _, err := a.Write(msg); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(b, big[:size/2]); err != nil {
					t.Fatal(err)
				}
				for left := size - size/2; left > 0; {
					n, err := b.Read(small[:min(len(small), left)])
					if err != nil {
						t.Fatal(err)
					}
					left -= n
				}
			}
			run() // grow buffers
			if allocs := testing.AllocsPerRun(50, run); allocs != 0 {
				t.Errorf("%v, %d-byte writes: %v allocations per round trip, want 0", c, size, allocs)
			}
		}
	}
}

// TestAppendRecords checks that records sealed ahead with AppendRecords and
// written with WriteRecords read back as the same byte stream, across
// rekeys and in record-size boundaries, and that a failed Conn refuses both.
func TestAppendRecords(t *testing.T) {
	for _, c := range ciphers {
		t.Run(c.String(), func(t *testing.T) {
			testsupport.LeakCheck(t)
			p := newTestPeers(c)
			p.ccfg.RekeyAfter, p.scfg.RekeyAfter = 5, 5
			cl, sv := mustPair(t, connTypes[1].pair, p)
			sizes := []int{1, 12, 4096, MaxRecordPayload, MaxRecordPayload + 1, 300000}
			var want []byte
			errc := make(chan error, 1)
			go func() {
				var buf []byte
				for i, n := range sizes {
					var err error
					if buf, err = cl.AppendRecords(buf, pattern(n, uint64(i))); err != nil {
						errc <- err
						return
					}
					if i%2 == 1 { // write every second size, so batches hold several
						if err := cl.WriteRecords(buf); err != nil {
							errc <- err
							return
						}
						buf = buf[:0]
					}
				}
				errc <- nil
			}()
			for i, n := range sizes {
				want = append(want, pattern(n, uint64(i))...)
			}
			got := make([]byte, len(want))
			if _, err := io.ReadFull(sv, got); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("data mismatch")
			}
			cl.Close()
			if _, err := cl.AppendRecords(nil, []byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Errorf("AppendRecords after Close: %v", err)
			}
			if err := cl.WriteRecords([]byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Errorf("WriteRecords after Close: %v", err)
			}
		})
	}
}

// Readable counts what Read returns without waiting: pending plaintext and
// whole records received, not a record that arrived in part, nor what is
// still in the socket.
func TestReadable(t *testing.T) {
	a, b, wire := memPair(t, CipherAESGCM, 0)
	for range 3 {
		if _, err := a.Write(pattern(1000, 1)); err != nil {
			t.Fatal(err)
		}
	}
	whole := bytes.Clone(wire.buf.Bytes())
	wire.buf.Reset()
	wire.buf.Write(whole[:len(whole)-1])
	if n := b.Readable(); n != 0 {
		t.Fatalf("before any read: Readable = %d, want 0", n)
	}
	if _, err := io.ReadFull(b, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if n := b.Readable(); n != 1999 {
		t.Fatalf("after 1 byte of 3 records, the last short of a byte: Readable = %d, want 1999", n)
	}
	wire.buf.Write(whole[len(whole)-1:])
	if n := b.Readable(); n != 1999 {
		t.Fatalf("the last byte still in the socket: Readable = %d, want 1999", n)
	}
	if _, err := io.ReadFull(b, make([]byte, 1999+1)); err != nil {
		t.Fatal(err)
	}
	if n := b.Readable(); n != 999 {
		t.Fatalf("after reading into the third record: Readable = %d, want 999", n)
	}
	if _, err := a.Write(pattern(70000, 2)); err != nil { // two records
		t.Fatal(err)
	}
	if _, err := io.ReadFull(b, make([]byte, 999+1)); err != nil {
		t.Fatal(err)
	}
	if n := b.Readable(); n != 69999 {
		t.Fatalf("after 1 byte of a 70000-byte write: Readable = %d, want 69999", n)
	}
}
