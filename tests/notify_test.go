package tests

import (
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSystemdNotify runs dst serve and dst attach as systemd runs a
// Type=notify unit, with NOTIFY_SOCKET set, and checks they say when they
// are ready, reloading and stopping.
func TestSystemdNotify(t *testing.T) {
	requireDst(t)
	sock := filepath.Join(shortTempDir(t), "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("NOTIFY_SOCKET", sock)

	// expect reads datagrams until one starts with prefix.
	expect := func(prefix, after string) string {
		t.Helper()
		buf := make([]byte, 4096)
		deadline := time.Now().Add(startTimeout)
		for {
			l.SetReadDeadline(deadline)
			n, err := l.Read(buf)
			if err != nil {
				t.Fatalf("tests: no %q from dst %s: %v", prefix, after, err)
			}
			if msg := string(buf[:n]); strings.HasPrefix(msg, prefix) {
				return msg
			}
		}
	}

	s := startServer(t, &export{Name: "disk", Size: 1 << 20})
	expect("READY=1", "serve after it listens")
	if msg := expect("STATUS=", "serve after READY"); !strings.Contains(msg, "serving 1 exports") {
		t.Errorf("tests: serve's status %q does not say what it serves", msg)
	}

	if err := s.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if msg := expect("RELOADING=1", "serve on SIGHUP"); !strings.Contains(msg, "MONOTONIC_USEC=") {
		t.Errorf("tests: RELOADING without MONOTONIC_USEC: %q", msg)
	}
	expect("READY=1", "serve after reloading")

	a := s.attach(t, "disk")
	expect("READY=1", "attach once attached")
	if msg := expect("STATUS=", "attach after READY"); !strings.Contains(msg, "attached disk at unix:"+a.sock) {
		t.Errorf("tests: attach's status %q does not name the export and socket", msg)
	}

	s.proc.stop(t)
	expect("STOPPING=1", "serve on SIGTERM")
}
