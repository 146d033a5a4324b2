package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/nbdclient"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/server"
)

// chain starts an end and a relay in front of it, and returns the relay's
// socket.
func chain(t *testing.T, size uint64) string {
	return chainWith(t, func(el net.Listener) { serveEnd(el, size) }, relayFrom)
}

// chainWith starts end on a TCP listener and relay on a unix socket in
// front of it, and returns the relay's socket.
func chainWith(t *testing.T, end func(net.Listener), relay func(net.Listener, string) error) string {
	t.Helper()
	el, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "floor.sock")
	rl, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { el.Close(); rl.Close() })
	go end(el)
	go relay(rl, el.Addr().String())
	return path
}

// dialChain connects a client to the relay at path and checks that it
// offers an export of size bytes. The client is closed when the test ends,
// or after 10 s, so that a request which gets no reply fails the test
// instead of hanging it.
func dialChain(t *testing.T, path string, size uint64) *nbdclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := nbdclient.Dial(ctx, "unix", path, "")
	if err != nil {
		t.Fatal(err)
	}
	watchdog := time.AfterFunc(10*time.Second, func() { c.Close() })
	t.Cleanup(func() { watchdog.Stop(); c.Close() })
	if c.Size() != size {
		t.Errorf("size %d, want %d", c.Size(), size)
	}
	return c
}

// TestChain: a client through the relay finds the export the end offers,
// and every kind of request the bench makes, alone and many in flight,
// gets a successful reply with the data it promises.
func TestChain(t *testing.T) {
	const size = 64 << 20
	c := dialChain(t, chain(t, size), size)
	for _, f := range []nbdwire.TransFlags{nbdwire.TransSendFlush, nbdwire.TransSendFUA, nbdwire.TransCanMultiConn} {
		if c.Flags()&f == 0 {
			t.Errorf("flags %#x lack %#x", c.Flags(), f)
		}
	}
	buf := make([]byte, 256<<10)
	if err := c.WriteAt(buf, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	if err := c.ReadAt(buf, size-int64(len(buf))); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	// 64 requests in flight, so that the end gets them in bursts.
	calls := make([]*nbdclient.Call, 64)
	for i := range calls {
		cmd := nbdwire.CmdRead
		if i%2 == 1 {
			cmd = nbdwire.CmdWrite
		}
		calls[i] = &nbdclient.Call{Cmd: cmd, Offset: uint64(i) << 12, Length: 4096, Data: make([]byte, 4096)}
	}
	inFlight(t, c, calls, nil)
}

// inFlight sends calls all at once, waits for every reply and fails the
// test for each call that failed or that check, if not nil, rejects.
func inFlight(t *testing.T, c *nbdclient.Client, calls []*nbdclient.Call, check func(*nbdclient.Call) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(calls))
	for _, cl := range calls {
		wg.Add(1)
		cl.Done = func(cl *nbdclient.Call) {
			if cl.Err == nil && check != nil {
				cl.Err = check(cl)
			}
			errs <- cl.Err
			wg.Done()
		}
		if err := c.Go(cl); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// TestRelayWithoutEnd: a client of a relay whose end is gone is
// disconnected, and the relay goes on serving others.
func TestRelayWithoutEnd(t *testing.T) {
	el, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := el.Addr().String()
	el.Close()
	path := filepath.Join(t.TempDir(), "floor.sock")
	rl, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer rl.Close()
	go relayFrom(rl, addr)
	for range 2 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
			t.Errorf("read %d bytes, err %v; want the connection closed", n, err)
		}
		c.Close()
	}
}

// TestBadUsage: a wrong role, size or argument count is refused with a
// message naming it.
func TestBadUsage(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "nbdfloor")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	k, err := crypto.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "key")
	if err := crypto.WritePrivateKey(key, k); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"middle", "a", "b"}, "unknown role"},
		{[]string{"end", "127.0.0.1:0", "lots"}, "SIZE"},
		{[]string{"end", "127.0.0.1:0", "0"}, "SIZE"},
		{[]string{"relay"}, "usage"},
		{[]string{"-work"}, "usage"},
		{[]string{"-work", "/nonexistent/key", "relay", "a", "b"}, "/nonexistent/key"},
		{[]string{"-work", key, "-without", "channel,cipher", "relay", "a", "b"}, `unknown part "cipher"`},
		{[]string{"-work", key, "-retain", "0", "relay", "a", "b"}, "-retain"},
		{[]string{"-work", key, "-without", "file", "-retain", "lots", "relay", "a", "b"}, "-retain"},
	} {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("nbdfloor %q: err %v, output %q; want an error saying %q", c.args, err, out, c.want)
		}
	}
}

