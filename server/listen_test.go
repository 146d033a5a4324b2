package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/mux"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/server/servertest"
	"github.com/dstproject/dst/wire"
)

// tcpEnv is a server behind a real TCP listener with crypto.
type tcpEnv struct {
	t          *testing.T
	srv        *server.Server
	addr       string
	serverKey  crypto.PublicKey
	clientKey  crypto.PrivateKey
	serveErr   chan error
	cancelServ context.CancelFunc
}

func newTCPEnv(t *testing.T) *tcpEnv {
	t.Helper()
	return newTCPEnvLog(t, testsupport.Logger(t))
}

func newTCPEnvLog(t *testing.T, log *slog.Logger) *tcpEnv {
	t.Helper()
	leakCheck(t)
	sk, err := crypto.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	ck, _ := crypto.GeneratePrivateKey()
	auth, err := crypto.ParseAuthorizedKeys(strings.NewReader(ck.Public().String()+" test client\n"), "test-keys")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(&server.Config{
		PrivateKey: sk,
		Authorized: auth,
		Exports:    []server.ExportConfig{{Name: "disk", Backend: servertest.NewMemBackend(1 << 20), Shared: true}},
		Logger:     log,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &tcpEnv{t: t, srv: srv, addr: l.Addr().String(), serverKey: sk.Public(), clientKey: ck,
		serveErr: make(chan error, 1), cancelServ: cancel}
	go func() { e.serveErr <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-e.serveErr:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
		srv.Close()
	})
	return e
}

// dialTCP connects and runs the handshake with key.
func (e *tcpEnv) dialTCP(ctx context.Context, key crypto.PrivateKey) (*crypto.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", e.addr)
	if err != nil {
		return nil, err
	}
	return crypto.Client(ctx, c, &crypto.ClientConfig{PrivateKey: key, ServerKey: e.serverKey})
}

// dial connects with key and checks the whole stack: a control connection
// with HELLO, then a queue connection bound to it with a READ.
func (e *tcpEnv) dial(key crypto.PrivateKey) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := e.dialTCP(ctx, key)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write(wire.AppendMessage(nil, wire.MsgControl, wire.AppendControl(nil, &wire.Control{Version: wire.Version}))); err != nil {
		return err
	}
	sess, err := mux.Client(conn, nil)
	if err != nil {
		return err
	}
	defer sess.Close()
	c := &ctl{mux: sess}
	_, typ, body, err := exchange(c, wire.MsgHello, wire.AppendHello(nil, &wire.Hello{Version: wire.Version, Client: "t"}))
	if err != nil || typ != wire.MsgServerInfo {
		return fmt.Errorf("HELLO: %v, %w", typ, err)
	}
	info, err := wire.DecodeServerInfo(body)
	if err != nil {
		return err
	}
	q, err := e.dialTCP(ctx, key)
	if err != nil {
		return err
	}
	defer q.Close()
	msg := wire.AppendQueue(nil, &wire.Queue{Version: wire.Version, Session: info.Session, Export: "disk"})
	if _, err := q.Write(wire.AppendMessage(nil, wire.MsgQueue, msg)); err != nil {
		return err
	}
	q.SetReadDeadline(time.Now().Add(5 * time.Second))
	if typ, _, err := wire.ReadMessage(q); err != nil || typ != wire.MsgOpened {
		return fmt.Errorf("QUEUE: %v, %w", typ, err)
	}
	var b [wire.RequestSize]byte
	(&wire.Request{Cmd: wire.CmdRead, ID: 9, Length: 4096}).Encode(b[:])
	if _, err := q.Write(b[:]); err != nil {
		return err
	}
	reply := make([]byte, wire.ReplySize+4096)
	if _, err := io.ReadFull(q, reply); err != nil {
		return err
	}
	r, err := wire.DecodeReply(reply)
	if err != nil || r.ID != 9 || r.Status != wire.StatusOK {
		return errors.New("bad READ reply")
	}
	return nil
}

