package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/mux"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/server/servertest"
	"github.com/dstproject/dst/wire"
	"github.com/hashicorp/yamux"
)

var _ server.Backend = (*servertest.MemBackend)(nil)

// leakCheck fails the test if goroutines of the server, of yamux or of the
// channel are still running once the test's cleanups ran.
func leakCheck(t testing.TB) {
	t.Helper()
	testsupport.LeakCheck(t, "dst/server.", "hashicorp/yamux", "dst/crypto.")
}

// env is a server with in-memory exports and one client control session
// to it over net.Pipe, with the real handshake and record layer.
type env struct {
	t    testing.TB
	srv  *server.Server
	mem  map[string]*servertest.MemBackend
	cli  *ctl
	done chan error // ServeConn's results
	key  crypto.PrivateKey
	skey crypto.PrivateKey
	rf   *crypto.ReplayFilter
	tcp  bool // dialConn uses loopback TCP instead of net.Pipe
	// writes, if set, counts the writes the server makes on the
	// connections dialConn makes from then on.
	writes *atomic.Int64
}

// countingConn counts the writes made on it.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

type exportSpec struct {
	name     string
	size     int64
	readOnly bool
	// leased exports have a writer lease; the others are shared, as
	// tests of everything else open several writers on one export.
	leased bool
}

func newEnv(t testing.TB, specs ...exportSpec) *env {
	return newEnvConfig(t, &server.Config{}, specs...)
}

// newEnvConfig is newEnv with cfg's settings besides the exports, keys,
// logger and workers.
func newEnvConfig(t testing.TB, cfg *server.Config, specs ...exportSpec) *env {
	t.Helper()
	leakCheck(t)
	if len(specs) == 0 {
		specs = []exportSpec{{name: "disk", size: 8 << 20}}
	}
	e := &env{t: t, mem: make(map[string]*servertest.MemBackend)}
	cfg.Logger, cfg.Workers = testsupport.Logger(t), 8
	for _, s := range specs {
		m := servertest.NewMemBackend(s.size)
		e.mem[s.name] = m
		cfg.Exports = append(cfg.Exports, server.ExportConfig{Name: s.name, Path: "mem:" + s.name, ReadOnly: s.readOnly,
			Shared: !s.leased, Backend: m})
	}
	e.start(cfg)
	return e
}

// start creates the server from cfg, with keys for the test's client,
// and connects the first control session.
func (e *env) start(cfg *server.Config) {
	e.t.Helper()
	e.done = make(chan error, 64)
	e.key, _ = crypto.GeneratePrivateKey()
	e.skey, _ = crypto.GeneratePrivateKey()
	e.rf = crypto.NewReplayFilter()
	auth, err := crypto.ParseAuthorizedKeys(strings.NewReader(e.key.Public().String()+" test\n"), "test")
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.PrivateKey, cfg.Authorized = e.skey, auth
	srv, err := server.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.srv = srv
	e.t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			e.t.Errorf("Close: %v", err)
		}
	})
	e.cli = e.connect()
}

// dialConn runs the handshake over a new pipe, with the server side served
// by ServeConn, and returns the client side.
func (e *env) dialConn(key crypto.PrivateKey) *crypto.Conn {
	e.t.Helper()
	a, b := net.Pipe()
	if e.tcp {
		a, b = tcpPair(e.t)
	}
	if e.writes != nil {
		a = countingConn{Conn: a, n: e.writes}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go func() {
		sc, err := crypto.Server(ctx, a, &crypto.ServerConfig{
			PrivateKey: e.skey,
			Authorize:  func(crypto.PublicKey) error { return nil },
			Replay:     e.rf,
		})
		if err != nil {
			e.done <- err
			return
		}
		e.done <- e.srv.ServeConn(context.Background(), sc)
	}()
	c, err := crypto.Client(ctx, b, &crypto.ClientConfig{PrivateKey: key, ServerKey: e.skey.Public()})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (server, client net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return server, client
}

// ctl is the client side of a control session.
type ctl struct {
	e   *env
	key crypto.PrivateKey
	mux *yamux.Session

	mu        sync.Mutex
	hello     wire.Hello
	info      wire.ServerInfo // once a HELLO was answered
	ctlStream *yamux.Stream   // the stream HELLO was answered on
}

// connect starts one more control session and returns its client side.
func (e *env) connect() *ctl { return e.connectAs(e.key) }

func (e *env) connectAs(key crypto.PrivateKey) *ctl {
	e.t.Helper()
	c := e.dialConn(key)
	if _, err := c.Write(wire.AppendMessage(nil, wire.MsgControl, wire.AppendControl(nil, &wire.Control{Version: wire.Version}))); err != nil {
		e.t.Fatal(err)
	}
	cs, err := mux.Client(c, &mux.Options{Logger: testsupport.Logger(e.t)})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cs.Close() })
	return &ctl{e: e, key: key, mux: cs}
}

