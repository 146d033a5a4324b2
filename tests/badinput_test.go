package tests

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/nbdwire"
)

// TestRefusedAttach: attaches that must fail do so with a clear message and
// without ever creating the NBD socket, while a legitimate attach keeps
// working.
func TestRefusedAttach(t *testing.T) {
	requireDst(t)
	requireTool(t, "qemu-io")
	s := startServer(t, &export{Name: "disk", Size: 32 << 20})
	good := s.attach(t, "disk")
	qemuIO(t, good.uri(), "write -P 0x3c 0 1M", "read -P 0x3c 0 1M")

	strangerKey, strangerPub := keygen(t, t.TempDir(), "stranger")
	cases := []struct {
		name      string
		key, pin  string
		export    string
		wantOut   *regexp.Regexp
		serverLog string // must appear in the server's log, if set
	}{
		{"unauthorized client key", strangerKey, s.serverPub, "disk",
			regexp.MustCompile(`(?i)not accept this client's key|not authori[sz]e`), strangerPub},
		{"wrong pinned server key", s.clientKey, strangerPub, "disk",
			regexp.MustCompile(`(?i)server.?key|pinned|refused`), ""},
		{"unknown export", s.clientKey, s.serverPub, "nope",
			regexp.MustCompile(`"?nope"?`), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := s.attachExpectingFailure(t, tc.key, tc.pin, tc.export)
			switch {
			case r.timedOut:
				t.Fatalf("tests: attach still running after %v, want a quick failure\n%s", startTimeout, r.out)
			case r.err == nil:
				t.Fatalf("tests: attach exited 0, want non-zero\n%s", r.out)
			}
			if r.socketSeen {
				t.Errorf("tests: the NBD socket appeared although attach failed")
			}
			if !tc.wantOut.MatchString(r.out) {
				t.Errorf("tests: attach error does not match %v:\n%s", tc.wantOut, r.out)
			}
			if tc.serverLog != "" && !strings.Contains(s.proc.out.String(), tc.serverLog) {
				t.Errorf("tests: server log does not name the refused key %s", tc.serverLog)
			}
		})
	}
	s.alive(t)
	qemuIO(t, good.uri(), "read -P 0x3c 0 1M", "write -P 0xc3 1M 1M", "read -P 0xc3 1M 1M")
}

// TestGarbageConnections throws junk, truncated handshakes and idle
// connections at the server port while a legitimate client does I/O; the
// client must not notice and the server must survive and keep accepting.
func TestGarbageConnections(t *testing.T) {
	requireDst(t)
	requireTool(t, "qemu-io")
	s := startServer(t, &export{Name: "disk", Size: 32 << 20})
	a := s.attach(t, "disk")
	qemuIO(t, a.uri(), "write -P 0x42 0 4M")

	// The legitimate client loops until told to stop.
	stop := make(chan struct{})
	ioErr := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				t.Logf("legitimate client completed %d qemu-io rounds during the junk", i)
				ioErr <- nil
				return
			default:
			}
			out, err := runErr("qemu-io", "-f", "raw", "-c", "read -P 0x42 0 4M",
				"-c", "write -P 0x24 8M 1M", "-c", "read -P 0x24 8M 1M", a.uri())
			if err != nil || strings.Contains(out, "failed") {
				ioErr <- errors.Join(err, errors.New(out))
				return
			}
		}
	}()

	// Idle connections stay open across the whole test: a half-open peer
	// must not block the accept loop or other sessions.
	for range 4 {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}

	junk := [][]byte{
		randomBytes(64 << 10),
		bytes.Repeat([]byte{0xff}, 4096),
		make([]byte, 4096),
		[]byte("NBDMAGIC\x00\x00\x00\x00IHAVEOPT GET / HTTP/1.1\r\n\r\n"),
	}
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var payload []byte
			truncated := i%2 == 1
			if truncated {
				// A prefix of a plausible first handshake message, then
				// nothing: the server has to give up on its own.
				payload = randomBytes(1 + i%96)
			} else {
				payload = junk[(i/2)%len(junk)]
			}
			if err := sendJunk(s.addr, payload, !truncated); err != nil {
				t.Errorf("tests: junk connection %d (%d bytes): %v", i, len(payload), err)
			}
		}()
	}
	wg.Wait()

	time.Sleep(500 * time.Millisecond) // let the client loop run past the junk
	close(stop)
	select {
	case err := <-ioErr:
		if err != nil {
			t.Fatalf("tests: legitimate I/O failed during the junk: %v", err)
		}
	case <-time.After(toolTimeout):
		t.Fatal("tests: legitimate I/O loop hung")
	}
	s.alive(t)
	qemuIO(t, a.uri(), "read -P 0x42 0 4M", "read -P 0x24 8M 1M")
	// The accept loop still works: a new client can attach and do I/O,
	// once the first has detached and freed the writer lease.
	a.proc.stop(t)
	b := s.attach(t, "disk")
	qemuIO(t, b.uri(), "read -P 0x42 0 4M", "write -P 0x99 12M 64k", "read -P 0x99 12M 64k")
}

