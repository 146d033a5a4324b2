package crypto

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/flynn/noise"
)

// testKey derives a fixed private key from a name, so tests and golden
// transcripts are reproducible.
func testKey(name string) PrivateKey {
	k := PrivateKey(sha256.Sum256([]byte("dst test key " + name)))
	k.clamp()
	return k
}

// detRand is a deterministic byte stream for injecting handshake randomness.
type detRand struct {
	seed    string
	counter uint64
	buf     []byte
}

func newDetRand(seed string) *detRand { return &detRand{seed: seed} }

func (r *detRand) Read(p []byte) (int, error) {
	for len(r.buf) < len(p) {
		h := sha256.Sum256([]byte(r.seed + "/" + strconv.FormatUint(r.counter, 10)))
		r.counter++
		r.buf = append(r.buf, h[:]...)
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// connTypes is the matrix of transports every channel test runs over.
var connTypes = []struct {
	name string
	pair func(t testing.TB) (client, server net.Conn)
}{
	{"pipe", func(t testing.TB) (net.Conn, net.Conn) { return net.Pipe() }},
	{"tcp", tcpPair},
}

func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return c, r.c
}

var ciphers = []Cipher{CipherChaChaPoly, CipherAESGCM}

type testPeers struct {
	client, server PrivateKey
	ccfg           *ClientConfig
	scfg           *ServerConfig
}

func newTestPeers(c Cipher) *testPeers {
	p := &testPeers{client: testKey("client"), server: testKey("server")}
	clientPub := p.client.Public()
	p.ccfg = &ClientConfig{PrivateKey: p.client, ServerKey: p.server.Public(), Cipher: c}
	p.scfg = &ServerConfig{
		PrivateKey: p.server,
		Authorize: func(k PublicKey) error {
			if k != clientPub {
				return ErrUnauthorized
			}
			return nil
		},
		Replay: NewReplayFilter(),
	}
	return p
}

type handshakeResult struct {
	conn *Conn
	err  error
}

// handshake runs Client and Server concurrently over the raw pair.
func handshake(ctx context.Context, cc, sc net.Conn, ccfg *ClientConfig, scfg *ServerConfig) (client, server handshakeResult) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		server.conn, server.err = Server(ctx, sc, scfg)
	}()
	client.conn, client.err = Client(ctx, cc, ccfg)
	wg.Wait()
	return client, server
}

// mustPair returns a connected pair of Conns over the given transport.
func mustPair(t testing.TB, pair func(testing.TB) (net.Conn, net.Conn), p *testPeers) (client, server *Conn) {
	t.Helper()
	cc, sc := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, s := handshake(ctx, cc, sc, p.ccfg, p.scfg)
	if c.err != nil || s.err != nil {
		t.Fatalf("handshake: client %v, server %v", c.err, s.err)
	}
	t.Cleanup(func() { c.conn.Close(); s.conn.Close() })
	return c.conn, s.conn
}

// memConn is a one-way in-memory net.Conn for record-layer tests: writes
// append to buf, reads drain it. An empty buffer reads as a timeout, or as
// EOF once eof is set.
type memConn struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	eof    bool
	closed bool
}

func (m *memConn) Read(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, net.ErrClosed
	}
	if m.buf.Len() == 0 {
		if m.eof {
			return 0, io.EOF
		}
		return 0, os.ErrDeadlineExceeded
	}
	return m.buf.Read(p)
}

func (m *memConn) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, net.ErrClosed
	}
	return m.buf.Write(p)
}

func (m *memConn) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

func (m *memConn) LocalAddr() net.Addr                { return &net.UnixAddr{Name: "mem", Net: "unix"} }
func (m *memConn) RemoteAddr() net.Addr               { return &net.UnixAddr{Name: "mem", Net: "unix"} }
func (m *memConn) SetDeadline(t time.Time) error      { return nil }
func (m *memConn) SetReadDeadline(t time.Time) error  { return nil }
func (m *memConn) SetWriteDeadline(t time.Time) error { return nil }

// noiseSplit runs an in-memory IK handshake with flynn/noise directly and
// returns the initiator's send and receive CipherStates and the responder's.
func noiseSplit(t testing.TB, c Cipher) (iSend, iRecv, rSend, rRecv *noise.CipherState) {
	t.Helper()
	ck, sk := testKey("client"), testKey("server")
	pre := makePreamble(c)
	spub := sk.Public()
	ihs, err := noise.NewHandshakeState(noise.Config{CipherSuite: c.suite(), Random: newDetRand("i"), Pattern: noise.HandshakeIK,
		Initiator: true, Prologue: prologue(pre), StaticKeypair: keypair(ck), PeerStatic: spub[:]})
	if err != nil {
		t.Fatal(err)
	}
	rhs, err := noise.NewHandshakeState(noise.Config{CipherSuite: c.suite(), Random: newDetRand("r"), Pattern: noise.HandshakeIK,
		Prologue: prologue(pre), StaticKeypair: keypair(sk)})
	if err != nil {
		t.Fatal(err)
	}
	m1, _, _, err := ihs.WriteMessage(nil, nil)
	if err == nil {
		_, _, _, err = rhs.ReadMessage(nil, m1)
	}
	var m2 []byte
	if err == nil {
		m2, rRecv, rSend, err = rhs.WriteMessage(nil, nil)
	}
	if err == nil {
		_, iSend, iRecv, err = ihs.ReadMessage(nil, m2)
	}
	if err != nil {
		t.Fatal(err)
	}
	return iSend, iRecv, rSend, rRecv
}

// memPair returns two Conns joined by one memConn: a writes, b reads.
func memPair(t testing.TB, c Cipher, rekeyAfter uint64) (a, b *Conn, wire *memConn) {
	t.Helper()
	iSend, iRecv, rSend, rRecv := noiseSplit(t, c)
	wire = &memConn{}
	a, err := newConn(wire, testKey("server").Public(), c, iSend, iRecv, rekeyAfter)
	if err != nil {
		t.Fatal(err)
	}
	b, err = newConn(wire, testKey("client").Public(), c, rSend, rRecv, rekeyAfter)
	if err != nil {
		t.Fatal(err)
	}
	return a, b, wire
}
