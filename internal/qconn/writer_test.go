package qconn

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/testsupport"
)

// pair returns the two ends of an encrypted channel over loopback TCP, so
// that a peer which stops reading fills real socket buffers.
func pair(t *testing.T) (client, server *crypto.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	if sc == nil {
		t.Fatal("accept failed")
	}
	ck, _ := crypto.GeneratePrivateKey()
	sk, _ := crypto.GeneratePrivateKey()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type res struct {
		c   *crypto.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := crypto.Server(ctx, sc, &crypto.ServerConfig{PrivateKey: sk,
			Authorize: func(crypto.PublicKey) error { return nil }, Replay: crypto.NewReplayFilter()})
		ch <- res{c, err}
	}()
	client, err = crypto.Client(ctx, cc, &crypto.ClientConfig{PrivateKey: ck, ServerKey: sk.Public()})
	r := <-ch
	if err != nil || r.err != nil {
		t.Fatalf("handshake: client %v, server %v", err, r.err)
	}
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c
}

// item is a test frame: a sender, a sequence number and a payload whose
// bytes derive from both.
type item struct {
	sender, seq uint32
	size        int
}

func (it item) payload() []byte {
	p := make([]byte, it.size)
	for i := range p {
		p[i] = byte(int(it.sender)*31 + int(it.seq)*7 + i)
	}
	return p
}

// encodeItem writes a 12-byte header (sender, seq, size) and the payload.
func encodeItem(b *Batch, it item) {
	h := b.Frame(12)
	binary.BigEndian.PutUint32(h[0:], it.sender)
	binary.BigEndian.PutUint32(h[4:], it.seq)
	binary.BigEndian.PutUint32(h[8:], uint32(it.size))
	b.Payload(it.payload())
}

// readItem reads one frame as encodeItem wrote it and checks its payload.
func readItem(r io.Reader) (item, error) {
	var h [12]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return item{}, err
	}
	it := item{binary.BigEndian.Uint32(h[0:]), binary.BigEndian.Uint32(h[4:]), int(binary.BigEndian.Uint32(h[8:]))}
	if it.size > 1<<20 {
		return it, errors.New("absurd size")
	}
	p := make([]byte, it.size)
	if _, err := io.ReadFull(r, p); err != nil {
		return it, err
	}
	if !bytes.Equal(p, it.payload()) {
		return it, errors.New("payload corrupted")
	}
	return it, nil
}

type counters struct {
	dropped atomic.Int64
	failed  atomic.Int64
}

// newWriter checks t for leaked goroutines and returns a writer on the
// client end of a fresh channel, both ends, and the writer's counters.
func newWriter(t *testing.T) (w *Writer[item], cc, sc *crypto.Conn, c *counters) {
	testsupport.LeakCheck(t)
	cc, sc = pair(t)
	c = new(counters)
	w = NewWriter(cc, encodeItem, func(item) { c.dropped.Add(1) }, func(error) { c.failed.Add(1) })
	return w, cc, sc, c
}

// TestWriterOrderAndGroupCommit: items sent from many goroutines in every
// mode all arrive, intact, each sender's in order; small and large
// payloads mixed (large ones get records of their own).
func TestWriterOrderAndGroupCommit(t *testing.T) {
	w, _, sc, c := newWriter(t)
	const senders, per = 6, 400
	sizes := []int{0, 1, 100, 511, 512, 4096, 70000}
	modes := []Mode{Block, NoBlock, Defer}

	got := make(chan error, 1)
	go func() {
		next := make([]uint32, senders)
		for n := 0; n < senders*per; n++ {
			it, err := readItem(sc)
			if err != nil {
				got <- err
				return
			}
			if it.sender >= senders || it.seq != next[it.sender] {
				got <- errors.New("out of order")
				return
			}
			next[it.sender]++
		}
		got <- nil
	}()
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				it := item{uint32(s), uint32(i), sizes[(s+i)%len(sizes)]}
				if i%10 == 9 {
					// Two at once, as a batch from the front end.
					w.SendAll([]item{it}, modes[s%len(modes)])
					continue
				}
				w.Send(it, modes[(s+i)%len(modes)])
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("not everything arrived")
	}
	w.Close()
	w.Wait()
	if c.dropped.Load() != 0 || c.failed.Load() != 0 {
		t.Fatalf("dropped %d, failed %d", c.dropped.Load(), c.failed.Load())
	}
}

// fill sends large items NoBlock until the peer, which does not read, has
// let the socket fill, and returns how many were sent. Each call must
// return at once: NoBlock never waits on the socket.
func fill(t *testing.T, w *Writer[item]) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		within(t, "a NoBlock send on a full socket", func() { w.Send(item{0, uint32(i), 64 << 10}, NoBlock) })
		w.mu.Lock()
		queued := len(w.queue)
		w.mu.Unlock()
		if queued > 0 {
			return i + 1 // the socket is full: the flusher holds the token
		}
		if time.Now().After(deadline) {
			t.Fatal("the socket never filled")
		}
	}
}

