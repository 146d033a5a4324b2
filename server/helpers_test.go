package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/mux"
	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/server/servertest"
	"github.com/dstproject/dst/wire"
	"github.com/hashicorp/yamux"
)

var _ server.Backend = (*servertest.MemBackend)(nil)

// testLogger logs to the test at debug level when -v is given, else only
// warnings and errors.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// leakCheck fails the test if goroutines of the server or of yamux are
// still running once the test's cleanups ran.
func leakCheck(t testing.TB) {
	t.Cleanup(func() {
		var stacks string
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			stacks = ""
			for g := range strings.SplitSeq(string(buf), "\n\n") {
				if strings.Contains(g, "dst/server.") || strings.Contains(g, "hashicorp/yamux") ||
					strings.Contains(g, "dst/crypto.") {
					stacks += g + "\n\n"
				}
			}
			if stacks == "" {
				return
			}
		}
		t.Errorf("goroutines leaked:\n%s", stacks)
	})
}

// env is a server with in-memory exports and one client session to it
// over net.Pipe, without crypto.
type env struct {
	t    testing.TB
	srv  *server.Server
	mem  map[string]*servertest.MemBackend
	cli  *yamux.Session
	done chan error // ServeSession's result
}

type exportSpec struct {
	name     string
	size     int64
	readOnly bool
}

func newEnv(t testing.TB, specs ...exportSpec) *env {
	t.Helper()
	leakCheck(t)
	if len(specs) == 0 {
		specs = []exportSpec{{name: "disk", size: 8 << 20}}
	}
	e := &env{t: t, mem: make(map[string]*servertest.MemBackend), done: make(chan error, 1)}
	cfg := &server.Config{Logger: testLogger(t), Workers: 8}
	for _, s := range specs {
		m := servertest.NewMemBackend(s.size)
		e.mem[s.name] = m
		cfg.Exports = append(cfg.Exports, server.ExportConfig{Name: s.name, Path: "mem:" + s.name, ReadOnly: s.readOnly, Backend: m})
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	e.cli = e.connect()
	return e
}

// connect starts one more session and returns its client side.
func (e *env) connect() *yamux.Session {
	e.t.Helper()
	a, b := net.Pipe()
	ss, err := mux.Server(a, &mux.Options{Logger: testLogger(e.t)})
	if err != nil {
		e.t.Fatal(err)
	}
	go func() { e.done <- e.srv.ServeSession(context.Background(), ss, "pipe") }()
	cs, err := mux.Client(b, &mux.Options{Logger: testLogger(e.t)})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cs.Close() })
	return cs
}

// message sends a control message on a new stream and returns the reply.
func message(t testing.TB, sess *yamux.Session, typ wire.MsgType, body []byte) (*yamux.Stream, wire.MsgType, []byte) {
	t.Helper()
	st, rt, rb, err := exchange(sess, typ, body)
	if err != nil {
		t.Fatal(err)
	}
	return st, rt, rb
}

// exchange is message for goroutines other than the test's.
func exchange(sess *yamux.Session, typ wire.MsgType, body []byte) (*yamux.Stream, wire.MsgType, []byte, error) {
	st, err := sess.OpenStream()
	if err != nil {
		return nil, 0, nil, err
	}
	if _, err := st.Write(wire.AppendMessage(nil, typ, body)); err != nil {
		return nil, 0, nil, err
	}
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	rt, rb, err := wire.ReadMessage(st)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("reading reply to %v: %w", typ, err)
	}
	st.SetReadDeadline(time.Time{})
	return st, rt, rb, nil
}

// open opens a data stream on export name.
func (e *env) open(sess *yamux.Session, name string) *client {
	e.t.Helper()
	c := e.openRaw(sess, name)
	go c.readLoop()
	return c
}

// openRaw opens a data stream without reading its replies.
func (e *env) openRaw(sess *yamux.Session, name string) *client {
	e.t.Helper()
	st, typ, body := message(e.t, sess, wire.MsgOpen, wire.AppendOpen(nil, &wire.Open{Export: name}))
	if typ != wire.MsgOpened {
		e.t.Fatalf("OPEN %q: got %v", name, typ)
	}
	o, err := wire.DecodeOpened(body)
	if err != nil {
		e.t.Fatal(err)
	}
	c := &client{t: e.t, st: st, info: o.Export, pending: make(map[uint64]chan result), closed: make(chan struct{})}
	e.t.Cleanup(func() { st.Close() })
	return c
}

