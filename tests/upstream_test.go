package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/verify"
)

// The README's worked examples of an upstream-NBD backend: a qcow2 image
// served by qemu-storage-daemon, and nbdkit's file plugin, each behind
// dst serve on a unix socket.

// startQSD serves a new qcow2 image of size bytes as export "vm1" with
// qemu-storage-daemon; it returns the image's path, the NBD URI and the
// daemon.
func startQSD(t *testing.T, size int64) (img, uri string, p *proc) {
	t.Helper()
	requireTool(t, "qemu-storage-daemon", "qemu-img")
	dir := shortTempDir(t)
	img = filepath.Join(dir, "vm1.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, fmt.Sprint(size))
	sock := filepath.Join(dir, "qsd.sock")
	p = startProc(t, "qemu-storage-daemon", "qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=file0,filename="+img+",cache.direct=off",
		"--blockdev", "driver=qcow2,node-name=vm1,file=file0",
		"--nbd-server", "addr.type=unix,addr.path="+sock,
		"--export", "type=nbd,id=exp0,node-name=vm1,name=vm1,writable=on")
	if err := p.waitFor("its NBD socket", startTimeout, func() bool { return isSocket(sock) }); err != nil {
		t.Fatal(err)
	}
	return img, "nbd+unix:///vm1?socket=" + sock, p
}

// traceSyncs starts strace on every thread of pid (and those it starts),
// recording fsync and fdatasync; the returned function stops it and
// counts them.
func traceSyncs(t *testing.T, pid int) func() int {
	t.Helper()
	requireTool(t, "strace")
	out := filepath.Join(t.TempDir(), "strace.out")
	argv := []string{"strace", "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", out}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		argv = append(argv, "-p", task.Name())
	}
	p := startProc(t, "strace", argv...)
	time.Sleep(500 * time.Millisecond) // attached
	return func() int {
		p.stop(t)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "fsync(") + strings.Count(string(b), "fdatasync(")
	}
}

