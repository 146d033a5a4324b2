package nbdclient_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/client/nbd/nbdtest"
	"github.com/dstproject/dst/internal/faultproxy"
	"github.com/dstproject/dst/internal/nbdclient"
	"github.com/dstproject/dst/internal/nbdclient/nbdfake"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/testsupport"
)

// serve runs dst's NBD front end over a MemDevice on a unix socket until
// stop is called or the test ends.
func serve(t *testing.T, size int) (sock string, dev *nbdtest.MemDevice, stop func()) {
	t.Helper()
	dev = nbdtest.NewMemDevice(size)
	e := &nbd.Export{
		Name: "mem", Size: uint64(size),
		Flush: true, FUA: true, Trim: true, WriteZeroes: true, MultiConn: true,
		Device: dev,
	}
	sock = filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := &nbd.Server{Exports: []*nbd.Export{e}, Logger: slog.New(slog.DiscardHandler)}
		s.Serve(ctx, l)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	return sock, dev, stop
}

func dial(t *testing.T, sock, export string) *nbdclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := nbdclient.Dial(ctx, "unix", sock, export)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRoundTrip(t *testing.T) {
	testsupport.LeakCheck(t)
	sock, dev, stop := serve(t, 1<<20)
	defer stop()
	c := dial(t, sock, "mem")
	if c.Size() != 1<<20 {
		t.Errorf("size %d", c.Size())
	}
	want := nbdwire.TransHasFlags | nbdwire.TransSendFlush | nbdwire.TransSendFUA | nbdwire.TransSendTrim
	if c.Flags()&want != want || c.Flags()&nbdwire.TransReadOnly != 0 {
		t.Errorf("flags %v", c.Flags())
	}
	data := bytes.Repeat([]byte("dst!"), 2048)
	if err := c.WriteAt(data, 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt(data[:512], 1<<19, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := c.ReadAt(got, 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, data))
	}
	if err := c.Trim(4096, 4096); err != nil {
		t.Fatal(err)
	}
	c.ReadAt(got, 4096)
	if !bytes.Equal(got[:4096], make([]byte, 4096)) || !bytes.Equal(got[4096:], data[4096:]) {
		t.Error("trim did not zero exactly its range")
	}
	if dev.Writes() != 2 || dev.FUAWrites() != 1 || dev.Flushes() != 1 || dev.Trims() != 1 {
		t.Errorf("device saw writes %d fua %d flushes %d trims %d", dev.Writes(), dev.FUAWrites(), dev.Flushes(), dev.Trims())
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if err := c.Flush(); !errors.Is(err, nbdclient.ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

// TestConcurrent keeps many requests in flight while the device completes
// them out of order.
func TestConcurrent(t *testing.T) {
	testsupport.LeakCheck(t)
	const workers, ops, block = 16, 40, 4096
	sock, dev, stop := serve(t, workers*ops*block)
	defer stop()
	dev.SetLatency(2 * time.Millisecond)
	c := dial(t, sock, "mem")
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ops {
				off := int64((w*ops + i) * block)
				p := bytes.Repeat([]byte{byte(w), byte(i)}, block/2)
				if err := c.WriteAt(p, off, i%5 == 0); err != nil {
					t.Error(err)
					return
				}
				got := make([]byte, block)
				if err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, p) {
					t.Errorf("worker %d op %d: %v, equal %v", w, i, err, bytes.Equal(got, p))
					return
				}
			}
		}()
	}
	wg.Wait()
	c.Close()
}

func TestErrnoReply(t *testing.T) {
	sock, dev, _ := serve(t, 1<<16)
	c := dial(t, sock, "mem")
	dev.InjectError(8192, 4096, nbdwire.ENOSPC)
	err := c.WriteAt(make([]byte, 4096), 8192, false)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write = %v, want ENOSPC", err)
	}
	if err := c.ReadAt(make([]byte, 100), 8190); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("read = %v, want ENOSPC", err)
	}
	// Out of range requests are refused by the server, not by the client.
	if err := c.ReadAt(make([]byte, 10), 1<<16); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("read past the end = %v, want EINVAL", err)
	}
	// An error reply leaves the connection up.
	dev.ClearErrors()
	if err := c.ReadAt(make([]byte, 4096), 8192); err != nil {
		t.Errorf("after error replies: %v", err)
	}
}