// sendJunk writes payload to the server. With wantClose it then expects the
// server to close the connection within a few seconds, and to send nothing
// that is not a rejection (it must not hang on a peer it cannot parse).
func sendJunk(addr string, payload []byte, wantClose bool) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	// The server may close while we still write; that is fine.
	_, _ = c.Write(payload)
	if !wantClose {
		return nil
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("server kept a garbage connection open for 10s")
	}
	return nil
}

// randomBytes may be called from any goroutine: crypto/rand.Read does not fail.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// TestReadOnlyExport: qemu-io cannot write a ,ro export (and says so), can
// read it, and a raw client that ignores the read-only flag gets EPERM on the
// same connection it then keeps using.
func TestReadOnlyExport(t *testing.T) {
	requireTool(t, "qemu-io")
	s := startServer(t, &export{Name: "ro", Size: 8 << 20, ReadOnly: true})
	a := s.attach(t, "ro")
	out, err := runErr("qemu-io", "-f", "raw", "-c", "write -P 0x01 0 4k", a.uri())
	if err == nil {
		t.Fatalf("tests: qemu-io wrote to a read-only export:\n%s", out)
	}
	if !regexp.MustCompile(`(?i)permission denied|operation not permitted|read-only`).MatchString(out) {
		t.Errorf("tests: qemu-io write on a read-only export failed without a permission error:\n%s", out)
	}
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0 0 1M", a.uri())

	n, err := dialRawNBD(a.sock, "ro")
	if err != nil {
		t.Fatal(err)
	}
	defer n.close()
	if n.flags&nbdwire.TransReadOnly == 0 {
		t.Errorf("tests: transmission flags %v lack NBD_FLAG_READ_ONLY", n.flags)
	}
	errno, _, err := n.do(nbdwire.CmdWrite, 0, 4096, make([]byte, 4096))
	if err != nil {
		t.Fatalf("tests: write to read-only export: %v", err)
	}
	if errno != nbdwire.EPERM {
		t.Errorf("tests: write to read-only export: error %v, want EPERM", errno)
	}
	errno, data, err := n.do(nbdwire.CmdRead, 0, 4096, nil)
	if err != nil || errno != 0 || !bytes.Equal(data, make([]byte, 4096)) {
		t.Errorf("tests: read after refused write: errno %v err %v", errno, err)
	}
	fileIsZero(t, s.lookup(t, "ro").Path)
}

