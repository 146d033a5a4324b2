package nbdclient_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/nbdclient"
	"github.com/dstproject/dst/internal/nbdclient/nbdfake"
	"github.com/dstproject/dst/internal/nbdwire"
)

// fakeServer is an nbdfake server answering with answer.
func fakeServer(t *testing.T, answer nbdfake.Answer) string { return nbdfake.Listen(t, answer) }

func chunk(flags nbdwire.ChunkFlags, typ nbdwire.ChunkType, cookie uint64, payload []byte) []byte {
	b := nbdwire.Chunk{Flags: flags, Type: typ, Cookie: cookie, Length: uint32(len(payload))}.Append(nil)
	return append(b, payload...)
}

func offsetData(off uint64, data []byte) []byte {
	return append(binary.BigEndian.AppendUint64(nil, off), data...)
}

func hole(off uint64, n uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, off), n)
}

// TestStructuredRead reads a block the server answers in three chunks,
// out of order: data, a hole, data.
func TestStructuredRead(t *testing.T) {
	sock := fakeServer(t, func(c net.Conn, r nbdwire.Request) {
		var b []byte
		b = append(b, chunk(0, nbdwire.ChunkOffsetData, r.Cookie, offsetData(r.Offset+3072, bytes.Repeat([]byte{'c'}, 1024)))...)
		b = append(b, chunk(0, nbdwire.ChunkOffsetHole, r.Cookie, hole(r.Offset+1024, 2048))...)
		b = append(b, chunk(nbdwire.ChunkDone, nbdwire.ChunkOffsetData, r.Cookie, offsetData(r.Offset, bytes.Repeat([]byte{'a'}, 1024)))...)
		c.Write(b)
	})
	c := dial(t, sock, "x")
	if e := c.Export(); !e.Structured || e.MinBlock != 512 || e.PreferredBlock != 4096 || e.MaxBlock != 1<<20 {
		t.Fatalf("export %+v", e)
	}
	got := bytes.Repeat([]byte{0xff}, 4096)
	if err := c.ReadAt(got, 8192); err != nil {
		t.Fatal(err)
	}
	want := append(append(bytes.Repeat([]byte{'a'}, 1024), make([]byte, 2048)...), bytes.Repeat([]byte{'c'}, 1024)...)
	if !bytes.Equal(got, want) {
		t.Fatalf("read %q...", got[:16])
	}
}

// TestStructuredError checks that an error chunk's errno and message reach
// the caller and the connection lives on.
func TestStructuredError(t *testing.T) {
	n := 0
	sock := fakeServer(t, func(c net.Conn, r nbdwire.Request) {
		n++
		if n == 1 {
			msg := nbdwire.AppendChunkErr(nil, nbdwire.ChunkErrorOffset, nbdwire.ChunkErr{Errno: nbdwire.EIO, Message: "bad sector", Offset: r.Offset})
			c.Write(chunk(nbdwire.ChunkDone, nbdwire.ChunkErrorOffset, r.Cookie, msg))
			return
		}
		c.Write(nbdwire.SimpleReply{Cookie: r.Cookie}.Append(nil))
	})
	c := dial(t, sock, "x")
	err := c.ReadAt(make([]byte, 512), 0)
	var re *nbdclient.ReplyError
	if !errors.Is(err, syscall.EIO) || !errors.As(err, &re) || re.Message != "bad sector" {
		t.Fatalf("read = %v, want EIO with the message", err)
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("flush after an error reply: %v", err)
	}
}

