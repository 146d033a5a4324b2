package servertest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/server"
)

// RestartOptions describe a Restartable server.
type RestartOptions struct {
	Size int64 // of the export's file, zeroed
	// Volatile exports the file with a volatile write cache, so that Stop
	// is a crash: writes not flushed are gone, as on a power loss. Without
	// it the page cache outlives a restart.
	Volatile bool
	// Pipe listens on a PipeListener instead of loopback TCP, so that the
	// server and its clients can run in a testing/synctest bubble. Clients
	// reach it with Dialer.
	Pipe bool
}

// Restartable is a server in the test's process exporting one file as
// "disk" to one client key, that a test stops and starts again: each
// start is a new server instance over the same file, at the same address.
type Restartable struct {
	Path      string // the export's file
	Addr      string // where the server listens, the same across restarts
	ServerKey crypto.PrivateKey
	ClientKey crypto.PrivateKey // the one key authorized

	t    testing.TB
	opts RestartOptions
	auth *crypto.AuthorizedKeys
	log  *slog.Logger // every instance's

	mu   sync.Mutex
	pipe *PipeListener // the running instance's, with Pipe
	stop func()        // nil while stopped
}

// NewRestartable starts a server; it is stopped when the test ends.
func NewRestartable(t testing.TB, opts RestartOptions) *Restartable {
	t.Helper()
	r := &Restartable{Path: filepath.Join(t.TempDir(), "disk"), t: t, opts: opts, log: testsupport.Logger(t)}
	var err error
	if r.ServerKey, err = crypto.GeneratePrivateKey(); err != nil {
		t.Fatal(err)
	}
	if r.ClientKey, err = crypto.GeneratePrivateKey(); err != nil {
		t.Fatal(err)
	}
	r.auth, err = crypto.ParseAuthorizedKeys(strings.NewReader(r.ClientKey.Public().String()+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.Path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(r.Path, opts.Size); err != nil {
		t.Fatal(err)
	}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start starts a new instance: on a free port the first time, on the same
// one afterwards.
func (r *Restartable) Start() {
	r.t.Helper()
	srv, err := server.New(&server.Config{
		PrivateKey: r.ServerKey,
		Authorized: r.auth,
		Exports:    []server.ExportConfig{{Name: "disk", Path: r.Path, Volatile: r.opts.Volatile}},
		Logger:     r.log,
	})
	if err != nil {
		r.t.Fatal(err)
	}
	var l net.Listener
	var pipe *PipeListener
	if r.opts.Pipe {
		pipe = NewPipeListener()
		l, r.Addr = pipe, "pipe"
	} else {
		addr := r.Addr
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		if l, err = net.Listen("tcp", addr); err != nil {
			srv.Close()
			r.t.Fatal(err)
		}
		r.Addr = l.Addr().String()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	r.mu.Lock()
	r.pipe = pipe
	r.mu.Unlock()
	r.stop = func() {
		r.mu.Lock()
		r.pipe = nil
		r.mu.Unlock()
		cancel()
		if err := <-done; err != nil {
			r.t.Errorf("Serve: %v", err)
		}
		srv.Close()
	}
}

// Stop ends the running instance, if any, and every session it has.
func (r *Restartable) Stop() {
	if r.stop != nil {
		r.stop()
		r.stop = nil
	}
}

// Dialer is what clients dial the server with: nil for TCP, where the
// default dialer reaches Addr; with Pipe, a function that connects to the
// running instance, and while it is stopped is refused.
func (r *Restartable) Dialer() func(ctx context.Context, addr string) (net.Conn, error) {
	if !r.opts.Pipe {
		return nil
	}
	return r.dial
}

func (r *Restartable) dial(ctx context.Context, addr string) (net.Conn, error) {
	r.mu.Lock()
	pipe := r.pipe
	r.mu.Unlock()
	if pipe == nil {
		return nil, fmt.Errorf("servertest: dialing %s: %w", addr, syscall.ECONNREFUSED)
	}
	return pipe.Dial(ctx, addr)
}
