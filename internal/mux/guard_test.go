package mux

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/testsupport"
)

// frame encodes a yamux frame header.
func frame(typ byte, flags uint16, stream, length uint32) []byte {
	b := make([]byte, frameHeaderSize)
	b[1] = typ
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint32(b[4:], stream)
	binary.BigEndian.PutUint32(b[8:], length)
	return b
}

// TestPingFlood: a peer that sends pings without reading the answers loses
// its session at once, instead of making the server start a goroutine per
// ping that waits on the blocked connection.
func TestPingFlood(t *testing.T) {
	srv, peer := net.Pipe()
	defer peer.Close()
	s, err := Server(srv, &Options{Logger: testsupport.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before := runtime.NumGoroutine()
	var buf bytes.Buffer
	for i := range 5000 {
		buf.Write(frame(framePing, flagSYN, 0, uint32(i)))
	}
	go io.Copy(peer, &buf) // never reads: the answers have nowhere to go
	select {
	case <-s.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatalf("the session survived a ping flood; %d goroutines (was %d)", runtime.NumGoroutine(), before)
	}
	if n := runtime.NumGoroutine(); n > before+pingBurst+20 {
		t.Errorf("%d goroutines after the flood, %d before", n, before)
	}
}

// TestStreamFlood: a peer opening streams faster than the bound loses its
// session.
func TestStreamFlood(t *testing.T) {
	srv, peer := net.Pipe()
	defer peer.Close()
	go io.Copy(io.Discard, peer)
	s, err := Server(srv, &Options{Logger: testsupport.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go func() {
		for id := uint32(1); id < 10000; id += 2 {
			if _, err := peer.Write(frame(frameWindow, flagSYN, id, 0)); err != nil {
				return
			}
		}
	}()
	select {
	case <-s.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("the session survived a stream-open flood")
	}
}

// TestGuardPassesTraffic: streams carrying payloads of every size,
// including bytes that look like ping headers, pass the guard intact and
// the session stays up.
func TestGuardPassesTraffic(t *testing.T) {
	a, b := net.Pipe()
	srv, err := Server(a, &Options{Logger: testsupport.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := Client(b, &Options{Logger: testsupport.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	go func() {
		for {
			st, err := srv.AcceptStream()
			if err != nil {
				return
			}
			go func() { io.Copy(st, st); st.Close() }()
		}
	}()
	evil := bytes.Repeat(frame(framePing, flagSYN, 0, 7), 1000)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			st, err := cli.OpenStream()
			if err != nil {
				t.Error(err)
				return
			}
			defer st.Close()
			r := rand.New(rand.NewPCG(uint64(i), 1))
			for range 20 {
				msg := evil[:r.IntN(len(evil))+1]
				if r.IntN(2) == 0 {
					msg = make([]byte, r.IntN(300<<10)+1)
					for j := range msg {
						msg[j] = byte(r.Uint32())
					}
				}
				go st.Write(msg)
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(st, got); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, msg) {
					t.Error("echoed bytes differ")
					return
				}
			}
		})
	}
	wg.Wait()
	if srv.IsClosed() {
		t.Fatal("the guard ended a well-behaved session")
	}
	if _, err := cli.Ping(); err != nil {
		t.Fatalf("ping after the traffic: %v", err)
	}
}

func TestBucket(t *testing.T) {
	now := time.Now()
	b := bucket{tokens: 2, burst: 2, rate: 1, last: now}
	for i, step := range []struct {
		after time.Duration
		want  bool
	}{
		{0, true}, {0, true}, {0, false}, // a burst of 2
		{time.Second, true}, {time.Second, false}, // one token a second
		{time.Hour, true}, {time.Hour, true}, {time.Hour, false}, // refills up to the burst only
	} {
		if got := b.take(now.Add(step.after)); got != step.want {
			t.Fatalf("take %d at +%v = %v, want %v", i, step.after, got, step.want)
		}
	}
}
