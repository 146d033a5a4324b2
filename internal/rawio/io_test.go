package rawio

import (
	"bytes"
	"io"
	"testing"
)

// TestNoAllocations: Read, Write and Writev allocate nothing. They used to
// hand the runtime's poller a closure per call, which escaped with what it
// shared with its caller: three allocations per call, on every request's
// path in attach and serve.
func TestNoAllocations(t *testing.T) {
	a, peer := socketPair(t)
	b := Wrap(peer).(*Conn)
	out, in := []byte("0123456789abcdef"), make([]byte, 16)
	bufs := make([][]byte, 0, 2)
	for name, f := range map[string]func(){
		"Write+Read": func() {
			if _, err := a.Write(out); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(b, in); err != nil {
				t.Fatal(err)
			}
		},
		"Writev+Read": func() {
			bufs = append(bufs[:0], out[:6], out[6:])
			if _, err := a.Writev(bufs); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(b, in); err != nil {
				t.Fatal(err)
			}
		},
	} {
		if n := testing.AllocsPerRun(200, f); n != 0 {
			t.Errorf("%s: %.1f allocations per call, want 0", name, n)
		}
	}
}

// TestWritevWholeAndInOrder: Writev writes buffers past the socket's room
// and past the system's bound on buffers per call, skipping empty ones,
// while the other end reads slowly; every byte arrives once, in order.
func TestWritevWholeAndInOrder(t *testing.T) {
	a, b := socketPair(t)
	var bufs [][]byte
	var want bytes.Buffer
	for i := range 3000 { // more than maxIovecs
		p := bytes.Repeat([]byte{byte(i)}, (i*37)%4001) // some empty
		bufs = append(bufs, p)
		want.Write(p)
	}
	got := make(chan []byte)
	go func() {
		var buf bytes.Buffer
		p := make([]byte, 1000) // small reads: the writer waits for room often
		for buf.Len() < want.Len() {
			n, err := b.Read(p)
			if err != nil {
				break
			}
			buf.Write(p[:n])
		}
		got <- buf.Bytes()
	}()
	n, err := a.Writev(bufs)
	if err != nil || n != int64(want.Len()) {
		t.Fatalf("Writev: %d bytes, %v; want %d", n, err, want.Len())
	}
	if g := <-got; !bytes.Equal(g, want.Bytes()) {
		t.Fatalf("read %d bytes, not the %d written, in order", len(g), want.Len())
	}
}

// TestTryWriteStopsWhenFull: TryWrite writes what the socket takes and
// returns; Write after it waits for room and writes the rest.
func TestTryWriteStopsWhenFull(t *testing.T) {
	a, b := socketPair(t)
	p := bytes.Repeat([]byte("x"), 64<<20)
	n, err := a.TryWrite(p)
	if err != nil || n <= 0 || n >= len(p) {
		t.Fatalf("TryWrite of 64 MiB wrote %d, %v; want part of it", n, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := a.Write(p[n:])
		done <- err
	}()
	if m, err := io.Copy(io.Discard, io.LimitReader(b, int64(len(p)))); err != nil || m != int64(len(p)) {
		t.Fatalf("read %d of %d bytes: %v", m, len(p), err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