// within fails t if f does not return within a second. A send that should
// not wait but does is left blocked; the test ends anyway.
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatalf("%s waited", what)
	}
}

// TestWriterNoBlockAndDefer: with a peer that does not read, NoBlock and
// Defer senders never wait on the socket; once the peer reads, everything
// they queued arrives in order.
func TestWriterNoBlockAndDefer(t *testing.T) {
	w, _, sc, c := newWriter(t)
	n := fill(t, w)
	for i := range 50 {
		mode := Defer
		if i%2 == 0 {
			mode = NoBlock
		}
		within(t, "a NoBlock or Defer send on a full socket", func() { w.Send(item{0, uint32(n + i), 4096}, mode) })
	}
	for i := range n + 50 {
		it, err := readItem(sc)
		if err != nil {
			t.Fatalf("item %d: %v", i, err)
		}
		if it.seq != uint32(i) {
			t.Fatalf("item %d arrived as %d", i, it.seq)
		}
	}
	w.Close()
	w.Wait()
	if c.dropped.Load() != 0 || c.failed.Load() != 0 {
		t.Fatalf("dropped %d, failed %d", c.dropped.Load(), c.failed.Load())
	}
}

// TestWriterHoldAndClose: while a writer holds the token, sends only
// queue; Close drops what is queued, exactly once each, and later sends
// are dropped too.
func TestWriterHoldAndClose(t *testing.T) {
	w, _, sc, c := newWriter(t)
	release := w.Hold()
	for i := range 10 {
		w.Send(item{0, uint32(i), 100}, Block) // returns: the holder writes
	}
	w.SendAll([]item{{0, 10, 1}, {0, 11, 2}}, Block)
	sc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := readItem(sc); !errors.Is(err, sentinelTimeout(err)) {
		t.Fatalf("read while held: %v, want a timeout (nothing written)", err)
	}
	w.Close()
	if got := c.dropped.Load(); got != 12 {
		t.Fatalf("Close dropped %d items, want 12", got)
	}
	release() // the holder finds the writer closed and writes nothing
	w.Send(item{0, 12, 1}, Block)
	w.Wait()
	if got := c.dropped.Load(); got != 13 {
		t.Fatalf("dropped %d items after a send on a closed writer, want 13", got)
	}
	if c.failed.Load() != 0 {
		t.Fatal("fail called without a write error")
	}
}

// TestWriterGather: gathered items wait for Flush, then go out together in
// one record; an item gathered while another goroutine holds the token
// goes out with that holder's batch, Flush or not.
func TestWriterGather(t *testing.T) {
	w, _, sc, c := newWriter(t)
	const n, size = 20, 100
	for i := range n {
		within(t, "a Gather send", func() { w.Send(item{0, uint32(i), size}, Gather) })
	}
	w.mu.Lock()
	queued, busy := len(w.queue), w.busy
	w.mu.Unlock()
	if queued != n || busy {
		t.Fatalf("after %d gathered sends: %d queued, token taken %v; want all queued and no writer", n, queued, busy)
	}
	w.Flush(NoBlock)
	for i := range n {
		it, err := readItem(sc)
		if err != nil || it.seq != uint32(i) {
			t.Fatalf("item %d: got %d, %v", i, it.seq, err)
		}
		if i == 0 {
			if left, want := sc.Decrypted(), (n-1)*(12+size); left != want {
				t.Fatalf("after the first item, %d bytes of its record are left, want %d (one record for the burst)", left, want)
			}
		}
	}
	release := w.Hold()
	w.Send(item{0, n, size}, Gather)
	release()
	if it, err := readItem(sc); err != nil || it.seq != n {
		t.Fatalf("item gathered behind a holder: got %d, %v", it.seq, err)
	}
	w.Flush(NoBlock) // nothing queued: nothing to do
	w.Close()
	w.Wait()
	if c.dropped.Load() != 0 || c.failed.Load() != 0 {
		t.Fatalf("dropped %d, failed %d", c.dropped.Load(), c.failed.Load())
	}
}

// sentinelTimeout returns err if it is a timeout, so errors.Is matches
// only then.
func sentinelTimeout(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return errors.New("not a timeout")
}

// TestWriterFailure: a write error calls fail once, drops what is queued
// and what is sent afterwards, and leaves no goroutine behind.
func TestWriterFailure(t *testing.T) {
	w, cc, _, c := newWriter(t)
	cc.Close()
	for i := range 5 {
		w.Send(item{0, uint32(i), 4096}, Block)
	}
	w.Send(item{0, 5, 4096}, Defer)
	w.Wait()
	if got := c.failed.Load(); got != 1 {
		t.Fatalf("fail called %d times, want 1", got)
	}
	// The first item died with the write; the rest were dropped.
	if got := c.dropped.Load(); got != 5 {
		t.Fatalf("dropped %d items, want 5", got)
	}
}
