package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServerKeyRotation rotates the server's key the way the README says,
// with SIGHUP reloads of serve.toml, while three attachments do I/O: one
// pinned to the old key, one to the new key (it can attach once the server
// answers to it) and one to both. No I/O fails at any step; new
// connections under every pin the server holds succeed; after the old key
// is dropped and the server restarts, the attachment pinned to both
// reconnects under the new key.
func TestServerKeyRotation(t *testing.T) {
	requireDst(t)
	requireTool(t, "qemu-io")
	dir := t.TempDir()
	oldKey, oldPub := keygen(t, dir, "old")
	newKey, newPub := keygen(t, dir, "new")
	clientKey, clientPub := keygen(t, dir, "client")
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, []byte(clientPub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := filepath.Join(dir, "serve.toml")
	writeConf := func(key string, more ...string) {
		t.Helper()
		var b strings.Builder
		fmt.Fprintf(&b, "listen = %q\nkey = %q\nauthorized_keys = %q\n", addr, key, authorized)
		if len(more) > 0 {
			fmt.Fprintf(&b, "more_keys = [%q]\n", strings.Join(more, `", "`))
		}
		// Shared: three clients, each pinning other keys, write at once.
		fmt.Fprintf(&b, "[[export]]\nname = \"disk\"\npath = %q\nshared = true\n", img)
		if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var srv *proc
	start := func() {
		t.Helper()
		srv = startProc(t, "dst serve", dstBin, "serve", "--config", conf)
		if err := srv.waitFor(`"listening"`, startTimeout, func() bool {
			return strings.Contains(srv.out.String(), "listening")
		}); err != nil {
			t.Fatal(err)
		}
	}
	reloads := 0
	reload := func() {
		t.Helper()
		reloads++
		if err := srv.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if err := srv.waitFor("reload", startTimeout, func() bool {
			return strings.Count(srv.out.String(), "reloaded authorized keys") >= reloads
		}); err != nil {
			t.Fatalf("%v\n%s", err, srv.out.String())
		}
	}
	attach := func(name, pins string) *attachment {
		t.Helper()
		a := &attachment{export: "disk", sock: filepath.Join(shortTempDir(t), "nbd.sock")}
		a.proc = startProc(t, "dst attach "+name, dstBin, "attach", "--key", clientKey, "--server-key", pins,
			"--io-timeout", "60s", addr, "disk", "--nbd-listen", "unix:"+a.sock)
		if err := a.proc.waitFor("NBD socket", startTimeout, func() bool { return isSocket(a.sock) }); err != nil {
			t.Fatalf("%v\n%s", err, a.proc.out.String())
		}
		return a
	}
	// io writes a pattern through a at a block of its own and reads it back.
	block := 0
	io := func(a *attachment) {
		t.Helper()
		block++
		off := fmt.Sprintf("%dk", 64*block)
		qemuIO(t, a.uri(), fmt.Sprintf("write -P %d %s 64k", block%250+1, off),
			fmt.Sprintf("read -P %d %s 64k", block%250+1, off), "flush")
	}
	info := func(pins string) error {
		out, err := runErr(dstBin, "info", "--key", clientKey, "--server-key", pins, addr)
		if err != nil {
			return fmt.Errorf("dst info --server-key %s: %v\n%s", pins, err, out)
		}
		return nil
	}
	both := oldPub + "," + newPub

	writeConf(oldKey)
	start()
	a1 := attach("pinned old", oldPub)
	a3 := attach("pinned both", both)
	io(a1)
	io(a3)
	if err := info(newPub); err == nil {
		t.Fatal("a client pinned to the new key connected before the server had it")
	}

	// The new key joins; the old one stays current.
	writeConf(oldKey, newKey)
	reload()
	a2 := attach("pinned new", newPub)
	for _, pins := range []string{oldPub, newPub, both, newPub + "," + oldPub} {
		if err := info(pins); err != nil {
			t.Fatal(err)
		}
	}
	io(a1)
	io(a2)
	io(a3)

	// The new key becomes current; the old one is still answered.
	writeConf(newKey, oldKey)
	reload()
	for _, pins := range []string{oldPub, newPub, both} {
		if err := info(pins); err != nil {
			t.Fatal(err)
		}
	}
	io(a1)
	io(a2)
	io(a3)

	// The old key goes. Live sessions keep their channels; new ones
	// under the old pin alone are refused.
	writeConf(newKey)
	reload()
	if err := info(oldPub); err == nil {
		t.Fatal("a client pinned to the dropped key still connected")
	}
	for _, pins := range []string{newPub, both} {
		if err := info(pins); err != nil {
			t.Fatal(err)
		}
	}
	io(a1)
	io(a2)
	io(a3)
	a1.proc.stop(t) // its operator now pins the new key

	// A restart makes every attachment reconnect: the one pinned to both
	// finds the new key on its second pin.
	if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-srv.done
	time.Sleep(100 * time.Millisecond)
	start()
	io(a2)
	io(a3)
	for _, a := range []*attachment{a2, a3} {
		if a.proc.exited() {
			t.Fatalf("%s exited: %v\n%s", a.proc.cmd.Args, a.proc.err, a.proc.out.String())
		}
	}
}