func TestTCPClient(t *testing.T) {
	e := newTCPEnv(t)
	if err := e.dial(e.clientKey); err != nil {
		t.Fatal(err)
	}
}

func TestTCPUnknownKeyRefused(t *testing.T) {
	e := newTCPEnv(t)
	stranger, _ := crypto.GeneratePrivateKey()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				errs[i] = e.dial(stranger)
			} else {
				errs[i] = e.dial(e.clientKey)
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if i%2 == 0 && err == nil {
			t.Errorf("client %d with an unknown key got in", i)
		}
		if i%2 == 1 && err != nil {
			t.Errorf("authorized client %d: %v", i, err)
		}
	}
}

// TestTCPHostileConnections opens connections that never complete a
// handshake; a legitimate client must not notice them.
func TestTCPHostileConnections(t *testing.T) {
	e := newTCPEnv(t)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dial := func(payload []byte) net.Conn {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if payload != nil {
			c.Write(payload)
		}
		return c
	}
	silent := dial(nil)                                               // half-open: says nothing
	truncated := dial([]byte("DSTN\x01"))                             // a preamble cut short
	garbage := dial([]byte(strings.Repeat("GET / HTTP/1.1\r\n", 64))) // not dst at all
	start := time.Now()
	if err := e.dial(e.clientKey); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("legitimate client took %v", d)
	}
	// Garbage is dropped at once, the others by the handshake timeout.
	garbage.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := garbage.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("garbage connection not closed: %v", err)
	}
	_, _ = silent, truncated
}

func TestServeAfterClose(t *testing.T) {
	leakCheck(t)
	sk, _ := crypto.GeneratePrivateKey()
	auth, _ := crypto.ParseAuthorizedKeys(strings.NewReader(""), "empty")
	srv, err := server.New(&server.Config{PrivateKey: sk, Authorized: auth, Logger: testsupport.Logger(t),
		Exports: []server.ExportConfig{{Name: "d", Backend: servertest.NewMemBackend(4096), Shared: true}}})
	if err != nil {
		t.Fatal(err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	done := make(chan error)
	go func() { done <- srv.Serve(context.Background(), l) }()
	time.Sleep(20 * time.Millisecond)
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	if err := srv.Serve(context.Background(), l2); !errors.Is(err, server.ErrServerClosed) {
		t.Fatalf("Serve on a closed server: %v", err)
	}
}

// TestSetAuthorized revokes a key while its session is open: the session
// ends, new connections with it are refused, and restoring it works again.
func TestSetAuthorized(t *testing.T) {
	e := newTCPEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := crypto.Client(ctx, c, &crypto.ClientConfig{PrivateKey: e.clientKey, ServerKey: e.serverKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(wire.AppendMessage(nil, wire.MsgControl, wire.AppendControl(nil, &wire.Control{Version: wire.Version}))); err != nil {
		t.Fatal(err)
	}
	sess, err := mux.Client(conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if _, _, _, err := exchange(&ctl{mux: sess}, wire.MsgHello, wire.AppendHello(nil, &wire.Hello{Version: wire.Version})); err != nil {
		t.Fatal(err)
	}

	other, _ := crypto.GeneratePrivateKey()
	only, err := crypto.ParseAuthorizedKeys(strings.NewReader(other.Public().String()+"\n"), "reloaded")
	if err != nil {
		t.Fatal(err)
	}
	e.srv.SetAuthorized(only)
	select {
	case <-sess.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("session of a revoked key still open")
	}
	if err := e.dial(e.clientKey); err == nil {
		t.Fatal("revoked key accepted on a new connection")
	}
	if err := e.dial(other); err != nil {
		t.Fatalf("newly authorized key: %v", err)
	}
	back, _ := crypto.ParseAuthorizedKeys(strings.NewReader(e.clientKey.Public().String()+"\n"), "restored")
	e.srv.SetAuthorized(back)
	if err := e.dial(e.clientKey); err != nil {
		t.Fatalf("restored key: %v", err)
	}
}