// TestWorkChain: through the work pair, what a client writes it reads
// back, the file holds it, and a FUA write and a flush succeed, alone and
// 64 at a time: the floor does the work it claims to. Without its channel
// the end speaks plain NBD over TCP; without its file, the file is never
// touched.
func TestWorkChain(t *testing.T) {
	key, err := crypto.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, without := range []string{"", "checksum", "channel", "channel,checksum", "file"} {
		t.Run("without="+without, func(t *testing.T) {
			w := fullWork(key)
			if without != "" {
				if err := w.leaveOut(without); err != nil {
					t.Fatal(err)
				}
			}
			// What the pair must show follows from the parts named, not
			// from w, so that a part leaveOut fails to turn off is caught.
			testWorkChain(t, w, !strings.Contains(without, "channel"), !strings.Contains(without, "file"))
		})
	}
	// A ring of 1 MiB is four buffers, each written again while the
	// chain moves 16 MiB: nothing in it may be sent twice or overwritten
	// before it is sent.
	t.Run("retain=1", func(t *testing.T) {
		w := fullWork(key)
		if err := w.setRetain("1"); err != nil {
			t.Fatal(err)
		}
		testWorkChain(t, w, true, true)
	})
	if err := fullWork(key).leaveOut("channel,cipher"); err == nil || !strings.Contains(err.Error(), `"cipher"`) {
		t.Errorf("-without channel,cipher: error %v, want one naming \"cipher\"", err)
	}
}

func testWorkChain(t *testing.T, w *work, channel, file bool) {
	const size = 16 << 20
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	f, err := server.OpenFile(img, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	endAddr := make(chan string, 1)
	path := chainWith(t, func(el net.Listener) { endAddr <- el.Addr().String(); serveWorkEnd(el, f, size, w) },
		func(rl net.Listener, addr string) error { return workRelayFrom(rl, addr, w) })
	c := dialChain(t, path, size)

	want := make([]byte, 256<<10)
	for i := range want {
		want[i] = byte(i*7 + 1)
	}
	if err := c.WriteAt(want, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if err := c.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	onDisk := make([]byte, len(want))
	if _, err := f.ReadAt(onDisk, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !file {
		if !bytes.Equal(onDisk, make([]byte, len(want))) {
			t.Error("the file was written, without file")
		}
	} else {
		if !bytes.Equal(got, want) {
			t.Error("read back differs from what was written")
		}
		if !bytes.Equal(onDisk, want) {
			t.Error("the file does not hold what was written")
		}
	}

	// 64 requests in flight: odd ones write their block, even ones read
	// the block written above.
	calls := make([]*nbdclient.Call, 64)
	for i := range calls {
		cl := &nbdclient.Call{Cmd: nbdwire.CmdRead, Offset: 1 << 20, Length: 4096, Data: make([]byte, 4096)}
		if i%2 == 1 {
			cl.Cmd, cl.Offset = nbdwire.CmdWrite, uint64(4<<20+i<<12)
			for j := range cl.Data {
				cl.Data[j] = byte(i)
			}
		}
		calls[i] = cl
	}
	inFlight(t, c, calls, func(cl *nbdclient.Call) error {
		if file && cl.Cmd == nbdwire.CmdRead && !bytes.Equal(cl.Data, want[:4096]) {
			return fmt.Errorf("read at %d got other data", cl.Offset)
		}
		return nil
	})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	blk := make([]byte, 4096)
	if _, err := f.ReadAt(blk, 4<<20+63<<12); err != nil {
		t.Fatal(err)
	}
	wantByte := byte(0) // without the file, the write never reached it
	if file {
		wantByte = 63
	}
	if blk[0] != wantByte || blk[4095] != wantByte {
		t.Errorf("block 63 on disk starts %d, ends %d; want %d", blk[0], blk[4095], wantByte)
	}

	// Without the channel the end greets a TCP client in plain NBD at
	// once; with it, the end waits for the client's handshake and says
	// nothing.
	raw, err := net.Dial("tcp", <-endAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	wait := 5 * time.Second
	if channel {
		wait = 200 * time.Millisecond
	}
	raw.SetReadDeadline(time.Now().Add(wait))
	greeting := make([]byte, 8)
	n, err := io.ReadFull(raw, greeting)
	if channel && n > 0 {
		t.Errorf("the end sent %q before any handshake", greeting[:n])
	}
	if !channel && (err != nil || string(greeting) != "NBDMAGIC") {
		t.Errorf("without channel, the end greeted with %q (%v), want NBDMAGIC", greeting[:n], err)
	}
}
