package crypto

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/testsupport"
)

// recConn records what passes through a net.Conn and can alter writes.
type recConn struct {
	net.Conn
	mutate func(i int, b []byte) // may change b in place before it is sent

	mu     sync.Mutex
	writes [][]byte
	nread  int
}

func (r *recConn) Write(b []byte) (int, error) {
	b = bytes.Clone(b)
	r.mu.Lock()
	if r.mutate != nil {
		r.mutate(len(r.writes), b)
	}
	r.writes = append(r.writes, b)
	r.mu.Unlock()
	return r.Conn.Write(b)
}

func (r *recConn) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.mu.Lock()
	r.nread += n
	r.mu.Unlock()
	return n, err
}

func (r *recConn) write(i int) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i >= len(r.writes) {
		return nil
	}
	return r.writes[i]
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHandshakeAndData(t *testing.T) {
	for _, ct := range connTypes {
		for _, c := range ciphers {
			t.Run(ct.name+"/"+c.String(), func(t *testing.T) {
				testsupport.LeakCheck(t)
				p := newTestPeers(c)
				cl, sv := mustPair(t, ct.pair, p)
				if cl.PeerKey() != p.server.Public() || sv.PeerKey() != p.client.Public() {
					t.Error("PeerKey mismatch")
				}
				if cl.Cipher() != c || sv.Cipher() != c {
					t.Errorf("Cipher = %v/%v, want %v", cl.Cipher(), sv.Cipher(), c)
				}
				exchange(t, cl, sv, []byte("ping"))
				exchange(t, sv, cl, []byte("pong"))
			})
		}
	}
}

// exchange writes msg on a and checks it arrives on b.
func exchange(t *testing.T, a, b net.Conn, msg []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := a.Write(msg)
		errc <- err
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("got %q, want %q", got, msg)
	}
}

func TestCipherAuto(t *testing.T) {
	p := newTestPeers(CipherAuto)
	cl, _ := mustPair(t, connTypes[0].pair, p)
	if cl.Cipher() != PreferredCipher() {
		t.Errorf("auto negotiated %v, want %v", cl.Cipher(), PreferredCipher())
	}
}

// Golden transcripts: fixed keys, randomness and timestamp must give exactly
// these bytes. A change here is a wire-format change: bump ProtocolName.
var goldenTranscripts = map[Cipher]struct{ msg1, msg2, record string }{
	CipherChaChaPoly: {
		msg1:   "4453544e01010000006cb16f7f6a2cf0f618f3ceec839c6b06e74e27ccb580ac3c4a41c26a2eb20bc42d9f63cb33302ba1ad92e215ed0452c6b5bf80b947f69840e2b1801c7ebdb51da95a29e28012c1dc20c83393a5e9fd016ee0e3da76ea6cbbeabec51165e914f04882ef70e0bb9dc8dbb315573f",
		msg2:   "00300f27caeb10d65e1463d889bb34647f49ee9a883ee260adfe387d9278e2e077637f44a49b1adb4ad2a557532076551b74",
		record: "0100001ab63bb4d51e39ccb3027f730fad2a9ab02723591293b4da711096",
	},
	CipherAESGCM: {
		msg1:   "4453544e01020000006cb16f7f6a2cf0f618f3ceec839c6b06e74e27ccb580ac3c4a41c26a2eb20bc42d73eef67bed0463a782162f919c96eee02730fbbee26938e6a70d92a26c500aeb23e0a06c1a6aa94f1cc00f8745874b8c9b2e89dbd2498c6722cdabee27f854071b6455cc23a5870c89fd2c9a",
		msg2:   "00300f27caeb10d65e1463d889bb34647f49ee9a883ee260adfe387d9278e2e07763d6b47bdfb2943c0811659c79f7f7e86b",
		record: "0100001ab3e90476936280033391d4e615b199fe7513f5c4e9061ff6eaf6",
	},
}

const goldenTime = 1_700_000_000_123_456_789