// client is a minimal data-stream client: requests from any goroutine,
// replies matched by id, in whatever order they come.
type client struct {
	t    testing.TB
	st   *yamux.Stream
	info wire.ExportInfo

	wmu     sync.Mutex
	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan result
	closed  chan struct{}
	err     error // why readLoop ended
}

type result struct {
	rep  wire.Reply
	data []byte
}

func (c *client) readLoop() {
	defer close(c.closed)
	var hb [wire.ReplySize]byte
	for {
		if _, err := io.ReadFull(c.st, hb[:]); err != nil {
			c.err = err
			return
		}
		r, err := wire.DecodeReply(hb[:])
		if err != nil {
			c.err = err
			return
		}
		data := make([]byte, r.Length)
		if _, err := io.ReadFull(c.st, data); err != nil {
			c.err = err
			return
		}
		c.mu.Lock()
		ch := c.pending[r.ID]
		delete(c.pending, r.ID)
		c.mu.Unlock()
		if ch == nil {
			c.err = fmt.Errorf("reply to unknown id %d", r.ID)
			return
		}
		ch <- result{r, data}
	}
}

// send writes a request and returns the channel its reply arrives on.
func (c *client) send(req wire.Request, payload []byte) chan result {
	ch := make(chan result, 1)
	c.mu.Lock()
	c.nextID++
	req.ID = c.nextID
	c.pending[req.ID] = ch
	c.mu.Unlock()
	if req.Cmd == wire.CmdWrite && req.Checksum == 0 {
		req.Checksum = wire.Checksum(payload)
	}
	b := make([]byte, wire.RequestSize, wire.RequestSize+len(payload))
	req.Encode(b)
	b = append(b, payload...)
	c.wmu.Lock()
	_, err := c.st.Write(b)
	c.wmu.Unlock()
	if err != nil {
		c.t.Errorf("writing %v: %v", req.Cmd, err)
	}
	return ch
}

// wait returns the reply on ch, failing the test if the stream ends first.
func (c *client) wait(ch chan result) result {
	c.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-c.closed:
		// The reply may have come just before the end.
		select {
		case r := <-ch:
			return r
		default:
		}
		c.t.Fatalf("stream ended before reply: %v", c.err)
	case <-time.After(10 * time.Second):
		c.t.Fatal("no reply in 10s")
	}
	return result{}
}

func (c *client) do(req wire.Request, payload []byte) result {
	c.t.Helper()
	r := c.wait(c.send(req, payload))
	if r.rep.Cmd != req.Cmd {
		c.t.Fatalf("reply to %v has cmd %v", req.Cmd, r.rep.Cmd)
	}
	if r.rep.Length > 0 && wire.Checksum(r.data) != r.rep.Checksum {
		c.t.Fatalf("%v reply fails its checksum", req.Cmd)
	}
	return r
}

func (c *client) read(off uint64, n uint32) ([]byte, wire.Status) {
	c.t.Helper()
	r := c.do(wire.Request{Cmd: wire.CmdRead, Offset: off, Length: n}, nil)
	if r.rep.Status == wire.StatusOK && len(r.data) != int(n) {
		c.t.Fatalf("READ %d bytes returned %d", n, len(r.data))
	}
	return r.data, r.rep.Status
}

func (c *client) write(off uint64, p []byte, flags wire.ReqFlags) wire.Status {
	c.t.Helper()
	return c.do(wire.Request{Cmd: wire.CmdWrite, Flags: flags, Offset: off, Length: uint32(len(p))}, p).rep.Status
}

// ended reports whether the stream was closed by the server within d.
func (c *client) ended(d time.Duration) bool {
	select {
	case <-c.closed:
		return errors.Is(c.err, io.EOF)
	case <-time.After(d):
		return false
	}
}

func must(t testing.TB, got, want wire.Status, what string) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: status %v, want %v", what, got, want)
	}
}