// TestOutOfRange: requests past the end fail with an error reply and leave
// the connection, the attach and the server working.
func TestOutOfRange(t *testing.T) {
	requireTool(t, "qemu-io")
	const size = 8 << 20
	s := startServer(t, &export{Name: "disk", Size: size})
	a := s.attach(t, "disk")
	qemuIO(t, a.uri(), "write -P 0x6b 0 64k")
	for _, c := range []string{"read 8M 4k", "write 8M 4k", "read 8188k 8k", "write -P 1 8188k 8k"} {
		out, err := runErr("qemu-io", "-f", "raw", "-c", c, a.uri())
		if err == nil && !strings.Contains(out, "failed") {
			t.Errorf("tests: qemu-io %q past the end succeeded:\n%s", c, out)
		}
	}

	n, err := dialRawNBD(a.sock, "disk")
	if err != nil {
		t.Fatal(err)
	}
	defer n.close()
	if n.size != size {
		t.Errorf("tests: raw client sees size %d, want %d", n.size, size)
	}
	for _, r := range []struct {
		cmd    nbdwire.Command
		off    uint64
		length uint32
	}{
		{nbdwire.CmdRead, size, 4096},
		{nbdwire.CmdRead, size - 4096, 8192},
		{nbdwire.CmdRead, ^uint64(0) - 4095, 8192}, // offset+length wraps around
		{nbdwire.CmdWrite, size, 4096},
		{nbdwire.CmdWrite, size - 512, 1024},
		{nbdwire.CmdWrite, ^uint64(0) - 511, 1024},
	} {
		var payload []byte
		if r.cmd == nbdwire.CmdWrite {
			payload = bytes.Repeat([]byte{0xee}, int(r.length))
		}
		errno, _, err := n.do(r.cmd, r.off, r.length, payload)
		if err != nil {
			t.Fatalf("tests: %v at %#x+%d: %v", r.cmd, r.off, r.length, err)
		}
		if errno != nbdwire.EINVAL && errno != nbdwire.ENOSPC {
			t.Errorf("tests: %v at %#x+%d: error %v, want EINVAL or ENOSPC", r.cmd, r.off, r.length, errno)
		}
	}
	// The same connection still serves in-range requests.
	errno, data, err := n.do(nbdwire.CmdRead, 0, 65536, nil)
	if err != nil || errno != 0 || !bytes.Equal(data, bytes.Repeat([]byte{0x6b}, 65536)) {
		t.Errorf("tests: in-range read after refused requests: errno %v err %v", errno, err)
	}
	if errno, _, err := n.do(nbdwire.CmdFlush, 0, 0, nil); err != nil || errno != 0 {
		t.Errorf("tests: flush: errno %v err %v", errno, err)
	}
	qemuIO(t, a.uri(), "read -P 0x6b 0 64k", "read -P 0 8188k 4k")
	s.alive(t)
}

func fileIsZero(t testing.TB, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range b {
		if c != 0 {
			t.Errorf("tests: %s was modified at offset %d", path, i)
			return
		}
	}
}

// TestAttachBadFlags: out-of-range flag values are refused before attach
// dials anything, with a message that names the flag.
func TestAttachBadFlags(t *testing.T) {
	requireDst(t)
	sock := shortTempDir(t) + "/nbd.sock"
	for _, c := range []struct{ flag, val string }{
		{"--connections", "-1"},
		{"--connections", "65"},
		{"--busy-poll", "-1us"},
		{"--busy-poll", "11ms"},
	} {
		out, err := runErr(dstBin, "attach", "--key", "/nonexistent", "--server-key", "x",
			c.flag, c.val, "127.0.0.1:1", "disk", "--nbd-listen", "unix:"+sock)
		if err == nil {
			t.Errorf("tests: attach %s %s exited 0", c.flag, c.val)
			continue
		}
		if !strings.Contains(out, c.flag) {
			t.Errorf("tests: attach %s %s: message does not name the flag:\n%s", c.flag, c.val, out)
		}
		if isSocket(sock) {
			t.Errorf("tests: attach %s %s opened the NBD socket", c.flag, c.val)
		}
	}
}