func TestGoldenTranscript(t *testing.T) {
	for _, c := range ciphers {
		t.Run(c.String(), func(t *testing.T) {
			p := newTestPeers(c)
			p.ccfg.Random = newDetRand("client ephemeral")
			p.ccfg.now = func() uint64 { return goldenTime }
			p.scfg.Random = newDetRand("server ephemeral")
			cc, sc := net.Pipe()
			rc, rs := &recConn{Conn: cc}, &recConn{Conn: sc}
			cl, sv := handshake(testCtx(t), rc, rs, p.ccfg, p.scfg)
			if cl.err != nil || sv.err != nil {
				t.Fatalf("handshake: %v / %v", cl.err, sv.err)
			}
			defer cl.conn.Close()
			exchange(t, cl.conn, sv.conn, []byte("hello, dst"))

			msg1, msg2, rec := rc.write(0), rs.write(0), rc.write(1)
			if len(msg1) != preambleLen+frameHeaderLen+msg1Len || len(msg2) != frameHeaderLen+msg2Len ||
				len(rec) != recordHeaderLen+10+tagLen {
				t.Fatalf("lengths %d %d %d", len(msg1), len(msg2), len(rec))
			}
			if !bytes.HasPrefix(msg1, []byte{'D', 'S', 'T', 'N', 1, byte(c), 0, 0, 0, msg1Len}) {
				t.Errorf("preamble/frame header %x", msg1[:10])
			}
			g := goldenTranscripts[c]
			for _, x := range []struct{ name, got, want string }{
				{"msg1", hex.EncodeToString(msg1), g.msg1},
				{"msg2", hex.EncodeToString(msg2), g.msg2},
				{"record", hex.EncodeToString(rec), g.record},
			} {
				if x.got != x.want {
					t.Errorf("%s:\n got %s\nwant %s", x.name, x.got, x.want)
				}
			}
		})
	}
}

func TestWrongServerKey(t *testing.T) {
	for _, ct := range connTypes {
		t.Run(ct.name, func(t *testing.T) {
			testsupport.LeakCheck(t)
			p := newTestPeers(CipherChaChaPoly)
			p.ccfg.ServerKey = testKey("imposter").Public()
			cc, sc := ct.pair(t)
			rc := &recConn{Conn: cc}
			cl, sv := handshake(testCtx(t), rc, sc, p.ccfg, p.scfg)
			if !errors.Is(cl.err, ErrHandshake) || !strings.Contains(cl.err.Error(), "--server-key") {
				t.Errorf("client error %v, want ErrHandshake mentioning --server-key", cl.err)
			}
			if !errors.Is(sv.err, ErrHandshake) || !strings.Contains(sv.err.Error(), "failed to decrypt") {
				t.Errorf("server error %v, want ErrHandshake about decryption", sv.err)
			}
			if rc.nread != 0 {
				t.Errorf("server sent %d bytes to a client with the wrong key", rc.nread)
			}
		})
	}
}

func TestUnauthorizedClient(t *testing.T) {
	for _, ct := range connTypes {
		t.Run(ct.name, func(t *testing.T) {
			testsupport.LeakCheck(t)
			p := newTestPeers(CipherAESGCM)
			stranger := testKey("stranger")
			p.ccfg.PrivateKey = stranger
			cc, sc := ct.pair(t)
			rc := &recConn{Conn: cc}
			cl, sv := handshake(testCtx(t), rc, sc, p.ccfg, p.scfg)
			if !errors.Is(sv.err, ErrUnauthorized) || !strings.Contains(sv.err.Error(), stranger.Public().String()) {
				t.Errorf("server error %v, want ErrUnauthorized naming %s", sv.err, stranger.Public())
			}
			if !errors.Is(cl.err, ErrHandshake) || !errors.Is(cl.err, io.EOF) {
				t.Errorf("client error %v, want ErrHandshake wrapping io.EOF", cl.err)
			}
			// The client cannot tell a refused key from a server shedding
			// load, so the message must not blame the key alone.
			if !strings.Contains(cl.err.Error(), hungUpMessage) {
				t.Errorf("client error %q, want it to say %q", cl.err, hungUpMessage)
			}
			if rc.nread != 0 {
				t.Errorf("server sent %d bytes to an unauthorized client", rc.nread)
			}
		})
	}
}

