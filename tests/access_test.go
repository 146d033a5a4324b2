package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKeyAccess: authorized_keys options limit a key to some exports and
// to reading. dst info lists only what the key may see; dst attach to an
// export the key may not open fails naming what it may; a read-only key's
// writes fail and change nothing; dst serve logs at start which keys see
// what, and after a reload (SIGHUP) the new options hold for new sessions.
func TestKeyAccess(t *testing.T) {
	requireDst(t)
	requireTool(t, "nbdcopy")
	dir := t.TempDir()
	serverKey, serverPub := keygen(t, dir, "server")
	clientKey, clientPub := keygen(t, dir, "client")
	authorized := filepath.Join(dir, "authorized_keys")
	writeKeys := func(opts string) {
		if err := os.WriteFile(authorized, []byte(clientPub+" "+opts+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeKeys("exports=pub ro backup-host")
	for _, name := range []string{"pub", "secret"} {
		writeRandomFile(t, filepath.Join(dir, name+".img"), 4<<20)
	}
	before, err := os.ReadFile(filepath.Join(dir, "pub.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("DST_RUN_DIR", shortTempDir(t))
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	serve := startProc(t, "dst serve", dstBin, "serve", "--listen", addr, "--key", serverKey,
		"--authorized-keys", authorized, "--export", "pub="+filepath.Join(dir, "pub.img"),
		"--export", "secret="+filepath.Join(dir, "secret.img"), "--status-socket", "none")
	if err := serve.waitFor("listening", startTimeout, func() bool { return strings.Contains(serve.out.String(), "listening") }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(serve.out.String(), `comment=backup-host access="exports=pub ro"`) {
		t.Errorf("dst serve did not log what the key may open:\n%s", serve.out.String())
	}
	info := run(t, dstBin, "info", "--key", clientKey, "--server-key", serverPub, addr)
	if !strings.Contains(info, "pub") || strings.Contains(info, "secret") || !strings.Contains(info, "read-only") {
		t.Errorf("dst info for a key limited to pub, read-only:\n%s", info)
	}
	out, err := runErr(dstBin, "attach", "--key", clientKey, "--server-key", serverPub, addr, "secret",
		"--nbd-listen", "unix:"+filepath.Join(shortTempDir(t), "s.sock"))
	if err == nil || !strings.Contains(out, `no export named "secret"`) || !strings.Contains(out, `"pub"`) {
		t.Errorf("attach to an export the key may not open: %v\n%s", err, out)
	}

	sock := filepath.Join(shortTempDir(t), "pub.sock")
	att := startProc(t, "dst attach", dstBin, "attach", "--key", clientKey, "--server-key", serverPub, addr, "pub",
		"--nbd-listen", "unix:"+sock)
	if err := att.waitFor("NBD socket", startTimeout, func() bool { return isSocket(sock) }); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src")
	writeRandomFile(t, src, 1<<20)
	uri := "nbd+unix:///pub?socket=" + sock
	if out, err := runErr("nbdcopy", src, uri); err == nil {
		t.Errorf("nbdcopy onto a read-only key's export succeeded:\n%s", out)
	}
	att.stop(t)

	// Reload: the key may now write pub, and see secret.
	writeKeys("exports=pub,secret backup-host")
	serve.cmd.Process.Signal(syscall.SIGHUP)
	if err := serve.waitFor("the reload", 10*time.Second, func() bool {
		return strings.Contains(serve.out.String(), `access="exports=pub,secret rw"`)
	}); err != nil {
		t.Fatal(err)
	}
	info = run(t, dstBin, "info", "--key", clientKey, "--server-key", serverPub, addr)
	if !strings.Contains(info, "secret") {
		t.Errorf("dst info after the reload:\n%s", info)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "pub.img"))
	if string(before) != string(after) {
		t.Error("the refused writes changed the export")
	}
}

// TestWriterLease: one writer at a time, through the commands. A second
// dst attach of the export exits with an error naming the holder; one with
// --read-only joins, reads, and cannot write; dst serve status names the
// writer; --take-over takes the lease, after which the old holder fails
// for good and its writes never reach the disk; a detached writer frees the
// lease at once.
func TestWriterLease(t *testing.T) {
	requireDst(t)
	requireTool(t, "qemu-io")
	t.Setenv("DST_RUN_DIR", shortTempDir(t))
	s := startServer(t, &export{Name: "disk", Size: 16 << 20})
	a := s.attach(t, "disk", "--io-timeout", "5s")
	qemuIO(t, a.uri(), "write -P 0x41 0 1M")

	out, err := runErr(dstBin, "attach", "--key", s.clientKey, "--server-key", s.serverPub, s.addr, "disk",
		"--nbd-listen", "unix:"+filepath.Join(shortTempDir(t), "b.sock"))
	if err == nil || !regexp.MustCompile(`export "disk" is held for writing by .*\(127\.0\.0\.1:\d+\) since `).MatchString(out) ||
		!strings.Contains(out, "--take-over") {
		t.Fatalf("a second writer: %v\n%s", err, out)
	}
	r := s.attach(t, "disk", "--read-only", "--name", "reader")
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x41 0 1M", r.uri())
	if out, err := runErr("qemu-io", "-f", "raw", "-c", "write -P 0x52 0 4k", r.uri()); err == nil && !strings.Contains(out, "failed") {
		t.Errorf("a write through a --read-only attachment:\n%s", out)
	}
	if st := run(t, dstBin, "serve", "status"); !regexp.MustCompile(`(?m)^disk .*\(127\.0\.0\.1:\d+\) since `).MatchString(st) {
		t.Errorf("dst serve status does not name the writer:\n%s", st)
	}

	c := s.attach(t, "disk", "--take-over", "--name", "taker")
	qemuIO(t, c.uri(), "write -P 0x43 0 1M")
	// The old holder: fenced, then refused; its write fails and never lands.
	if out, err := runErr("qemu-io", "-f", "raw", "-c", "write -P 0x58 0 4k", a.uri()); err == nil && !strings.Contains(out, "failed") {
		t.Errorf("the old holder wrote after the take-over:\n%s", out)
	}
	if err := a.proc.waitFor("the old holder to fail", 15*time.Second, func() bool {
		return strings.Contains(a.proc.out.String(), "attachment failed")
	}); err != nil {
		t.Error(err)
	}
	qemuIO(t, c.uri(), "read -P 0x43 0 1M")

	// A writer that detaches lets the next one in at once.
	c.proc.stop(t)
	d := s.attach(t, "disk", "--name", "next")
	qemuIO(t, d.uri(), "write -P 0x44 0 4k", "read -P 0x44 0 4k", "read -P 0x43 4k 1020k")
}