// message sends a control message on a new stream and returns the reply.
func message(t testing.TB, c *ctl, typ wire.MsgType, body []byte) (*yamux.Stream, wire.MsgType, []byte) {
	t.Helper()
	st, rt, rb, err := exchange(c, typ, body)
	if err != nil {
		t.Fatal(err)
	}
	return st, rt, rb
}

// exchange is message for goroutines other than the test's. A HELLO that
// is answered with SERVER_INFO is remembered, for queues opened later.
func exchange(c *ctl, typ wire.MsgType, body []byte) (*yamux.Stream, wire.MsgType, []byte, error) {
	st, err := c.mux.OpenStream()
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
	if typ == wire.MsgHello && rt == wire.MsgServerInfo {
		h, _ := wire.DecodeHello(body)
		info, err := wire.DecodeServerInfo(rb)
		if err != nil {
			return nil, 0, nil, err
		}
		c.mu.Lock()
		c.hello, c.info, c.ctlStream = h, info, st
		c.mu.Unlock()
	}
	return st, rt, rb, nil
}

// queueMsg is the QUEUE message that binds a queue to c's session.
func (c *ctl) queueMsg(export string) wire.Queue {
	c.e.t.Helper()
	c.mu.Lock()
	answered := !c.info.Session.IsZero()
	c.mu.Unlock()
	if !answered {
		_, typ, _ := message(c.e.t, c, wire.MsgHello, wire.AppendHello(nil, &wire.Hello{Version: wire.Version, Client: "test"}))
		if typ != wire.MsgServerInfo {
			c.e.t.Fatalf("HELLO answered with %v", typ)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return wire.Queue{Version: wire.Version, Attachment: c.hello.Attachment, Epoch: c.hello.Epoch,
		Session: c.info.Session, Export: export}
}

// queue opens a queue connection with the given QUEUE message and returns
// the server's answer.
func (e *env) queue(key crypto.PrivateKey, q wire.Queue) (*crypto.Conn, wire.MsgType, []byte) {
	e.t.Helper()
	c := e.dialConn(key)
	if _, err := c.Write(wire.AppendMessage(nil, wire.MsgQueue, wire.AppendQueue(nil, &q))); err != nil {
		e.t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, body, err := wire.ReadMessage(c)
	if err != nil {
		e.t.Fatalf("reading the answer to QUEUE: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	return c, typ, body
}

// open opens a queue connection on export name, bound to sess.
func (e *env) open(sess *ctl, name string) *client {
	e.t.Helper()
	c := e.openRaw(sess, name)
	go c.readLoop()
	return c
}

// openRaw opens a queue connection without reading its replies.
func (e *env) openRaw(sess *ctl, name string) *client {
	e.t.Helper()
	st, typ, body := e.queue(sess.key, sess.queueMsg(name))
	if typ != wire.MsgOpened {
		e.t.Fatalf("QUEUE %q: got %v", name, typ)
	}
	o, err := wire.DecodeOpened(body)
	if err != nil {
		e.t.Fatal(err)
	}
	return &client{t: e.t, st: st, info: o.Export, pending: make(map[uint64]chan result), closed: make(chan struct{})}
}

// client is a minimal queue-connection client: requests from any
// goroutine, replies matched by id, in whatever order they come.
type client struct {
	t    testing.TB
	st   *crypto.Conn
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

// ended reports whether the connection was closed by the server within d.
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