const hungUpMessage = "connection closed before the handshake completed: the server may be overloaded " +
	"or not reachable, or may not accept this client's key; check its log"

// TestServerHungUp: a server that accepts and closes without a word, as
// one shedding load does, gets the same careful message.
func TestServerHungUp(t *testing.T) {
	for _, ct := range connTypes {
		t.Run(ct.name, func(t *testing.T) {
			testsupport.LeakCheck(t)
			p := newTestPeers(CipherChaChaPoly)
			cc, sc := ct.pair(t)
			go func() {
				sc.Read(make([]byte, 1))
				sc.Close()
			}()
			_, err := Client(testCtx(t), cc, p.ccfg)
			if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), hungUpMessage) {
				t.Errorf("client error %v, want ErrHandshake saying %q", err, hungUpMessage)
			}
		})
	}
}

func TestAuthorizeErrorWrapped(t *testing.T) {
	p := newTestPeers(CipherChaChaPoly)
	custom := errors.New("banned by policy")
	p.scfg.Authorize = func(PublicKey) error { return custom }
	cc, sc := net.Pipe()
	_, sv := handshake(testCtx(t), cc, sc, p.ccfg, p.scfg)
	if !errors.Is(sv.err, ErrUnauthorized) || !errors.Is(sv.err, custom) {
		t.Errorf("server error %v, want both ErrUnauthorized and the callback's error", sv.err)
	}
}

// captureMsg1 returns the bytes a real client sends first (preamble and
// first handshake message).
func captureMsg1(t *testing.T, cfg *ClientConfig) []byte {
	t.Helper()
	cc, sc := net.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := Client(testCtx(t), cc, cfg)
		done <- err
	}()
	buf := make([]byte, preambleLen+frameHeaderLen+msg1Len)
	if _, err := io.ReadFull(sc, buf); err != nil {
		t.Fatal(err)
	}
	sc.Close()
	<-done
	return buf
}

// rawServer feeds raw bytes to Server over TCP and returns what it sent
// back and its error. closeAfter half-closes the client side after data.
func rawServer(t *testing.T, ctx context.Context, cfg *ServerConfig, data []byte, closeAfter bool) (reply []byte, err error) {
	cc, sc := tcpPair(t)
	defer cc.Close()
	done := make(chan error, 1)
	go func() {
		c, err := Server(ctx, sc, cfg)
		if c != nil {
			c.Close()
		}
		done <- err
	}()
	if _, err := cc.Write(data); err != nil {
		t.Fatal(err)
	}
	if closeAfter {
		cc.(*net.TCPConn).CloseWrite()
	}
	reply, _ = io.ReadAll(cc)
	return reply, <-done
}

// stalledServer feeds data to Server over a connection from pair, then
// nothing more, and returns what the server sent back and its error.
func stalledServer(t *testing.T, ctx context.Context, cfg *ServerConfig, pair func(testing.TB) (net.Conn, net.Conn),
	data []byte) (reply []byte, err error) {
	cc, sc := pair(t)
	defer cc.Close()
	done := make(chan error, 1)
	go func() {
		c, err := Server(ctx, sc, cfg)
		if c != nil {
			c.Close()
		}
		done <- err
	}()
	if len(data) > 0 {
		go cc.Write(data) // over a pipe it returns once the server has read it all
	}
	reply, _ = io.ReadAll(cc)
	return reply, <-done
}

