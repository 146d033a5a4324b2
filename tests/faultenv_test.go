package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/faultproxy"
	"github.com/dstproject/dst/internal/nbdclient"
	"github.com/dstproject/dst/internal/verify"
)

// The fault tests' attach settings: a dead session is noticed within about
// a second, and a transaction has 15 s, far more than any fault injected
// below the deadline lasts.
var faultAttachArgs = []string{"--keepalive", "200ms", "--keepalive-timeout", "1s", "--io-timeout", "15s"}

// faultBlock is the workloads' block size; faultBlocks is how many they
// use, from offset 0. Blocks past them are free for the zombie probes.
const (
	faultBlock  = 4096
	faultBlocks = 256
	faultSize   = 8 << 20
)

// faultEnv is one export served by a `dst serve` that can be killed and
// started again on the same port, reached by `dst attach` through a fault
// proxy that lives in the test process, and an NBD client on attach's
// socket. The proxy dials serve afresh for every connection, so attach's
// redials reach whichever serve runs at the time.
type faultEnv struct {
	t        testing.TB
	dir      string
	path     string // the export's backing file
	volatile bool   // the export models a volatile write cache
	upstream string // an NBD URI served instead of path (newUpstreamEnv)

	serverKey, authorized, clientKey, serverPub string

	addr   string // serve's address, the same across restarts
	serve  *proc
	starts int
	logs   []*proc // every serve started, for grepping their output

	proxy *faultproxy.Proxy
	via   string // where attach dials, if not the proxy (TestChecksumCorruption)
	att   *proc
	sock  string
	nbd   *nbdclient.Client
}

// newFaultEnv starts serve and the proxy; startAttach completes the path.
func newFaultEnv(t testing.TB, volatile bool) *faultEnv {
	t.Helper()
	return newFaultEnvWith(t, &faultEnv{volatile: volatile})
}

// newUpstreamEnv is newFaultEnv for an export served from the NBD server
// at uri.
func newUpstreamEnv(t testing.TB, uri string) *faultEnv {
	t.Helper()
	return newFaultEnvWith(t, &faultEnv{upstream: uri})
}

