package client

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/server/servertest"
	"github.com/dstproject/dst/wire"
)

// testEnv is a server with exports on temp files and the keys to reach it.
type testEnv struct {
	dir       string
	srv       *server.Server
	addr      string
	serverKey crypto.PublicKey
	server    crypto.PrivateKey // the server's own, for a proxy that stands in for it
	client    crypto.PrivateKey
	dial      func(ctx context.Context, addr string) (net.Conn, error)
	log       *slog.Logger // the test's
}

func mustKey(t testing.TB) crypto.PrivateKey {
	t.Helper()
	k, err := crypto.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newEnv starts a server over transport ("tcp" or "pipe") exporting
// "disk" (size bytes, read-write) and "ro" (read-only).
func newEnv(t *testing.T, transport string, size int64) *testEnv { return newEnvTB(t, transport, size) }

func newEnvTB(t testing.TB, transport string, size int64) *testEnv {
	t.Helper()
	return newEnvLog(t, transport, size, testsupport.Logger(t))
}

// newEnvLog is newEnvTB with the server's and the clients' logger.
func newEnvLog(t testing.TB, transport string, size int64, log *slog.Logger) *testEnv {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"disk", "ro"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, name), size); err != nil {
			t.Fatal(err)
		}
	}
	sk, ck := mustKey(t), mustKey(t)
	auth, err := crypto.ParseAuthorizedKeys(strings.NewReader(ck.Public().String()+" test\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(&server.Config{
		PrivateKey: sk,
		Authorized: auth,
		Exports: []server.ExportConfig{
			{Name: "disk", Path: filepath.Join(dir, "disk")},
			{Name: "ro", Path: filepath.Join(dir, "ro"), ReadOnly: true},
		},
		Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	env := &testEnv{dir: dir, srv: srv, serverKey: sk.Public(), server: sk, client: ck, log: log}
	var l net.Listener
	switch transport {
	case "tcp":
		l, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		env.addr = l.Addr().String()
	case "pipe":
		pl := servertest.NewPipeListener()
		l, env.addr, env.dial = pl, "pipe:0", pl.Dial
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		srv.Close()
	})
	return env
}

func (e *testEnv) config() *Config {
	return &Config{
		Server:     e.addr,
		PrivateKey: e.client,
		ServerKey:  e.serverKey,
		Dialer:     e.dial,
		Logger:     e.log,
	}
}

func (e *testEnv) attach(t *testing.T, export string, conns int) *Attachment {
	return e.attachTB(t, export, conns)
}

func (e *testEnv) attachTB(t testing.TB, export string, conns int) *Attachment {
	t.Helper()
	a, err := Attach(context.Background(), &AttachConfig{Config: *e.config(), Export: export, Connections: conns})
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	return a
}

// do runs one request synchronously.
func do(a *Attachment, cmd wire.Cmd, flags wire.ReqFlags, off uint64, length uint32, data []byte) error {
	ch := make(chan error, 1)
	a.Submit(Request{Cmd: cmd, Flags: flags, Offset: off, Length: length, Data: data,
		Done: CompleteFunc(func(err error) { ch <- err })})
	select {
	case err := <-ch:
		return err
	case <-time.After(20 * time.Second):
		return errors.New("request timed out")
	}
}

func TestAutoconfiguration(t *testing.T) {
	env := newEnv(t, "tcp", 8<<20)
	s, err := Dial(context.Background(), env.config())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	info := s.Info()
	if info.Version != wire.Version || info.Instance.IsZero() || len(info.Exports) != 2 {
		t.Fatalf("ServerInfo = %+v", info)
	}
	disk, err := FindExport(info, "disk")
	if err != nil {
		t.Fatal(err)
	}
	if disk.Size != 8<<20 || disk.LogicalBlock != 512 || disk.Flags&wire.ExportReadOnly != 0 ||
		disk.Flags&(wire.ExportFlush|wire.ExportFUA) != wire.ExportFlush|wire.ExportFUA {
		t.Errorf("disk = %+v", disk)
	}
	ro, _ := FindExport(info, "ro")
	if ro.Flags&wire.ExportReadOnly == 0 || ro.Identity == disk.Identity {
		t.Errorf("ro = %+v", ro)
	}
	if _, err := FindExport(info, "nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("FindExport(nope) = %v", err)
	}
	if s.Cipher() != crypto.PreferredCipher() {
		t.Errorf("cipher %v, want %v", s.Cipher(), crypto.PreferredCipher())
	}
}