func TestUnknownExport(t *testing.T) {
	sock, _, _ := serve(t, 1<<16)
	_, err := nbdclient.Dial(context.Background(), "unix", sock, "nope")
	if err == nil || errors.Is(err, nbdclient.ErrProtocol) {
		t.Errorf("Dial(nope) = %v, want a refusal", err)
	}
}

func TestCloseFailsPending(t *testing.T) {
	testsupport.LeakCheck(t)
	sock, dev, stop := serve(t, 1<<16)
	defer stop()
	c := dial(t, sock, "mem")
	dev.Pause()
	defer dev.Resume()
	errc := make(chan error, 1)
	go func() { errc <- c.ReadAt(make([]byte, 512), 0) }()
	for dev.Held() == 0 {
		time.Sleep(time.Millisecond)
	}
	c.Close()
	if err := <-errc; !errors.Is(err, nbdclient.ErrClosed) {
		t.Errorf("pending read = %v, want ErrClosed", err)
	}
}

// TestServerGone checks that a lost connection fails pending and later
// requests with a connection error.
func TestServerGone(t *testing.T) {
	sock, dev, stop := serve(t, 1<<16)
	c := dial(t, sock, "mem")
	dev.Pause()
	errc := make(chan error, 1)
	go func() { errc <- c.Flush() }()
	for dev.Held() == 0 {
		time.Sleep(time.Millisecond)
	}
	// The server drains (bounded) on shutdown; resume so it can finish.
	go func() {
		time.Sleep(50 * time.Millisecond)
		dev.Resume()
	}()
	stop()
	<-errc // answered or failed, depending on the drain
	// The cause may be an errno (EPIPE, when the write fails first), but
	// the error must say the connection broke, not that the server replied.
	err := c.ReadAt(make([]byte, 512), 0)
	if !errors.Is(err, nbdclient.ErrConnection) && !errors.Is(err, nbdclient.ErrClosed) {
		t.Errorf("read after the server left = %v, want a connection error", err)
	}
}

func TestBadServer(t *testing.T) {
	for name, greeting := range map[string][]byte{
		"not nbd":       []byte("SSH-2.0-OpenSSH_9.6\r\n"),
		"oldstyle":      append([]byte("NBDMAGIC"), 0, 0, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53, 0, 0),
		"not fixed":     append([]byte("NBDMAGICIHAVEOPT"), 0, 0),
		"short":         []byte("NBDMAG"),
		"bad opt magic": append(append([]byte("NBDMAGICIHAVEOPT"), 0, 3), bytes.Repeat([]byte{0xee}, 20)...),
	} {
		t.Run(name, func(t *testing.T) {
			l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Write(greeting)
				c.Close()
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if c, err := nbdclient.Dial(ctx, "unix", l.Addr().String(), "x"); err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
		})
	}
}

func TestDialCancel(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			io.Copy(io.Discard, c) // never greets
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := nbdclient.Dial(ctx, "unix", l.Addr().String(), "x"); err == nil {
		t.Fatal("Dial to a silent server succeeded")
	}
}

// requireTool fails (CI=true) or skips (otherwise) unless name is on PATH,
// like tests/harness_test.go.
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("required tool %s missing with CI=true", name)
	}
	t.Skipf("skipping, missing tool %s (with CI=true this fails)", name)
}