func TestReplayedFirstMessage(t *testing.T) {
	testsupport.LeakCheck(t)
	p := newTestPeers(CipherChaChaPoly)
	cc, sc := net.Pipe()
	rc := &recConn{Conn: cc}
	cl, sv := handshake(testCtx(t), rc, sc, p.ccfg, p.scfg)
	if cl.err != nil || sv.err != nil {
		t.Fatalf("handshake: %v / %v", cl.err, sv.err)
	}
	cl.conn.Close()
	msg1 := rc.write(0)

	reply, err := rawServer(t, testCtx(t), p.scfg, msg1, false)
	if !errors.Is(err, ErrReplay) {
		t.Errorf("replayed msg1: server error %v, want ErrReplay", err)
	}
	if len(reply) != 0 {
		t.Errorf("server answered a replay with %d bytes", len(reply))
	}
	// A fresh server (new filter) would accept the very same bytes: the
	// refusal above is the filter's doing.
	fresh := *p.scfg
	fresh.Replay = NewReplayFilter()
	if reply, err := rawServer(t, testCtx(t), &fresh, msg1, false); err != nil || len(reply) != frameHeaderLen+msg2Len {
		t.Errorf("fresh filter: err %v, reply %d bytes", err, len(reply))
	}
}

func TestTamperedPreamble(t *testing.T) {
	tests := []struct {
		name    string
		client  Cipher
		allowed []Cipher
		mutate  func(b []byte)
		want    string
	}{
		{"cipher downgrade", CipherAESGCM, nil, func(b []byte) { b[5] = byte(CipherChaChaPoly) }, "failed to decrypt"},
		{"cipher not allowed", CipherAESGCM, []Cipher{CipherChaChaPoly}, nil, "allows chacha20-poly1305"},
		{"unknown cipher", CipherAESGCM, nil, func(b []byte) { b[5] = 9 }, "cipher(9)"},
		{"version", CipherChaChaPoly, nil, func(b []byte) { b[4] = 2 }, "channel version 2"},
		{"reserved", CipherChaChaPoly, nil, func(b []byte) { b[7] = 1 }, "reserved"},
		{"bad magic", CipherChaChaPoly, nil, func(b []byte) { b[0] = 'X' }, "magic"},
		{"frame too short", CipherChaChaPoly, nil, func(b []byte) { b[9] = 20 }, "outside"},
		{"frame shortened", CipherChaChaPoly, nil, func(b []byte) { b[9] = msg1MinLen }, "failed to decrypt"},
		{"flipped ephemeral", CipherChaChaPoly, nil, func(b []byte) { b[12] ^= 1 }, "failed to decrypt"},
		{"flipped timestamp ciphertext", CipherChaChaPoly, nil, func(b []byte) { b[len(b)-20] ^= 1 }, "failed to decrypt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testsupport.LeakCheck(t)
			p := newTestPeers(tt.client)
			p.scfg.Ciphers = tt.allowed
			cc, sc := net.Pipe()
			rc := &recConn{Conn: cc, mutate: func(i int, b []byte) {
				if i == 0 && tt.mutate != nil {
					tt.mutate(b)
				}
			}}
			cl, sv := handshake(testCtx(t), rc, sc, p.ccfg, p.scfg)
			if !errors.Is(sv.err, ErrHandshake) || !strings.Contains(sv.err.Error(), tt.want) {
				t.Errorf("server error %v, want ErrHandshake containing %q", sv.err, tt.want)
			}
			if !errors.Is(cl.err, ErrHandshake) {
				t.Errorf("client error %v, want ErrHandshake", cl.err)
			}
		})
	}
}

func TestNotADstClient(t *testing.T) {
	p := newTestPeers(CipherChaChaPoly)
	reply, err := rawServer(t, testCtx(t), p.scfg, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), true)
	if !errors.Is(err, ErrHandshake) || !strings.Contains(err.Error(), "magic") || len(reply) != 0 {
		t.Errorf("HTTP request: err %v, reply %q", err, reply)
	}
}

