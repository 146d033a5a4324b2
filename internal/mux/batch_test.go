package mux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// recordConn records each Write it receives; it can be made to block or fail.
type recordConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
	gate   chan struct{} // if set, each Write waits for a token
	err    error
	closed bool
}

func (r *recordConn) Write(p []byte) (int, error) {
	if r.gate != nil {
		<-r.gate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	r.writes = append(r.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (r *recordConn) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	return nil
}

func (r *recordConn) snapshot() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.writes...)
}

func frame(typ byte, length uint32, body []byte) []byte {
	h := make([]byte, frameHeaderSize)
	h[frameType] = typ
	binary.BigEndian.PutUint32(h[frameLength:], length)
	return append(h, body...)
}

// frames returns sample frames of every kind.
func frames() [][]byte {
	body := bytes.Repeat([]byte{0xab}, 5000)
	return [][]byte{
		frame(typeData, uint32(len(body)), body), // data with body
		frame(1, 1<<20, nil),                     // window update: length is a delta
		frame(typeData, 0, nil),                  // SYN/FIN-only data frame
		frame(2, 7, nil),                         // ping
		frame(typeData, 3, []byte("xyz")),
	}
}

// wholeFrames checks that every write holds whole frames only.
func wholeFrames(t *testing.T, w []byte) int {
	t.Helper()
	n := 0
	for len(w) > 0 {
		if len(w) < frameHeaderSize {
			t.Fatalf("write ends inside a frame header")
		}
		l := 0
		if w[frameType] == typeData {
			l = int(binary.BigEndian.Uint32(w[frameLength:]))
		}
		if len(w) < frameHeaderSize+l {
			t.Fatalf("write ends inside a frame body")
		}
		w = w[frameHeaderSize+l:]
		n++
	}
	return n
}

// written returns what rc received, checking that each write held whole
// frames only.
func written(t *testing.T, rc *recordConn) []byte {
	t.Helper()
	var got []byte
	for _, w := range rc.snapshot() {
		wholeFrames(t, w)
		got = append(got, w...)
	}
	return got
}

func TestBatcherWholeFramesInOrder(t *testing.T) {
	for _, split := range []int{0, 1, 5, 12, 13, 100} {
		rc := &recordConn{}
		b := newBatcher(rc)
		var want []byte
		for _, f := range frames() {
			want = append(want, f...)
			parts := [][]byte{f}
			if split > 0 && split < len(f) {
				parts = [][]byte{f[:split], f[split:]}
			}
			for _, p := range parts {
				if n, err := b.Write(p); err != nil || n != len(p) {
					t.Fatalf("split %d: Write = %d, %v", split, n, err)
				}
			}
		}
		b.Close()
		var got []byte
		total := 0
		for _, w := range rc.snapshot() {
			total += wholeFrames(t, w)
			got = append(got, w...)
		}
		if !bytes.Equal(got, want) || total != len(frames()) {
			t.Fatalf("split %d: %d frames, bytes equal %v", split, total, bytes.Equal(got, want))
		}
	}
}

// TestBatcherBatches holds the flusher in a write and checks that frames
// written meanwhile go out together in the next write.
func TestBatcherBatches(t *testing.T) {
	rc := &recordConn{gate: make(chan struct{})}
	b := newBatcher(rc)
	f := frame(typeData, 3, []byte("abc"))
	b.Write(f) // the flusher takes it and blocks in Write
	time.Sleep(20 * time.Millisecond)
	for i := 0; i < 10; i++ {
		b.Write(f[:frameHeaderSize])
		b.Write(f[frameHeaderSize:])
	}
	rc.gate <- struct{}{}
	rc.gate <- struct{}{}
	deadline := time.Now().Add(5 * time.Second)
	for len(rc.snapshot()) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	w := rc.snapshot()
	if len(w) != 2 || wholeFrames(t, w[0]) != 1 || wholeFrames(t, w[1]) != 10 {
		t.Fatalf("writes: %d, want 2 (1 frame, then 10)", len(w))
	}
	close(rc.gate)
	b.Close()
}

