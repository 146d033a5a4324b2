package vm

import (
	"bytes"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// host is the host side of one scenario: keys, servers, control channel.
type host struct {
	t         *testing.T
	dir       string
	clientKey string // file; the guest has it as /opt/client.key
	authFile  string
	servers   map[string]*server
	order     []string
	ctlAddr   *net.TCPAddr
}

func newHost(t *testing.T) *host {
	h := &host{t: t, dir: t.TempDir(), servers: map[string]*server{}}
	h.clientKey = filepath.Join(h.dir, "client.key")
	pub := h.keygen(h.clientKey)
	h.authFile = filepath.Join(h.dir, "authorized_keys")
	if err := os.WriteFile(h.authFile, []byte(pub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return h
}

// keygen writes a private key to path and returns its public key.
func (h *host) keygen(path string) string {
	if out, err := exec.Command(dstBin, "keygen", "-o", path).CombinedOutput(); err != nil {
		h.t.Fatalf("dst keygen: %v\n%s", err, out)
	}
	f, err := os.Open(path)
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(dstBin, "pubkey")
	cmd.Stdin = f
	out, err := cmd.Output()
	if err != nil {
		h.t.Fatalf("dst pubkey: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// server is one host dst serve, restartable on the same port and files.
type server struct {
	h       *host
	spec    serverSpec
	addr    string
	key     string
	pub     string
	files   map[string]string // export name -> backing file
	logPath string

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	tracer   *exec.Cmd
	flushes0 int          // fdatasync calls of earlier runs
	trace    *lineCounter // this run's
}

func (h *host) addServer(spec serverSpec) *server {
	if h.servers[spec.name] != nil || spec.name == "" || strings.ContainsAny(spec.name, "/ -=") {
		h.t.Fatalf("vm: bad or duplicate server name %q", spec.name)
	}
	s := &server{h: h, spec: spec, addr: freePort(h.t), files: map[string]string{},
		key: filepath.Join(h.dir, "server-"+spec.name+".key"), logPath: filepath.Join(h.dir, "server-"+spec.name+".log")}
	s.pub = h.keygen(s.key)
	for _, e := range spec.exports {
		p := filepath.Join(h.dir, spec.name+"-"+e.name+".img")
		f, err := os.Create(p)
		if err == nil {
			err = f.Truncate(e.size)
			f.Close()
		}
		if err != nil {
			h.t.Fatal(err)
		}
		s.files[e.name] = p
	}
	h.servers[spec.name] = s
	h.order = append(h.order, spec.name)
	if err := s.start(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { s.stop(syscall.SIGKILL) })
	return s
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// grow truncates an export's file to size bytes and sends the server a
// SIGHUP, on which it looks for exports that grew.
func (s *server) grow(export, size string) error {
	n, err := strconv.ParseInt(size, 10, 64)
	if err != nil {
		return fmt.Errorf("grow: size %q: %w", size, err)
	}
	f := s.files[export]
	if f == "" {
		return fmt.Errorf("grow: server %s has no export %q", s.spec.name, export)
	}
	if err := os.Truncate(f, n); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return fmt.Errorf("grow: server %s is not running", s.spec.name)
	}
	return s.cmd.Process.Signal(syscall.SIGHUP)
}

// start runs the server (again) and returns once it accepts connections.
func (s *server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return fmt.Errorf("server %s already runs", s.spec.name)
	}
	args := []string{"serve", "--listen", s.addr, "--key", s.key, "--authorized-keys", s.h.authFile, "--log-level", "debug"}
	for _, e := range s.spec.exports {
		v := e.name + "=" + s.files[e.name]
		if e.readOnly {
			v += ",ro"
		}
		args = append(args, "--export", v)
	}
	log, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(dstBin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.cmd, s.exited = cmd, exited
	if err := waitListening(s.addr, exited); err != nil {
		return fmt.Errorf("server %s: %w (log %s)", s.spec.name, err, s.logPath)
	}
	if s.spec.countFlushes {
		return s.traceFlushes(cmd.Process.Pid)
	}
	return nil
}

func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("exited before listening on %s", addr)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not listening on %s after 20s", addr)
}

// traceFlushes attaches strace to every thread of pid, counting fdatasync
// calls: the server's File.Sync, which serves NBD FLUSH (FUA writes use
// pwritev2 with RWF_DSYNC instead).
func (s *server) traceFlushes(pid int) error {
	if _, err := exec.LookPath("strace"); err != nil {
		return fmt.Errorf("counting flushes needs strace: %w", err)
	}
	c := &lineCounter{match: []byte("fdatasync(")}
	tr := exec.Command("strace", "-f", "-qq", "-e", "trace=fdatasync", "-p", fmt.Sprint(pid))
	tr.Stderr = c
	if err := tr.Start(); err != nil {
		return err
	}
	s.tracer, s.trace = tr, c
	// strace has attached once the kernel names it the tracer.
	for i := 0; i < 100; i++ {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if bytes.Contains(b, []byte("TracerPid:\t")) && !bytes.Contains(b, []byte("TracerPid:\t0\n")) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("strace did not attach to server %s", s.spec.name)
}

// stop signals the server and waits for it to exit.
func (s *server) stop(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	if s.tracer != nil {
		s.tracer.Wait() // strace ends with its tracee
		s.flushes0 += s.trace.count()
		s.tracer, s.trace = nil, nil
	}
	s.cmd = nil
	return nil
}

// flushes returns the fdatasync calls the server made since it was declared.
func (s *server) flushes() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.spec.countFlushes {
		return 0, fmt.Errorf("server %s does not count flushes (serverSpec.countFlushes)", s.spec.name)
	}
	n := s.flushes0
	if s.trace != nil {
		n += s.trace.count()
	}
	return n, nil
}

// writeEnv writes the guest's /opt/vm.env, with the scenario's own
// variables last.
func (h *host) writeEnv(more map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "DST_KEY=/opt/%s\n", filepath.Base(h.clientKey))
	fmt.Fprintf(&b, "DST_VMCTL=10.0.2.2:%d\n", h.ctlAddr.Port)
	for _, name := range h.order {
		s := h.servers[name]
		_, port, _ := net.SplitHostPort(s.addr)
		fmt.Fprintf(&b, "DST_SERVER_%s=10.0.2.2:%s\n", name, port)
		fmt.Fprintf(&b, "DST_SERVER_KEY_%s='%s'\n", name, s.pub)
	}
	for _, k := range slices.Sorted(maps.Keys(more)) {
		fmt.Fprintf(&b, "%s='%s'\n", k, more[k])
	}
	p := filepath.Join(h.dir, "vm.env")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return p
}

func (h *host) dumpServerLogs() {
	for _, name := range h.order {
		b, _ := os.ReadFile(h.servers[name].logPath)
		if len(b) > 16<<10 {
			b = b[len(b)-16<<10:]
		}
		h.t.Logf("--- server %s log (tail) ---\n%s", name, b)
	}
}

// lineCounter counts lines containing match written to it.
type lineCounter struct {
	match []byte
	mu    sync.Mutex
	part  []byte
	n     int
}

func (c *lineCounter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.part = append(c.part, p...)
	for {
		i := bytes.IndexByte(c.part, '\n')
		if i < 0 {
			break
		}
		if bytes.Contains(c.part[:i], c.match) {
			c.n++
		}
		c.part = c.part[i+1:]
	}
	return len(p), nil
}

func (c *lineCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
