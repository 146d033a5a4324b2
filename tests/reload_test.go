package tests

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReloadRightAfterStart sends SIGHUP to `dst serve` the moment it tells
// systemd it is ready, as `systemctl reload` right after a start does, over
// many starts. Each time the server must reload its authorized keys and go
// on serving, rather than die of the signal.
func TestReloadRightAfterStart(t *testing.T) {
	requireDst(t)
	dir := t.TempDir()
	serverKey, serverPub := keygen(t, dir, "server")
	clientKey, clientPub := keygen(t, dir, "client")
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, []byte(clientPub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 1<<20); err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(shortTempDir(t), "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	buf := make([]byte, 4096)
	// expect reads datagrams until one starts with prefix, or p exits.
	expect := func(p *proc, prefix string) error {
		for deadline := time.Now().Add(startTimeout); time.Now().Before(deadline); {
			l.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			n, err := l.Read(buf)
			if err == nil && strings.HasPrefix(string(buf[:n]), prefix) {
				return nil
			}
			if p.exited() {
				return fmt.Errorf("dst serve exited (%v) before sending %s", p.err, prefix)
			}
		}
		return fmt.Errorf("no %s from dst serve within %v", prefix, startTimeout)
	}

	const starts = 30
	for i := range starts {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		p := startProc(t, fmt.Sprintf("dst serve (start %d)", i+1), dstBin, "serve", "--listen", addr,
			"--key", serverKey, "--authorized-keys", authorized, "--export", "disk="+img+",ro")
		if err := expect(p, "READY=1"); err != nil {
			t.Fatalf("start %d: %v", i+1, err)
		}
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if err := expect(p, "RELOADING=1"); err != nil {
			t.Fatalf("start %d: SIGHUP right after READY: %v", i+1, err)
		}
		if err := expect(p, "READY=1"); err != nil {
			t.Fatalf("start %d: after reloading: %v", i+1, err)
		}
		if out, err := runErr(dstBin, "info", "--key", clientKey, "--server-key", serverPub, addr); err != nil {
			t.Fatalf("start %d: dst info after the reload: %v\n%s", i+1, err, out)
		}
		p.stop(t)
	}
}
