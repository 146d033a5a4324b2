package tests

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
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

// TestReloadExports: SIGHUP re-reads serve.toml's exports: an added one
// appears in dst info, a removed one goes, and a client of an export that
// stayed copies data across the reload without noticing it.
func TestReloadExports(t *testing.T) {
	requireDst(t)
	requireTool(t, "nbdcopy")
	dir := t.TempDir()
	t.Setenv("DST_RUN_DIR", shortTempDir(t))
	serverKey, serverPub := keygen(t, dir, "server")
	clientKey, clientPub := keygen(t, dir, "client")
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, []byte(clientPub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		writeRandomFile(t, filepath.Join(dir, n+".img"), 8<<20)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := filepath.Join(dir, "serve.toml")
	writeConf := func(names ...string) {
		s := fmt.Sprintf("listen = %q\nkey = %q\nauthorized_keys = %q\n", addr, serverKey, authorized)
		for _, n := range names {
			s += fmt.Sprintf("[[export]]\nname = %q\npath = %q\n", n, filepath.Join(dir, n+".img"))
		}
		if err := os.WriteFile(conf, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConf("a", "b")
	serve := startProc(t, "dst serve", dstBin, "serve", "--config", conf, "--status-socket", "none")
	if err := serve.waitFor("listening", startTimeout, func() bool { return strings.Contains(serve.out.String(), "listening") }); err != nil {
		t.Fatal(err)
	}
	info := func() string { return run(t, dstBin, "info", "--key", clientKey, "--server-key", serverPub, addr) }
	sock := filepath.Join(shortTempDir(t), "a.sock")
	att := startProc(t, "dst attach", dstBin, "attach", "--key", clientKey, "--server-key", serverPub, addr, "a",
		"--nbd-listen", "unix:"+sock)
	if err := att.waitFor("NBD socket", startTimeout, func() bool { return isSocket(sock) }); err != nil {
		t.Fatal(err)
	}
	uri := "nbd+unix:///a?socket=" + sock
	src := filepath.Join(dir, "src")
	writeRandomFile(t, src, 8<<20)
	copied := make(chan error, 1)
	go func() {
		for range 5 {
			if out, err := runErr("nbdcopy", "--flush", src, uri); err != nil {
				copied <- fmt.Errorf("%v: %s", err, out)
				return
			}
		}
		copied <- nil
	}()

	writeConf("a", "c")
	serve.cmd.Process.Signal(syscall.SIGHUP)
	if err := serve.waitFor("the reload", 10*time.Second, func() bool {
		o := serve.out.String()
		return strings.Contains(o, "msg=\"export added\" export=c") && strings.Contains(o, "msg=\"export removed\" export=b")
	}); err != nil {
		t.Fatal(err)
	}
	got := info()
	for _, want := range []string{"a", "c"} {
		if !regexp.MustCompile(`(?m)^` + want + `\s`).MatchString(got) {
			t.Errorf("dst info after the reload lacks export %s:\n%s", want, got)
		}
	}
	if regexp.MustCompile(`(?m)^b\s`).MatchString(got) {
		t.Errorf("dst info after the reload still lists b:\n%s", got)
	}
	if err := <-copied; err != nil {
		t.Fatalf("copying to export a across the reload: %v", err)
	}
	sameContent(t, src, filepath.Join(dir, "a.img"), 8<<20)
	if strings.Contains(att.out.String(), "msg=lost") || strings.Contains(att.out.String(), "reconnect") {
		t.Errorf("the client of an unchanged export noticed the reload:\n%s", att.out.String())
	}

	// A config that fails to parse changes nothing.
	if err := os.WriteFile(conf, []byte("[[export]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	serve.cmd.Process.Signal(syscall.SIGHUP)
	if err := serve.waitFor("the failed reload", 10*time.Second, func() bool {
		return strings.Contains(serve.out.String(), "reloading keys failed")
	}); err != nil {
		t.Fatal(err)
	}
	if got := info(); !regexp.MustCompile(`(?m)^c\s`).MatchString(got) {
		t.Errorf("after a failed reload:\n%s", got)
	}
}