// TestRandomIO runs concurrent writers and readers over every transport,
// each worker owning a region so the expected contents are known, and
// checks the server's file at the end.
func TestRandomIO(t *testing.T) {
	for _, transport := range []string{"pipe", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			testsupport.LeakCheck(t)
			const size, workers, ops = 16 << 20, 8, 150
			env := newEnv(t, transport, size)
			a := env.attach(t, "disk", 4)
			model := make([]byte, size)
			region := size / workers
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 1))
					base := w * region
					for i := 0; i < ops; i++ {
						n := (1 + rng.IntN(64)) * 512
						if rng.IntN(8) == 0 {
							n = (1 + rng.IntN(512)) * 512 // up to 256 KiB: past largePayload
						}
						off := base + rng.IntN((region-n)/512)*512
						switch rng.IntN(4) {
						case 0, 1:
							data := make([]byte, n)
							for j := range data {
								data[j] = byte(rng.Uint32())
							}
							flags := wire.ReqFlags(0)
							if rng.IntN(8) == 0 {
								flags = wire.FlagFUA
							}
							if err := do(a, wire.CmdWrite, flags, uint64(off), uint32(n), data); err != nil {
								errs <- err
								return
							}
							copy(model[off:], data)
						case 2:
							got := make([]byte, n)
							if err := do(a, wire.CmdRead, 0, uint64(off), uint32(n), got); err != nil {
								errs <- err
								return
							}
							if !bytes.Equal(got, model[off:off+n]) {
								errs <- errors.New("read returned other data than written")
								return
							}
						case 3:
							if err := do(a, wire.CmdFlush, 0, 0, 0, nil); err != nil {
								errs <- err
								return
							}
						}
					}
				}(w)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if err := do(a, wire.CmdFlush, 0, 0, 0, nil); err != nil {
				t.Fatal(err)
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			onDisk, err := os.ReadFile(filepath.Join(env.dir, "disk"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(onDisk, model) {
				t.Fatal("server's file differs from what was written")
			}
		})
	}
}