func TestNbdkit(t *testing.T) {
	requireTool(t, "nbdkit")
	sock := filepath.Join(t.TempDir(), "nbdkit.sock")
	cmd := exec.Command("nbdkit", "-f", "-U", sock, "memory", "64M")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	var c *nbdclient.Client
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		c, err = nbdclient.Dial(context.Background(), "unix", sock, "")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdkit did not come up: %v\n%s", err, stderr.String())
		}
	}
	defer c.Close()
	if c.Size() != 64<<20 {
		t.Errorf("size %d", c.Size())
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte(fmt.Sprint(i)), 65536)
			off := int64(i) << 20
			if err := c.WriteAt(p, off, i%2 == 0); err != nil {
				t.Error(err)
				return
			}
			got := make([]byte, len(p))
			if err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, p) {
				t.Errorf("%d: %v, equal %v", i, err, bytes.Equal(got, p))
			}
		}()
	}
	wg.Wait()
	if err := c.Flush(); err != nil {
		t.Error(err)
	}
	if err := c.Trim(0, 1<<20); err != nil {
		t.Error(err)
	}
	got := make([]byte, 4096)
	if err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
		t.Errorf("after trim: %v", err)
	}
	// Reading past the end is refused with an errno.
	if err := c.ReadAt(got, 64<<20); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("read past end = %v, want EINVAL", err)
	}
}

// TestCloseWhileStalled checks that Close returns, and fails the request,
// when a write is stuck because the network stopped carrying bytes.
func TestCloseWhileStalled(t *testing.T) {
	dev := nbdtest.NewMemDevice(32 << 20)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e := &nbd.Export{Name: "mem", Size: 32 << 20, Flush: true, Device: dev}
		(&nbd.Server{Exports: []*nbd.Export{e}, Logger: slog.New(slog.DiscardHandler)}).Serve(ctx, l)
	}()
	defer func() { cancel(); <-done }()
	p, err := faultproxy.New(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := nbdclient.Dial(context.Background(), "tcp", p.Addr(), "mem")
	if err != nil {
		t.Fatal(err)
	}
	p.Stall(faultproxy.ClientToServer)
	errc := make(chan error, 1)
	go func() { errc <- c.WriteAt(make([]byte, 16<<20), 0, false) }()
	time.Sleep(50 * time.Millisecond)
	t0 := time.Now()
	c.Close()
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := <-errc; err == nil {
		t.Error("a write that never left succeeded")
	}
}

// TestFailWhileWriting: when the connection ends while a request waits to
// be written behind another, that request is not completed (and its Call
// handed back to be reused) while its writer still reads it. The server
// stops reading after its first request, so a large WRITE fills the
// socket and holds the write side; a small READ queues behind it; then
// the server hangs up. The READ's Done zeroes its Call, as a pool's put
// does: run with -race, the old order also shows as a data race.
func TestFailWhileWriting(t *testing.T) {
	stall := make(chan struct{})
	sock := fakeServer(t, func(c net.Conn, r nbdwire.Request) {
		<-stall
		c.Close()
	})
	c, err := nbdclient.Dial(t.Context(), "unix", sock, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The first request reaches the server, which stops reading.
	first := make(chan error, 1)
	go func() { first <- c.Flush() }()
	// This WRITE fills the socket's buffers and blocks its writer.
	big := make(chan error, 1)
	go func() { big <- c.WriteAt(make([]byte, nbdfake.Size), 0, false) }()
	time.Sleep(100 * time.Millisecond)

	var returned, early atomic.Bool
	doneCalled := make(chan struct{})
	cl := &nbdclient.Call{Cmd: nbdwire.CmdRead, Length: 4096, Data: make([]byte, 4096)}
	cl.Done = func(x *nbdclient.Call) {
		if !returned.Load() {
			early.Store(true)
		}
		*x = nbdclient.Call{}
		close(doneCalled)
	}
	goErr := make(chan error, 1)
	go func() {
		err := c.Go(cl)
		returned.Store(true)
		goErr <- err
	}()
	time.Sleep(100 * time.Millisecond)
	close(stall)

	if err := <-first; err == nil {
		t.Error("the FLUSH the server never answered succeeded")
	}
	if err := <-big; err == nil {
		t.Error("the WRITE the server never read succeeded")
	}
	if err := <-goErr; err == nil {
		// Go took the call: its Done must come, and only after Go was
		// done writing it.
		select {
		case <-doneCalled:
		case <-time.After(5 * time.Second):
			t.Fatal("the queued READ never completed")
		}
	}
	if early.Load() {
		t.Error("the queued READ was completed while Go was still writing it")
	}
}