func newFaultEnvWith(t testing.TB, e *faultEnv) *faultEnv {
	t.Helper()
	requireDst(t)
	e.t, e.dir = t, t.TempDir()
	e.path = filepath.Join(e.dir, "disk.img")
	e.newBackingFile()
	var clientPub string
	e.serverKey, e.serverPub = keygen(t, e.dir, "server")
	e.clientKey, clientPub = keygen(t, e.dir, "client")
	e.authorized = filepath.Join(e.dir, "authorized_keys")
	if err := os.WriteFile(e.authorized, []byte(clientPub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs last: on a failure the end of the
	// test's output (what CI shows) is attach's last lines.
	t.Cleanup(func() {
		if t.Failed() && e.att != nil {
			lines := strings.Split(strings.TrimSpace(e.att.out.String()), "\n")
			t.Logf("--- last lines of dst attach:\n%s", strings.Join(lines[max(0, len(lines)-12):], "\n"))
		}
	})
	e.startServe()
	p, err := faultproxy.New(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	e.proxy = p
	t.Cleanup(func() { p.Close() })
	return e
}

// newBackingFile replaces the export's file with a new, zeroed one: a
// different disk at the same path.
func (e *faultEnv) newBackingFile() {
	e.t.Helper()
	if err := os.Remove(e.path); err != nil && !os.IsNotExist(err) {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(e.path, nil, 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Truncate(e.path, faultSize); err != nil {
		e.t.Fatal(err)
	}
}

// startServe starts serve, on a free port the first time and on the same
// one afterwards.
func (e *faultEnv) startServe() {
	e.t.Helper()
	spec := "disk=" + e.path
	if e.upstream != "" {
		spec = "disk=" + e.upstream
	}
	if e.volatile {
		spec += ",volatile"
	}
	var err error
	for range 3 {
		if e.starts == 0 {
			e.addr = fmt.Sprintf("127.0.0.1:%d", freePort(e.t))
		}
		e.starts++
		e.serve = startProc(e.t, fmt.Sprintf("dst serve #%d", e.starts), dstBin, "serve", "--listen", e.addr,
			"--key", e.serverKey, "--authorized-keys", e.authorized, "--export", spec)
		e.logs = append(e.logs, e.serve)
		err = e.serve.waitFor(`"listening" log line`, startTimeout, func() bool {
			return strings.Contains(e.serve.out.String(), "listening")
		})
		if err == nil {
			return
		}
		// Only a first start may move to another port: later ones must
		// be found where attach looks.
		if e.starts > 1 || !strings.Contains(e.serve.out.String(), "address already in use") {
			break
		}
		e.starts = 0
	}
	e.t.Fatal(err)
}

// killServe ends serve with SIGKILL: no chance to flush or say goodbye.
func (e *faultEnv) killServe() {
	e.t.Helper()
	if e.serve.exited() {
		e.t.Fatalf("tests: dst serve exited by itself: %v", e.serve.err)
	}
	_ = e.serve.cmd.Process.Kill()
	<-e.serve.done
}

// serveLog is the output of every serve started so far.
func (e *faultEnv) serveLog() string {
	var b strings.Builder
	for _, p := range e.logs {
		b.WriteString(p.out.String())
	}
	return b.String()
}

// startAttach starts attach against the proxy (or e.via), with
// faultAttachArgs then extra (a flag given twice takes its last value),
// and dials its socket.
func (e *faultEnv) startAttach(extra ...string) *nbdclient.Client {
	e.t.Helper()
	e.sock = filepath.Join(shortTempDir(e.t), "nbd.sock")
	addr := e.proxy.Addr()
	if e.via != "" {
		addr = e.via
	}
	argv := []string{dstBin, "attach", "--key", e.clientKey, "--server-key", e.serverPub,
		addr, "disk", "--nbd-listen", "unix:" + e.sock}
	argv = append(append(argv, faultAttachArgs...), extra...)
	e.att = startProc(e.t, "dst attach", argv...)
	if err := e.att.waitFor("NBD socket", startTimeout, func() bool { return isSocket(e.sock) }); err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := nbdclient.Dial(ctx, "unix", e.sock, "disk")
	if err != nil {
		e.t.Fatal(err)
	}
	e.nbd = c
	e.t.Cleanup(func() { c.Close() })
	return c
}

// txStats is attach's "transaction stats" line, logged as it exits.
type txStats struct {
	Reconnects, Resent, Replayed, Timeouts, ChecksumRetries int64
}

func (s txStats) String() string {
	return fmt.Sprintf("reconnects=%d resent=%d replayed=%d timeouts=%d checksum_retries=%d",
		s.Reconnects, s.Resent, s.Replayed, s.Timeouts, s.ChecksumRetries)
}

var statsField = regexp.MustCompile(`\b(reconnects|resent|replayed|timeouts|checksum_retries)=(\d+)`)

// stopAttach closes the NBD client, stops attach with SIGTERM and returns
// the stats it logged.
func (e *faultEnv) stopAttach() txStats {
	e.t.Helper()
	e.nbd.Close()
	e.att.stop(e.t)
	out := e.att.out.String()
	i := strings.LastIndex(out, "transaction stats")
	if i < 0 {
		e.t.Fatalf("tests: attach logged no transaction stats:\n%s", out)
	}
	line, _, _ := strings.Cut(out[i:], "\n")
	var s txStats
	fields := map[string]*int64{"reconnects": &s.Reconnects, "resent": &s.Resent, "replayed": &s.Replayed,
		"timeouts": &s.Timeouts, "checksum_retries": &s.ChecksumRetries}
	for _, m := range statsField.FindAllStringSubmatch(line, -1) {
		n, err := strconv.ParseInt(m[2], 10, 64)
		if err != nil {
			e.t.Fatalf("tests: stats line %q: %v", line, err)
		}
		*fields[m[1]] = n
		delete(fields, m[1])
	}
	if len(fields) > 0 {
		e.t.Fatalf("tests: stats line %q lacks %d fields", line, len(fields))
	}
	return s
}

var reconnectedAfter = regexp.MustCompile(`msg=reconnected .*\bafter=(\S+)`)

// reconnectTimes lists the "after=" of attach's "reconnected" lines: how
// long each reconnect took from the moment the loss was noticed.
func (e *faultEnv) reconnectTimes() []time.Duration {
	var ds []time.Duration
	for _, m := range reconnectedAfter.FindAllStringSubmatch(e.att.out.String(), -1) {
		if d, err := time.ParseDuration(m[1]); err == nil {
			ds = append(ds, d)
		}
	}
	return ds
}

// fileBlock reads block b of the export's backing file directly.
func (e *faultEnv) fileBlock(b int64) []byte {
	e.t.Helper()
	f, err := os.Open(e.path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	p := make([]byte, faultBlock)
	if _, err := f.ReadAt(p, b*faultBlock); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// faultWorkload is a verifying workload over the first faultBlocks blocks.
func faultWorkload(depth int, rule verify.Rule) *verify.Workload {
	return &verify.Workload{BlockSize: faultBlock, Blocks: faultBlocks, Depth: depth, Rule: rule,
		FlushPercent: 5, ReadPercent: 30, FUAPercent: 10}
}

// runFor runs w on d for dur and returns its report so far.
func runFor(t testing.TB, w *verify.Workload, d verify.Disk, dur time.Duration) verify.Report {
	t.Helper()
	w.Duration = dur
	if err := w.Run(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	return w.Report()
}

// runAsync starts runFor in the background; the channel yields its report.
func runAsync(t testing.TB, w *verify.Workload, d verify.Disk, dur time.Duration) <-chan verify.Report {
	return runUntil(t, context.Background(), w, d, dur)
}

// runUntil is runAsync that also stops issuing when ctx ends.
func runUntil(t testing.TB, ctx context.Context, w *verify.Workload, d verify.Disk,
	dur time.Duration) <-chan verify.Report {
	ch := make(chan verify.Report, 1)
	w.Duration = dur
	go func() {
		if err := w.Run(ctx, d); err != nil {
			t.Error(err)
		}
		ch <- w.Report()
	}()
	return ch
}

// verifyClean reads every block back and fails on violations or, unless
// errorsOK, on any error the workload saw.
func verifyClean(t testing.TB, w *verify.Workload, d verify.Disk, errorsOK bool) verify.Report {
	t.Helper()
	rep, err := w.Verify(d)
	if err != nil {
		t.Fatalf("tests: verify: %v", err)
	}
	t.Logf("workload: %v", &rep)
	if !errorsOK && rep.Failed() > 0 {
		t.Errorf("tests: %d errors reached the NBD client: %v %q", rep.Failed(), rep.Errors, rep.FirstErrors)
	}
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
	return rep
}

// onlyEIO fails unless every error in rep is EIO.
func onlyEIO(t testing.TB, rep verify.Report) {
	t.Helper()
	for k, n := range rep.Errors {
		if k != "EIO" {
			t.Errorf("tests: %d errors of kind %s, want only EIO: %q", n, k, rep.FirstErrors)
		}
	}
}

// timedDisk measures how long after a mark the first operation started
// after it completes successfully, and the longest operation, and counts
// failures of operations started before and after the mark.
type timedDisk struct {
	d       verify.Disk
	mark    atomic.Int64 // unix nanoseconds; 0 is unset
	first   atomic.Int64 // unix nanoseconds of the first success after mark
	longest atomic.Int64 // nanoseconds

	failedBefore, failedAfter atomic.Int64
	startedAfter              atomic.Int64 // operations started after the mark
	lastErr                   atomic.Pointer[string]
}

func (t *timedDisk) setMark() {
	t.first.Store(0)
	t.startedAfter.Store(0)
	t.mark.Store(time.Now().UnixNano())
}

// sinceMark is the time from the mark to the first success after it.
func (t *timedDisk) sinceMark() time.Duration {
	f := t.first.Load()
	if f == 0 {
		return -1
	}
	return time.Duration(f - t.mark.Load())
}

func (t *timedDisk) op(f func() error) error {
	start := time.Now().UnixNano()
	err := f()
	end := time.Now().UnixNano()
	for {
		l := t.longest.Load()
		if end-start <= l || t.longest.CompareAndSwap(l, end-start) {
			break
		}
	}
	m := t.mark.Load()
	if m != 0 && start >= m {
		t.startedAfter.Add(1)
	}
	if err != nil {
		msg := err.Error()
		t.lastErr.Store(&msg)
	}
	switch {
	case err == nil && m != 0 && start >= m:
		t.first.CompareAndSwap(0, end)
	case err != nil && m != 0 && start >= m:
		t.failedAfter.Add(1)
	case err != nil:
		t.failedBefore.Add(1)
	}
	return err
}

func (t *timedDisk) ReadAt(p []byte, off int64) error {
	return t.op(func() error { return t.d.ReadAt(p, off) })
}

func (t *timedDisk) WriteAt(p []byte, off int64, fua bool) error {
	return t.op(func() error { return t.d.WriteAt(p, off, fua) })
}

func (t *timedDisk) Flush() error { return t.op(t.d.Flush) }

// zombiePattern is a block no workload writes: if it ever shows up on the
// disk, a write reported failed was applied.
func zombiePattern(tag string) []byte {
	p := bytes.Repeat([]byte("ZOMBIE "+tag+" "), faultBlock)
	return p[:faultBlock]
}

// isEIO reports whether err carries EIO.
func isEIO(err error) bool { return errors.Is(err, syscall.EIO) }