// TestBadReplies checks that each reply breaking the protocol ends the
// connection with ErrProtocol, and fails the request, rather than being
// trusted or panicking.
func TestBadReplies(t *testing.T) {
	for name, bad := range map[string]func(r nbdwire.Request) []byte{
		"garbage": func(nbdwire.Request) []byte { return bytes.Repeat([]byte{0xee}, 64) },
		"unknown handle": func(r nbdwire.Request) []byte {
			return nbdwire.SimpleReply{Cookie: r.Cookie + 100}.Append(nil)
		},
		"oversized data chunk": func(r nbdwire.Request) []byte {
			return chunk(nbdwire.ChunkDone, nbdwire.ChunkOffsetData, r.Cookie, offsetData(r.Offset, make([]byte, r.Length+512)))
		},
		"data outside the request": func(r nbdwire.Request) []byte {
			return chunk(nbdwire.ChunkDone, nbdwire.ChunkOffsetData, r.Cookie, offsetData(r.Offset+512, make([]byte, r.Length)))
		},
		"overlapping chunks": func(r nbdwire.Request) []byte {
			a := chunk(0, nbdwire.ChunkOffsetData, r.Cookie, offsetData(r.Offset, make([]byte, 512)))
			return append(a, chunk(nbdwire.ChunkDone, nbdwire.ChunkOffsetData, r.Cookie, offsetData(r.Offset, make([]byte, 512)))...)
		},
		"short of the request": func(r nbdwire.Request) []byte {
			return chunk(nbdwire.ChunkDone, nbdwire.ChunkOffsetData, r.Cookie, offsetData(r.Offset, make([]byte, 512)))
		},
		"huge error chunk": func(r nbdwire.Request) []byte {
			return nbdwire.Chunk{Flags: nbdwire.ChunkDone, Type: nbdwire.ChunkError, Cookie: r.Cookie, Length: 1 << 30}.Append(nil)
		},
		"hole of the wrong size": func(r nbdwire.Request) []byte {
			return chunk(nbdwire.ChunkDone, nbdwire.ChunkOffsetHole, r.Cookie, append(hole(r.Offset, r.Length), 0))
		},
	} {
		t.Run(name, func(t *testing.T) {
			sock := fakeServer(t, func(c net.Conn, r nbdwire.Request) { c.Write(bad(r)) })
			c := dial(t, sock, "x")
			done := make(chan error, 1)
			go func() { done <- c.ReadAt(make([]byte, 1024), 4096) }()
			select {
			case err := <-done:
				if !errors.Is(err, nbdclient.ErrProtocol) {
					t.Fatalf("read = %v, want a protocol error", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("read still waiting after 5 s")
			}
			if err := c.Err(); !errors.Is(err, nbdclient.ErrProtocol) {
				t.Fatalf("connection error %v, want a protocol error", err)
			}
		})
	}
}

// TestGoWaitMixed runs GoWait and Go callers at once on one connection:
// the reader role passes between them and the background reader, and
// every call completes exactly once with its own data.
func TestGoWaitMixed(t *testing.T) {
	sock, _, _ := serve(t, 1<<20)
	c := dial(t, sock, "mem")
	for i := range 256 {
		if err := c.WriteAt(bytes.Repeat([]byte{byte(i)}, 4096), int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 300 {
				i := (g*300 + k) % 256
				done := make(chan struct{})
				var calls atomic.Int32
				cl := &nbdclient.Call{Cmd: nbdwire.CmdRead, Offset: uint64(i) * 4096, Length: 4096, Data: make([]byte, 4096),
					Done: func(*nbdclient.Call) {
						if calls.Add(1) == 1 {
							close(done)
						}
					}}
				goCall := c.Go
				if (g+k)%2 == 0 {
					goCall = c.GoWait
				}
				if err := goCall(cl); err != nil {
					t.Error(err)
					return
				}
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					t.Errorf("call %d of goroutine %d never completed", k, g)
					return
				}
				if calls.Load() != 1 || cl.Err != nil || !bytes.Equal(cl.Data, bytes.Repeat([]byte{byte(i)}, 4096)) {
					t.Errorf("block %d: %d completions, err %v", i, calls.Load(), cl.Err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestDrainAfterBurst: replies that arrive together are all completed
// before the reader drains, and it drains once they are: OnDrain never
// sees part of a burst, and sees all of it before the reader sleeps.
func TestDrainAfterBurst(t *testing.T) {
	const n = 32
	var held []byte
	sock := fakeServer(t, func(c net.Conn, r nbdwire.Request) {
		held = nbdwire.SimpleReply{Cookie: r.Cookie}.Append(held)
		if len(held) == n*nbdwire.SimpleReplySize {
			c.Write(held) // the burst, in one write
			held = held[:0]
		}
	})
	c, err := nbdclient.Dial(t.Context(), "unix", sock, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var dones atomic.Int32
	var mu sync.Mutex
	var seen []int32 // completions counted at each drain
	c.OnDrain(func() {
		mu.Lock()
		seen = append(seen, dones.Load())
		mu.Unlock()
	})
	all := make(chan struct{})
	for round := range 3 {
		for range n {
			cl := &nbdclient.Call{Cmd: nbdwire.CmdFlush, Done: func(cl *nbdclient.Call) {
				if cl.Err != nil {
					t.Error(cl.Err)
				}
				if dones.Add(1)%n == 0 {
					all <- struct{}{}
				}
			}}
			if err := c.Queue(cl); err != nil {
				t.Fatal(err)
			}
		}
		c.Push()
		select {
		case <-all:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: %d of %d calls completed", round, dones.Load()-int32(round*n), n)
		}
		// The drain after the last completion comes before the reader
		// sleeps; wait for it.
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			last := int32(-1)
			if len(seen) > 0 {
				last = seen[len(seen)-1]
			}
			mu.Unlock()
			if last == int32((round+1)*n) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: no drain after the burst's completions", round)
			}
			time.Sleep(time.Millisecond)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, k := range seen {
		if k%n != 0 {
			t.Fatalf("drains saw %v completions: one saw part of a burst", seen)
		}
	}
}