// opCount is how many requests of op the attachment name completed, from
// dst status --json.
func opCount(t *testing.T, name, op string) uint64 {
	t.Helper()
	out := run(t, dstBin, "status", "--json", name)
	var st []struct {
		Latency map[string]struct {
			Count uint64 `json:"count"`
		} `json:"latency"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 1 {
		t.Fatalf("tests: dst status --json: %v\n%s", err, out)
	}
	for k, v := range st[0].Latency {
		if strings.EqualFold(k, op) {
			return v.Count
		}
	}
	return 0
}

// TestUpstreamQemuStorageDaemon copies 256 MiB of random data onto a
// qcow2 image through dst attach, dst serve and qemu-storage-daemon,
// reads it back, and checks the image with qemu-img check and the flushes
// the daemon did against those dst serve was sent.
func TestUpstreamQemuStorageDaemon(t *testing.T) {
	requireTool(t, "nbdcopy")
	const size = 256 << 20
	img, uri, qsd := startQSD(t, size)
	t.Setenv("DST_RUN_DIR", shortTempDir(t))
	e := newUpstreamEnv(t, uri)
	e.startAttach("--name", "vm1")
	syncs := traceSyncs(t, qsd.cmd.Process.Pid)
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src"), filepath.Join(dir, "back")
	writeRandomFile(t, src, size)
	nbd := "nbd+unix:///?socket=" + e.sock
	start := time.Now()
	run(t, "nbdcopy", "--flush", src, nbd)
	w := time.Since(start)
	run(t, "nbdcopy", nbd, back)
	sameContent(t, src, back, size)
	sent := opCount(t, "vm1", "flush")
	e.stopAttach()
	did := syncs()
	t.Logf("nbdcopy 256 MiB onto qcow2 through dst: %.0f MB/s; FLUSH sent through dst %d, fsync/fdatasync by qemu-storage-daemon %d",
		float64(size)/1e6/w.Seconds(), sent, did)
	if sent == 0 || did < int(sent) {
		t.Errorf("tests: %d flushes sent, %d done by qemu-storage-daemon: want at least one, and at least as many done", sent, did)
	}
	e.killServe()
	out := run(t, "qemu-img", "check", "-U", img)
	if !strings.Contains(out, "No errors were found") {
		t.Errorf("tests: qemu-img check:\n%s", out)
	}
}

// nbdkitFile is nbdkit's file plugin serving a file of its own on a unix
// socket, in the foreground so a test can kill it and start it again.
type nbdkitFile struct {
	t          *testing.T
	file, sock string
	p          *proc
}

func newNbdkitFile(t *testing.T, size int) *nbdkitFile {
	t.Helper()
	requireTool(t, "nbdkit")
	dir := shortTempDir(t)
	n := &nbdkitFile{t: t, file: filepath.Join(dir, "disk.img"), sock: filepath.Join(dir, "nbdkit.sock")}
	if err := os.WriteFile(n.file, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start()
	return n
}

func (n *nbdkitFile) uri() string { return "nbd+unix:///?socket=" + n.sock }

func (n *nbdkitFile) start() {
	n.t.Helper()
	n.p = startProc(n.t, "nbdkit", "nbdkit", "-f", "-U", n.sock, "file", n.file)
	if err := n.p.waitFor("its socket", startTimeout, func() bool { return isSocket(n.sock) }); err != nil {
		n.t.Fatal(err)
	}
}

// kill ends nbdkit with SIGKILL, as a crash would.
func (n *nbdkitFile) kill() {
	n.p.cmd.Process.Kill()
	<-n.p.done
	os.Remove(n.sock)
}

// TestUpstreamNbdkitRestart runs a verified QD32 workload through dst in
// front of nbdkit's file plugin, and kills and restarts nbdkit twice
// mid-run: no error may reach the NBD client, and every acknowledged write
// must read back.
func TestUpstreamNbdkitRestart(t *testing.T) {
	nk := newNbdkitFile(t, faultSize)
	e := newUpstreamEnv(t, nk.uri())
	c := e.startAttach()
	w := faultWorkload(32, verify.RequireAcked)
	done := runAsync(t, w, c, 5*time.Second)
	for range 2 {
		time.Sleep(1500 * time.Millisecond)
		nk.kill()
		time.Sleep(200 * time.Millisecond)
		nk.start()
	}
	<-done
	verifyClean(t, w, c, false)
	st := e.stopAttach()
	log := e.serveLog()
	t.Logf("attach: reconnects=%d resent=%d replayed=%d timeouts=%d; serve: %d upstream losses, %d reconnects",
		st.Reconnects, st.Resent, st.Replayed, st.Timeouts,
		strings.Count(log, "upstream connection lost"), strings.Count(log, "upstream reconnected"))
	if strings.Count(log, "upstream reconnected") < 2 {
		t.Errorf("tests: serve reconnected to nbdkit fewer than twice")
	}
	if st.Replayed == 0 {
		t.Errorf("tests: no write was replayed after the upstream was lost")
	}
	e.serve.stop(t) // nbdkit waits for its clients before it exits
}

// TestUpstreamZombie takes the upstream away for longer than attach's
// I/O timeout: a probe write fails with EIO, and after nbdkit is back it
// never appears in the file: the request expired before it could be sent
// upstream.
func TestUpstreamZombie(t *testing.T) {
	nk := newNbdkitFile(t, faultSize)
	e := newUpstreamEnv(t, nk.uri())
	c := e.startAttach("--io-timeout", "2s")
	if err := c.WriteAt(make([]byte, faultBlock), 0, false); err != nil {
		t.Fatal(err)
	}
	// Flushed, so nothing is replayed and the probe is the request that
	// waits in dst serve for the upstream.
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	nk.kill()
	probe := zombiePattern("upstream")
	start := time.Now()
	err := c.WriteAt(probe, int64(faultBlocks+1)*faultBlock, false)
	took := time.Since(start)
	if !isEIO(err) {
		t.Fatalf("tests: probe write with the upstream gone: %v, want EIO", err)
	}
	nk.start()
	time.Sleep(time.Second)
	if err := c.Flush(); err != nil {
		t.Fatalf("tests: flush once nbdkit is back: %v", err)
	}
	b, err := os.ReadFile(nk.file)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, probe[:64]) {
		t.Fatal("tests: the probe write that failed reached the upstream")
	}
	e.stopAttach()
	e.serve.stop(t) // nbdkit waits for its clients before it exits
	log := e.serveLog()
	expired := strings.Count(log, "expired before it could be sent upstream")
	t.Logf("probe failed with EIO after %v; serve logged %d requests expired before they could be sent upstream",
		took.Round(time.Millisecond), expired)
	if expired == 0 {
		t.Errorf("tests: the probe never waited in dst serve for the upstream")
	}
}

// TestUpstreamFioVerify writes 64 MiB at random with fio's nbd engine at
// QD32 through dst in front of nbdkit's file plugin, with nbdkit killed
// and restarted during the writes, then lets fio read everything back and
// check it (verify=crc32c): no error may reach fio.
func TestUpstreamFioVerify(t *testing.T) {
	requireTool(t, "fio")
	nk := newNbdkitFile(t, 64<<20)
	e := newUpstreamEnv(t, nk.uri())
	e.startAttach()
	fio := startProc(t, "fio", fioVerify("nbd+unix:///?socket="+e.sock,
		"--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=64m", "--output-format=terse")...)
	time.Sleep(300 * time.Millisecond)
	if fio.exited() {
		t.Fatalf("tests: fio ended before the fault: %v\n%s", fio.err, fio.out.String())
	}
	nk.kill()
	time.Sleep(200 * time.Millisecond)
	nk.start()
	if err := fio.waitFor("fio to finish", 2*time.Minute, fio.exited); err != nil {
		t.Fatal(err)
	}
	if fio.err != nil {
		t.Fatalf("tests: fio failed: %v\n%s", fio.err, fio.out.String())
	}
	st := e.stopAttach()
	e.serve.stop(t) // nbdkit waits for its clients before it exits
	t.Logf("fio verify clean; attach: reconnects=%d resent=%d replayed=%d; serve: %d upstream losses",
		st.Reconnects, st.Resent, st.Replayed, strings.Count(e.serveLog(), "upstream connection lost"))
	if st.Reconnects == 0 {
		t.Errorf("tests: the fault came after fio's writes: no reconnect")
	}
}