func TestRequestErrors(t *testing.T) {
	env := newEnv(t, "tcp", 1<<20)
	a := env.attach(t, "disk", 1)
	defer a.Close()
	ro := env.attach(t, "ro", 1)
	defer ro.Close()

	buf := make([]byte, 4096)
	tests := []struct {
		name string
		dev  *Attachment
		cmd  wire.Cmd
		off  uint64
		n    uint32
		want error
	}{
		{"read past end", a, wire.CmdRead, 1 << 20, 4096, syscall.EINVAL},
		{"write past end", a, wire.CmdWrite, 1<<20 - 512, 4096, syscall.ENOSPC},
		{"write read-only", ro, wire.CmdWrite, 0, 4096, syscall.EPERM},
		{"trim read-only", ro, wire.CmdTrim, 0, 4096, syscall.EPERM},
		{"read read-only", ro, wire.CmdRead, 0, 4096, nil},
		{"flush read-only", ro, wire.CmdFlush, 0, 0, nil},
		{"write zeroes", a, wire.CmdWriteZeroes, 0, 1 << 16, nil},
		{"trim", a, wire.CmdTrim, 0, 1 << 16, nil},
	}
	for _, tt := range tests {
		var data []byte
		if tt.cmd == wire.CmdRead || tt.cmd == wire.CmdWrite {
			data = buf[:tt.n]
		}
		err := do(tt.dev, tt.cmd, 0, tt.off, tt.n, data)
		if !errors.Is(err, tt.want) && !(err == nil && tt.want == nil) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
	// The queues survived every error.
	if err := do(a, wire.CmdWrite, 0, 0, 4096, buf); err != nil {
		t.Fatalf("write after errors: %v", err)
	}
}

func TestAttachRefusals(t *testing.T) {
	env := newEnv(t, "tcp", 1<<20)
	cfg := env.config()
	if _, err := Attach(context.Background(), &AttachConfig{Config: *cfg, Export: "missing"}); err == nil ||
		!strings.Contains(err.Error(), `no export named "missing"`) {
		t.Errorf("unknown export: %v", err)
	}
	stranger := *cfg
	stranger.PrivateKey = mustKey(t)
	if _, err := Dial(context.Background(), &stranger); !errors.Is(err, crypto.ErrHandshake) {
		t.Errorf("unknown client key: %v, want ErrHandshake", err)
	}
	wrongServer := *cfg
	wrongServer.ServerKey = mustKey(t).Public()
	if _, err := Dial(context.Background(), &wrongServer); !errors.Is(err, crypto.ErrHandshake) {
		t.Errorf("wrong server key: %v, want ErrHandshake", err)
	}
	// The server still serves a legitimate client.
	a := env.attach(t, "disk", 1)
	defer a.Close()
	if err := do(a, wire.CmdRead, 0, 0, 512, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
}

func TestCloseFailsPending(t *testing.T) {
	testsupport.LeakCheck(t)
	env := newEnv(t, "pipe", 1<<20)
	a := env.attach(t, "disk", 1)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := do(a, wire.CmdRead, 0, 0, 512, make([]byte, 512)); !errors.Is(err, syscall.ESHUTDOWN) {
		t.Fatalf("read after Close: %v, want ESHUTDOWN", err)
	}
}

// TestDeadlineWhileServerGone: a request submitted while the server is
// gone fails with EIO once its deadline has passed, at the reaper's next
// look (every tenth of IOTimeout); the attachment itself is not lost. On
// synctest's clock, over net.Pipe, so the time it takes is exact.
func TestDeadlineWhileServerGone(t *testing.T) {
	testsupport.Synctest(t, func(t *testing.T) {
		const ioTimeout = 500 * time.Millisecond
		env := newEnv(t, "pipe", 1<<20)
		cfg := &AttachConfig{Config: *env.config(), Export: "disk", Connections: 2, IOTimeout: ioTimeout,
			KeepaliveInterval: 50 * time.Millisecond, KeepaliveTimeout: 300 * time.Millisecond}
		a, err := Attach(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		if err := do(a, wire.CmdRead, 0, 0, 512, make([]byte, 512)); err != nil {
			t.Fatal(err)
		}
		env.srv.Close()
		start := time.Now()
		if err := do(a, wire.CmdRead, 0, 0, 512, make([]byte, 512)); !errors.Is(err, syscall.EIO) {
			t.Fatalf("read while the server is gone: %v, want EIO", err)
		}
		if d := time.Since(start); d <= ioTimeout || d > ioTimeout+ioTimeout/10 {
			t.Errorf("read failed after %v; want past the deadline (%v) by at most a reaper tick (%v)",
				d, ioTimeout, ioTimeout/10)
		}
		if s := a.Stats(); s.Timeouts != 1 {
			t.Errorf("stats %+v: want one timeout counted", s)
		}
		select {
		case <-a.Lost():
			t.Fatal("Lost closed: a server going away is not a permanent failure")
		default:
		}
	})
}

// TestExpiredWriteWaitingForWriter: a WRITE whose deadline passes while
// it waits for its queue's writer (stuck, say, on a full socket) completes
// with EIO, and its request goes back to the front end, which recycles
// its buffer. The writer must then skip it: sending it would read a buffer
// that is someone else's by then and complete the request a second time.
// (Found in review of the yamux-stream queue layer, when the request was
// the front end's own and the stream desynchronised.)
func TestExpiredWriteWaitingForWriter(t *testing.T) {
	testsupport.Synctest(t, func(t *testing.T) {
		const ioTimeout = 200 * time.Millisecond
		env := newEnv(t, "pipe", 1<<20)
		a, err := Attach(context.Background(), &AttachConfig{Config: *env.config(), Export: "disk",
			Connections: 1, IOTimeout: ioTimeout})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		a.table.mu.Lock()
		q := a.table.gen.queues[0]
		a.table.mu.Unlock()
		release := q.w.Hold()

		done := make(chan error, 2)
		var calls atomic.Int32
		data := bytes.Repeat([]byte{0xab}, 4096)
		start := time.Now()
		a.Submit(Request{Cmd: wire.CmdWrite, Length: 4096, Data: data, Done: CompleteFunc(func(err error) {
			calls.Add(1)
			done <- err
		})})
		if err := <-done; !errors.Is(err, syscall.EIO) {
			t.Fatalf("expired write: %v, want EIO", err)
		}
		if d := time.Since(start); d <= ioTimeout || d > ioTimeout+ioTimeout/10 {
			t.Fatalf("the write failed after %v; want past the deadline (%v) by at most a reaper tick", d, ioTimeout)
		}
		release()
		for i := range 20 {
			if err := do(a, wire.CmdWrite, 0, uint64(4096*(i+1)), 4096, make([]byte, 4096)); err != nil {
				t.Fatalf("write %d after the expired one: %v", i, err)
			}
		}
		got := make([]byte, 4096)
		if err := do(a, wire.CmdRead, 0, 0, 4096, got); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, data) {
			t.Fatal("the write reported failed was applied")
		}
		if s := a.Stats(); s.Reconnects != 0 || s.Timeouts != 1 {
			t.Fatalf("stats %+v: want no reconnect and one timeout", s)
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("the expired write completed %d times; once is the rule: after Done the front end recycles its buffer", n)
		}
	})
}

// TestMorePins: with the server's key on the second pin only, attach works;
// the first pin costs one refused handshake, and the queue connections go
// straight to the pin the control connection proved.
func TestMorePins(t *testing.T) {
	env := newEnv(t, "tcp", 1<<20)
	cfg := env.config()
	other, err := crypto.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerKey, cfg.MoreServerKeys = other.Public(), []crypto.PublicKey{env.serverKey}
	var dials atomic.Int32
	cfg.Dialer = func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	const conns = 3
	a, err := Attach(context.Background(), &AttachConfig{Config: *cfg, Export: "disk", Connections: conns})
	if err != nil {
		t.Fatalf("Attach with the server's key on the second pin: %v", err)
	}
	defer a.Close()
	if err := do(a, wire.CmdWrite, 0, 0, 4096, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if n := dials.Load(); n != 2+conns {
		t.Fatalf("%d dials; want %d: one refused under the first pin, the control connection, %d queues", n, 2+conns, conns)
	}

	cfg.MoreServerKeys = nil
	if _, err := Dial(context.Background(), cfg); err == nil || !errors.Is(err, crypto.ErrHandshake) {
		t.Fatalf("Dial under a wrong pin alone: %v, want a handshake error", err)
	}
}