func TestBatcherErrorSticks(t *testing.T) {
	boom := errors.New("boom")
	rc := &recordConn{err: boom}
	b := newBatcher(rc)
	f := frame(typeData, 1, []byte("x"))
	b.Write(f)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := b.Write(f); errors.Is(err, boom) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("write error never reached the writer")
		}
		time.Sleep(time.Millisecond)
	}
	b.Close()
	if !rc.closed {
		t.Fatal("Close did not close the channel")
	}
}

func TestBatcherBackpressure(t *testing.T) {
	rc := &recordConn{gate: make(chan struct{})}
	b := newBatcher(rc)
	big := frame(typeData, maxPending, make([]byte, maxPending))
	b.Write(big[:frameHeaderSize])
	b.Write(big[frameHeaderSize:]) // taken by the flusher, which blocks
	time.Sleep(20 * time.Millisecond)
	b.Write(big[:frameHeaderSize])
	b.Write(big[frameHeaderSize:]) // fills pending
	done := make(chan struct{})
	go func() {
		b.Write(frame(2, 0, nil)) // must wait for room
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("Write did not wait for room")
	case <-time.After(50 * time.Millisecond):
	}
	close(rc.gate)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Write never got room")
	}
	b.Close()
}

// TestBatcherLargeBodies sends bodies large enough to be sealed where they
// lie, whole and split over several Writes, between small frames, with the
// flusher both free and held in a write: the bytes arrive in order and every
// write holds whole frames.
func TestBatcherLargeBodies(t *testing.T) {
	big := func(n int, seed byte) []byte {
		b := bytes.Repeat([]byte{seed}, n)
		return frame(typeData, uint32(n), b)
	}
	for _, held := range []bool{false, true} {
		rc := &recordConn{}
		if held {
			rc.gate = make(chan struct{})
		}
		b := newBatcher(rc)
		var want []byte
		send := func(parts ...[]byte) {
			for _, p := range parts {
				want = append(want, p...)
				if n, err := b.Write(p); err != nil || n != len(p) {
					t.Fatalf("Write = %d, %v", n, err)
				}
				if !held {
					time.Sleep(2 * time.Millisecond) // let the flusher take what it may
				}
			}
		}
		small := frame(typeData, 3, []byte("abc"))
		f1 := big(directBody, 1)
		f2 := big(3*directBody+5, 2)
		f3 := big(2*directBody, 3)
		send(small[:frameHeaderSize], small[frameHeaderSize:])
		send(f1[:frameHeaderSize], f1[frameHeaderSize:])
		// Split: a direct part, a direct part, a small tail.
		send(f2[:frameHeaderSize], f2[frameHeaderSize:][:directBody], f2[frameHeaderSize:][directBody:2*directBody+frameHeaderSize],
			f2[2*directBody+2*frameHeaderSize:])
		// Header and the start of the body in one Write, then the rest.
		send(f3[:frameHeaderSize+10], f3[frameHeaderSize+10:])
		send(frame(2, 7, nil))
		if held {
			close(rc.gate)
		}
		b.Close()
		got := written(t, rc)
		if !bytes.Equal(got, want) {
			t.Fatalf("held %v: %d bytes out, want %d, equal %v", held, len(got), len(want), bytes.Equal(got, want))
		}
	}
}

// TestBatcherHugeFrameSplit writes a frame larger than maxPending in parts:
// nothing of it can go out until it is whole, so Write must not wait for
// room the flusher cannot make.
func TestBatcherHugeFrameSplit(t *testing.T) {
	rc := &recordConn{}
	b := newBatcher(rc)
	f := frame(typeData, maxPending+100, make([]byte, maxPending+100))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, p := range [][]byte{f[:frameHeaderSize], f[frameHeaderSize : frameHeaderSize+maxPending+50], f[frameHeaderSize+maxPending+50:]} {
			if _, err := b.Write(p); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Write waited for room that could never come")
	}
	b.Close()
	got := written(t, rc)
	if !bytes.Equal(got, f) {
		t.Fatalf("%d bytes out, want %d", len(got), len(f))
	}
}