func TestTruncatedHandshake(t *testing.T) {
	p := newTestPeers(CipherChaChaPoly)
	msg1 := captureMsg1(t, p.ccfg)
	for _, n := range []int{0, 3, preambleLen, preambleLen + 1, preambleLen + 2, 60, len(msg1) - 1} {
		testsupport.LeakCheck(t)
		start := time.Now()
		_, err := rawServer(t, testCtx(t), p.scfg, msg1[:n], true)
		if !errors.Is(err, ErrHandshake) {
			t.Errorf("%d bytes then EOF: server error %v, want ErrHandshake", n, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%d bytes then EOF: server took %v", n, d)
		}
	}
}

// onClock runs f over net.Pipe in a synctest bubble, where a deadline
// fires exactly when due (slack 0), or over loopback TCP on the real
// clock, where it may fire late on a loaded machine (slack 2s).
func onClock(t *testing.T, name string, f func(t *testing.T, slack time.Duration)) {
	if name == "pipe" {
		testsupport.Synctest(t, func(t *testing.T) { f(t, 0) })
		return
	}
	f(t, 2*time.Second)
}

func TestHandshakeContext(t *testing.T) {
	p := newTestPeers(CipherChaChaPoly)
	msg1 := captureMsg1(t, p.ccfg)

	const deadline = 100 * time.Millisecond
	for _, ct := range connTypes {
		t.Run("server deadline, stalled client/"+ct.name, func(t *testing.T) {
			onClock(t, ct.name, func(t *testing.T, slack time.Duration) {
				testsupport.LeakCheck(t)
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				_, err := stalledServer(t, ctx, p.scfg, ct.pair, msg1[:50])
				if d := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || d < deadline || d > deadline+slack {
					t.Errorf("err %v after %v, want DeadlineExceeded after %v", err, d, deadline)
				}
			})
		})
		t.Run("client deadline/"+ct.name, func(t *testing.T) {
			onClock(t, ct.name, func(t *testing.T, slack time.Duration) {
				testsupport.LeakCheck(t)
				cc, sc := ct.pair(t)
				defer sc.Close()
				go io.Copy(io.Discard, sc) // a server that never answers
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				_, err := Client(ctx, cc, p.ccfg)
				if d := time.Since(start); !errors.Is(err, context.DeadlineExceeded) || d < deadline || d > deadline+slack {
					t.Errorf("err %v after %v, want DeadlineExceeded after %v", err, d, deadline)
				}
			})
		})
		t.Run("client cancel/"+ct.name, func(t *testing.T) {
			onClock(t, ct.name, func(t *testing.T, slack time.Duration) {
				testsupport.LeakCheck(t)
				cc, sc := ct.pair(t)
				defer sc.Close()
				go io.Copy(io.Discard, sc)
				ctx, cancel := context.WithCancel(context.Background())
				start := time.Now()
				time.AfterFunc(deadline/2, cancel)
				_, err := Client(ctx, cc, p.ccfg)
				if d := time.Since(start); !errors.Is(err, context.Canceled) || d < deadline/2 || d > deadline/2+slack {
					t.Errorf("err %v after %v, want context.Canceled after %v", err, d, deadline/2)
				}
			})
		})
		t.Run("deadline cleared/"+ct.name, func(t *testing.T) {
			onClock(t, ct.name, func(t *testing.T, _ time.Duration) {
				testsupport.LeakCheck(t)
				q := newTestPeers(CipherChaChaPoly)
				cc, sc := ct.pair(t)
				ctx, cancel := context.WithTimeout(context.Background(), 4*deadline)
				defer cancel()
				cl, sv := handshake(ctx, cc, sc, q.ccfg, q.scfg)
				if cl.err != nil || sv.err != nil {
					t.Fatalf("handshake: %v / %v", cl.err, sv.err)
				}
				defer cl.conn.Close()
				defer sv.conn.Close()
				<-ctx.Done()
				time.Sleep(20 * time.Millisecond)
				exchange(t, cl.conn, sv.conn, []byte("still alive"))
			})
		})
	}
	t.Run("already canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		cc, sc := net.Pipe()
		defer sc.Close()
		if _, err := Client(ctx, cc, p.ccfg); !errors.Is(err, context.Canceled) {
			t.Errorf("err %v, want context.Canceled", err)
		}
		if _, err := cc.Write([]byte{1}); !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("conn not closed after failed handshake: %v", err)
		}
	})
}

