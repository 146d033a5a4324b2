package tests

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// startTimeout bounds how long serve and attach may take to become ready.
	startTimeout = 20 * time.Second
	// stopTimeout is how long a process gets between SIGTERM and SIGKILL.
	stopTimeout = 10 * time.Second
	// toolTimeout bounds one run of an external client (nbdcopy, qemu-io, ...).
	toolTimeout = 3 * time.Minute
)

var (
	dstBin   string
	buildErr error
)

func TestMain(m *testing.M) {
	// The test binary doubles as a spoofer of mDNS announcements, run in
	// a network namespace by TestDiscovery.
	if key := os.Getenv("DST_TEST_SPOOF_KEY"); key != "" {
		os.Exit(spoof(key, os.Getenv("DST_TEST_SPOOF_ADDR")))
	}
	os.Exit(runTests(m))
}

// runTests builds dst once for the whole package. A build failure is kept and
// reported by every test that needs the binary, rather than aborting here, so
// the failure shows up in the test log next to the test names.
func runTests(m *testing.M) int {
	// dst's run directory (device state, status sockets) is the test run's,
	// not the host's /run/dst.
	if os.Getenv("DST_RUN_DIR") == "" {
		run, err := os.MkdirTemp("", "dst-run-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "tests:", err)
			return 1
		}
		defer os.RemoveAll(run)
		os.Setenv("DST_RUN_DIR", run)
	}
	if p := os.Getenv("DST_BIN"); p != "" {
		dstBin = p
		return m.Run()
	}
	if standin() {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "dst-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tests:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	dstBin = filepath.Join(dir, "dst")
	cmd := exec.Command("go", "build", "-o", dstBin, "github.com/dstproject/dst/cmd/dst")
	if out, err := cmd.CombinedOutput(); err != nil {
		buildErr = fmt.Errorf("tests: go build ./cmd/dst: %w\n%s", err, out)
	}
	return m.Run()
}

func ci() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

// standin reports whether exports are served by nbdkit instead of dst, a mode
// for developing these tests before or without a working dst.
func standin() bool { return os.Getenv("DST_TEST_STANDIN") == "nbdkit" }

// requireTool fails (CI=true) or skips (otherwise) unless every named command
// is on PATH.
func requireTool(t testing.TB, names ...string) {
	t.Helper()
	var missing []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return
	}
	if ci() {
		t.Fatalf("tests: required tools missing with CI=true: %s", strings.Join(missing, ", "))
	}
	t.Skipf("tests: skipping, missing tools: %s (with CI=true this fails)", strings.Join(missing, ", "))
}

// requireDst fails if dst could not be built and skips in stand-in mode,
// where there is no dst to test.
func requireDst(t testing.TB) {
	t.Helper()
	if standin() {
		if ci() {
			t.Fatal("tests: DST_TEST_STANDIN must not be set with CI=true")
		}
		t.Skip("tests: needs dst itself; DST_TEST_STANDIN=nbdkit is set")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if ci() {
		t.Fatal("tests: this test needs root (CI=true)")
	}
	t.Skip("tests: needs root")
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is a long-running child process (serve, attach, nbdkit).
type proc struct {
	name string
	cmd  *exec.Cmd
	out  lockedBuffer // stdout and stderr
	done chan struct{}
	err  error // exit status; valid once done is closed
}

// startProc starts a child that is stopped at test cleanup; its output is
// logged if the test failed.
func startProc(t testing.TB, name string, argv ...string) *proc {
	t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	// A test binary killed by -timeout must not leave daemons holding sockets.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("tests: start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		// A dst built with -race (scripts/test runs the suite so too) reports
		// races on its output and carries on; a report is a failure.
		if strings.Contains(p.out.String(), "WARNING: DATA RACE") {
			t.Errorf("tests: %s reported a data race", name)
		}
		if t.Failed() {
			t.Logf("--- output of %s (%s):\n%s", name, strings.Join(argv, " "), p.out.String())
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and then SIGKILL; needing SIGKILL is a test failure,
// since dst promises to stop cleanly on SIGTERM.
func (p *proc) stop(t testing.TB) {
	t.Helper()
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(stopTimeout):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	t.Errorf("tests: %s did not exit within %v of SIGTERM", p.name, stopTimeout)
}

// waitFor polls cond until it holds, the process exits, or the timeout.
func (p *proc) waitFor(what string, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("tests: %s exited (%v) before %s", p.name, p.err, what)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tests: %s: no %s within %v", p.name, what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isSocket(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// shortTempDir is a temp dir with a short path: unix socket paths are
// limited to 108 bytes and t.TempDir embeds the test name.
func shortTempDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "dst")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// run runs a short command and fails the test if it fails.
func run(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := runErr(argv...)
	if err != nil {
		t.Fatalf("tests: %s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return out
}

// runErr runs a command with toolTimeout and returns its combined output.
func runErr(argv ...string) (string, error) {
	return runIn(nil, argv...)
}

// runIn is runErr with stdin.
func runIn(stdin io.Reader, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", toolTimeout, err)
	}
	return string(out), err
}

// writeRandomFile writes size pseudo-random bytes; the seed is logged so a
// failure can be reproduced.
func writeRandomFile(t testing.TB, path string, size int64) {
	t.Helper()
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(time.Now().UnixNano()))
	t.Logf("random data seed %x for %s", seed[:8], filepath.Base(path))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.NewChaCha8(seed), size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// sameContent fails the test unless want and got hold the same bytes over
// the first n bytes, naming the first differing offset.
func sameContent(t testing.TB, want, got string, n int64) {
	t.Helper()
	if err := compareFiles(want, got, n); err != nil {
		t.Fatal(err)
	}
}

func compareFiles(a, b string, n int64) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < n; {
		k := int(min(int64(len(ba)), n-off))
		if _, err := io.ReadFull(fa, ba[:k]); err != nil {
			return fmt.Errorf("tests: read %s at %d: %w", a, off, err)
		}
		if _, err := io.ReadFull(fb, bb[:k]); err != nil {
			return fmt.Errorf("tests: read %s at %d: %w", b, off, err)
		}
		if !bytes.Equal(ba[:k], bb[:k]) {
			for i := range k {
				if ba[i] != bb[i] {
					return fmt.Errorf("tests: %s and %s differ at offset %d", a, b, off+int64(i))
				}
			}
		}
		off += int64(k)
	}
	return nil
}
