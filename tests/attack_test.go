package tests

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/mux"
	"github.com/dstproject/dst/internal/nbdclient"
	"github.com/dstproject/dst/wire"
)

// TestMemoryUnderAttack: an authorized key attacks dst serve the ways a
// review found it could be exhausted, all at once, while a legitimate
// client does verified I/O: ping floods on sessions that never read, and
// 32 MiB WRITEs whose last page never comes, on many queue connections of
// many sessions. The server's RSS stays within its budgets
// (256 MiB for the key's payloads, plus the control windows and a base),
// and the legitimate client's requests keep completing promptly.
func TestMemoryUnderAttack(t *testing.T) {
	requireDst(t)
	s := startServer(t, &export{Name: "disk", Size: 64 << 20})
	akeyPath, apub := keygen(t, s.dir, "attacker")
	f, err := os.OpenFile(filepath.Join(s.dir, "authorized_keys"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(apub + " attacker\n")
	f.Close()
	s.proc.cmd.Process.Signal(syscall.SIGHUP)
	if err := s.proc.waitFor("reload", startTimeout, func() bool {
		return strings.Contains(s.proc.out.String(), "reloaded authorized keys")
	}); err != nil {
		t.Fatal(err)
	}
	akey, err := crypto.LoadPrivateKey(akeyPath, crypto.KeyModePolicy{})
	if err != nil {
		t.Fatal(err)
	}
	spub, err := crypto.ParsePublicKey(s.serverPub)
	if err != nil {
		t.Fatal(err)
	}
	a := s.attach(t, "disk")
	legit, err := nbdclient.Dial(context.Background(), "unix", a.sock, "")
	if err != nil {
		t.Fatal(err)
	}
	defer legit.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dial := func() *crypto.Conn {
		raw, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Error(err)
			return nil
		}
		context.AfterFunc(ctx, func() { raw.Close() })
		c, err := crypto.Client(ctx, raw, &crypto.ClientConfig{PrivateKey: akey, ServerKey: spub})
		if err != nil {
			t.Errorf("attacker handshake: %v", err)
			return nil
		}
		return c
	}
	control := func(c *crypto.Conn) {
		c.Write(wire.AppendMessage(nil, wire.MsgControl, wire.AppendControl(nil, &wire.Control{Version: wire.Version})))
	}
	var wg sync.WaitGroup
	// Ping floods: yamux pings written straight onto the channel, replies
	// never read.
	for range 4 {
		wg.Go(func() {
			c := dial()
			if c == nil {
				return
			}
			control(c)
			var b []byte
			for i := range 4096 {
				h := make([]byte, 12)
				h[1] = 2                             // ping
				binary.BigEndian.PutUint16(h[2:], 1) // SYN
				binary.BigEndian.PutUint32(h[8:], uint32(i))
				b = append(b, h...)
			}
			for ctx.Err() == nil {
				if _, err := c.Write(b); err != nil {
					return
				}
			}
		})
	}
	// Announced bodies: sessions with HELLO answered, each with queue
	// connections that send a 32 MiB WRITE's header and nothing more.
	for i := range 4 {
		wg.Go(func() {
			c := dial()
			if c == nil {
				return
			}
			control(c)
			sess, err := mux.Client(c, nil)
			if err != nil {
				return
			}
			defer sess.Close()
			st, err := sess.OpenStream()
			if err != nil {
				return
			}
			h := &wire.Hello{Version: wire.Version, Attachment: wire.Identity{byte(i + 1)}, Epoch: 1, Client: "attacker"}
			st.Write(wire.AppendMessage(nil, wire.MsgHello, wire.AppendHello(nil, h)))
			typ, body, err := wire.ReadMessage(st)
			if err != nil || typ != wire.MsgServerInfo {
				t.Errorf("attacker HELLO: %v %v", typ, err)
				return
			}
			info, _ := wire.DecodeServerInfo(body)
			for range 16 {
				q := dial()
				if q == nil {
					return
				}
				q.Write(wire.AppendMessage(nil, wire.MsgQueue, wire.AppendQueue(nil, &wire.Queue{Version: wire.Version,
					Attachment: h.Attachment, Epoch: 1, Session: info.Session, Export: "disk"})))
				// All of the body but its last page, so the server's
				// buffer is resident, not just reserved.
				req := wire.Request{Cmd: wire.CmdWrite, ID: 1, Length: wire.MaxPayload}
				b := make([]byte, wire.RequestSize+wire.MaxPayload-4096)
				req.Encode(b)
				go q.Write(b) // blocks once the server stops reading
			}
			<-ctx.Done()
		})
	}

	// The legitimate client: verified 4 KiB writes and reads throughout,
	// while the server's RSS is sampled.
	var worst time.Duration
	var peak int64
	rounds := 0
	deadline := time.Now().Add(6 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		want := bytes.Repeat([]byte{byte(i)}, 4096)
		off := int64(i%1024) * 4096
		start := time.Now()
		if err := legit.WriteAt(want, off, false); err != nil {
			t.Fatalf("legitimate write during the attack: %v", err)
		}
		got := make([]byte, 4096)
		if err := legit.ReadAt(got, off); err != nil {
			t.Fatalf("legitimate read during the attack: %v", err)
		}
		worst = max(worst, time.Since(start))
		if !bytes.Equal(got, want) {
			t.Fatalf("legitimate read at %d returned other data", off)
		}
		rounds++
		peak = max(peak, rssKiB(t, s.proc.cmd.Process.Pid))
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	t.Logf("during the attack: %d verified write+read rounds, worst %v; dst serve peak RSS %d MiB", rounds, worst, peak>>10)
	if raceBuilt(t) {
		// The race detector multiplies memory and time; this run is for
		// the races themselves, and for the I/O verified above.
		t.Logf("dst is built with -race: RSS and latency are not held to their bounds")
		s.alive(t)
		return
	}
	const bound = 256 + 96 // MiB: the key's payload budget, control windows, the server itself
	if peak>>10 > bound {
		t.Errorf("dst serve reached %d MiB RSS under attack, over %d MiB", peak>>10, bound)
	}
	if worst > 500*time.Millisecond {
		t.Errorf("a legitimate write+read took %v under attack", worst)
	}
	s.alive(t)
}

// rssKiB returns a process's resident set size in KiB.
func rssKiB(t testing.TB, pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// raceBuilt reports whether the dst under test was built with -race.
func raceBuilt(t testing.TB) bool {
	info, err := buildinfo.ReadFile(dstBin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range info.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}