// TestFirstMessageTimeout: a client that sends part of its first message
// and stalls is dropped at FirstMessageTimeout, well before ctx's deadline,
// with an error that says so; a client that sends it in time completes,
// and ctx's deadline is back in force (then cleared) afterwards.
func TestFirstMessageTimeout(t *testing.T) {
	p := newTestPeers(CipherChaChaPoly)
	msg1 := captureMsg1(t, p.ccfg)
	const first = 100 * time.Millisecond
	for _, ct := range connTypes {
		for _, n := range []int{0, 5, preambleLen + 1, 50} {
			t.Run(fmt.Sprintf("stalled after %d bytes/%s", n, ct.name), func(t *testing.T) {
				onClock(t, ct.name, func(t *testing.T, slack time.Duration) {
					testsupport.LeakCheck(t)
					cfg := *p.scfg
					cfg.FirstMessageTimeout = first
					called := false
					cfg.OnFirstMessage = func() { called = true }
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					start := time.Now()
					reply, err := stalledServer(t, ctx, &cfg, ct.pair, msg1[:n])
					d := time.Since(start)
					if !errors.Is(err, ErrHandshake) || !errors.Is(err, os.ErrDeadlineExceeded) ||
						errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "first-message timeout") {
						t.Errorf("err %v, want ErrHandshake naming the first-message timeout", err)
					}
					if d < first || d > first+slack {
						t.Errorf("server gave up after %v, want %v", d, first)
					}
					if called || len(reply) != 0 {
						t.Errorf("OnFirstMessage called: %v; reply %q", called, reply)
					}
				})
			})
		}
		t.Run("in time/"+ct.name, func(t *testing.T) {
			onClock(t, ct.name, func(t *testing.T, _ time.Duration) {
				testsupport.LeakCheck(t)
				q := newTestPeers(CipherAESGCM)
				q.scfg.FirstMessageTimeout = 50 * time.Millisecond
				calls := 0
				q.scfg.OnFirstMessage = func() { calls++ }
				cc, sc := ct.pair(t)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				cl, sv := handshake(ctx, cc, sc, q.ccfg, q.scfg)
				if cl.err != nil || sv.err != nil {
					t.Fatalf("handshake: %v / %v", cl.err, sv.err)
				}
				defer cl.conn.Close()
				defer sv.conn.Close()
				if calls != 1 {
					t.Errorf("OnFirstMessage called %d times, want 1", calls)
				}
				time.Sleep(100 * time.Millisecond) // past the first-message deadline
				exchange(t, cl.conn, sv.conn, []byte("still alive"))
			})
		})
	}
	t.Run("ctx shorter", func(t *testing.T) {
		testsupport.LeakCheck(t)
		cfg := *p.scfg
		cfg.FirstMessageTimeout = 10 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := rawServer(t, ctx, &cfg, msg1[:50], false)
		if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "first-message") {
			t.Errorf("err %v, want ctx's DeadlineExceeded", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		testsupport.LeakCheck(t)
		cfg := *p.scfg
		cfg.FirstMessageTimeout = 5 * time.Second
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := rawServer(t, ctx, &cfg, msg1[:50], false)
		if !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "first-message") {
			t.Errorf("err %v, want context.Canceled", err)
		}
	})
}

func TestConfigErrors(t *testing.T) {
	p := newTestPeers(CipherChaChaPoly)
	clients := map[string]*ClientConfig{
		"nil":       nil,
		"no key":    {ServerKey: p.ccfg.ServerKey},
		"no server": {PrivateKey: p.client},
		"cipher(7)": {PrivateKey: p.client, ServerKey: p.ccfg.ServerKey, Cipher: 7},
	}
	for name, cfg := range clients {
		cc, _ := net.Pipe()
		if _, err := Client(testCtx(t), cc, cfg); err == nil || !strings.HasPrefix(err.Error(), "crypto: ") {
			t.Errorf("client config %s: err %v", name, err)
		}
	}
	ok := *p.scfg
	servers := map[string]func(c *ServerConfig){
		"no key":       func(c *ServerConfig) { c.PrivateKey = PrivateKey{} },
		"no authorize": func(c *ServerConfig) { c.Authorize = nil },
		"no replay":    func(c *ServerConfig) { c.Replay = nil },
		"auto cipher":  func(c *ServerConfig) { c.Ciphers = []Cipher{CipherAuto} },
	}
	for name, mod := range servers {
		cfg := ok
		mod(&cfg)
		_, sc := net.Pipe()
		if _, err := Server(testCtx(t), sc, &cfg); err == nil || !strings.HasPrefix(err.Error(), "crypto: ") {
			t.Errorf("server config %s: err %v", name, err)
		}
	}
}

func TestCipherNames(t *testing.T) {
	for _, c := range []Cipher{CipherAuto, CipherChaChaPoly, CipherAESGCM} {
		got, err := ParseCipher(strings.ToUpper(c.String()))
		if err != nil || got != c {
			t.Errorf("ParseCipher(%q) = %v, %v", c, got, err)
		}
		var u Cipher
		b, _ := c.MarshalText()
		if err := u.UnmarshalText(b); err != nil || u != c {
			t.Errorf("text round trip of %v: %v, %v", c, u, err)
		}
	}
	if _, err := ParseCipher("rot13"); err == nil {
		t.Error("ParseCipher accepted rot13")
	}
	if s := Cipher(9).String(); s != "cipher(9)" {
		t.Errorf("Cipher(9).String() = %q", s)
	}
	// Pinned wire values.
	if CipherChaChaPoly != 1 || CipherAESGCM != 2 || ProtocolName != "dst/1" || ProtocolVersion != 1 ||
		msg1Len != 108 || msg2Len != 48 || MaxRecordPayload != 65519 {
		t.Error("a pinned wire constant changed")
	}
	if got := string(prologue(makePreamble(CipherAESGCM))); got != "dst/1DSTN\x01\x02\x00\x00" {
		t.Errorf("prologue %q does not bind the preamble", got)
	}
	if c := PreferredCipher(); !c.valid() {
		t.Errorf("PreferredCipher() = %v", c)
	}
}

// TestMoreKeys: a server rotating its key answers clients pinned to any of
// its keys, and a client pinned to none gets nothing; the error names every
// key the server holds.
func TestMoreKeys(t *testing.T) {
	p := newTestPeers(CipherAuto)
	next := testKey("next")
	p.scfg.MoreKeys = []PrivateKey{next}
	for _, pin := range []PrivateKey{p.server, next} {
		ccfg := *p.ccfg
		ccfg.ServerKey = pin.Public()
		cc, sc := tcpPair(t)
		c, s := handshake(context.Background(), cc, sc, &ccfg, p.scfg)
		if c.err != nil || s.err != nil {
			t.Fatalf("pinned to %s: client %v, server %v", pin.Public(), c.err, s.err)
		}
		c.conn.Close()
		s.conn.Close()
	}
	ccfg := *p.ccfg
	ccfg.ServerKey = testKey("stranger").Public()
	cc, sc := tcpPair(t)
	c, s := handshake(context.Background(), cc, sc, &ccfg, p.scfg)
	if c.err == nil || s.err == nil {
		t.Fatal("a client pinned to a key the server does not hold completed the handshake")
	}
	if msg := s.err.Error(); !strings.Contains(msg, p.server.Public().String()) || !strings.Contains(msg, next.Public().String()) {
		t.Fatalf("server error %q does not name both of its keys", msg)
	}
	p.scfg.MoreKeys = []PrivateKey{{}}
	cc, sc = tcpPair(t)
	if _, s := handshake(context.Background(), cc, sc, p.ccfg, p.scfg); s.err == nil {
		t.Fatal("a zero key in MoreKeys was accepted")
	}
}
