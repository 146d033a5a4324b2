package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// export describes one backing file served by `dst serve`.
type export struct {
	Name     string
	Size     int64
	ReadOnly bool
	Path     string // set by startServer
}

// server is a running `dst serve` with its keys.
type server struct {
	dir       string
	addr      string
	serverPub string // base64 public key the clients pin
	clientKey string // path of an authorized client's private key
	exports   []*export
	proc      *proc // nil in stand-in mode
}

// attachment is a running `dst attach` (or nbdkit stand-in) with its socket.
type attachment struct {
	export string
	sock   string
	proc   *proc
}

// uri is the export by the default (empty) name.
func (a *attachment) uri() string { return "nbd+unix:///?socket=" + a.sock }

// namedURI is the export by its own name.
func (a *attachment) namedURI() string { return "nbd+unix:///" + a.export + "?socket=" + a.sock }

// keygen makes a key pair with the dst CLI and returns the private key's path
// and the public key.
func keygen(t testing.TB, dir, name string) (keyPath, pub string) {
	t.Helper()
	keyPath = filepath.Join(dir, name+".key")
	run(t, dstBin, "keygen", "-o", keyPath)
	fi, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("tests: dst keygen -o wrote %s with mode %v, want 0600", keyPath, fi.Mode().Perm())
	}
	f, err := os.Open(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := runIn(f, dstBin, "pubkey")
	if err != nil {
		t.Fatalf("tests: dst pubkey: %v\n%s", err, out)
	}
	pub = strings.TrimSpace(out)
	if len(pub) != 44 {
		t.Fatalf("tests: dst pubkey printed %q, want 44 base64 characters", pub)
	}
	return keyPath, pub
}

// startServer creates sparse backing files for exps and starts `dst serve`
// exporting them to one authorized client key.
func startServer(t testing.TB, exps ...*export) *server {
	t.Helper()
	s := &server{dir: t.TempDir(), exports: exps}
	for _, e := range exps {
		e.Path = filepath.Join(s.dir, e.Name+".img")
		if err := os.WriteFile(e.Path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(e.Path, e.Size); err != nil {
			t.Fatal(err)
		}
	}
	if standin() {
		return s
	}
	requireDst(t)
	serverKey, pub := keygen(t, s.dir, "server")
	s.serverPub = pub
	var clientPub string
	s.clientKey, clientPub = keygen(t, s.dir, "client")
	authorized := filepath.Join(s.dir, "authorized_keys")
	if err := os.WriteFile(authorized, []byte(clientPub+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A port picked by listening on :0 can be taken again before serve binds
	// it; retry a few times rather than flake.
	var err error
	for range 3 {
		s.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		argv := []string{dstBin, "serve", "--listen", s.addr, "--key", serverKey, "--authorized-keys", authorized}
		for _, e := range exps {
			spec := e.Name + "=" + e.Path
			if e.ReadOnly {
				spec += ",ro"
			}
			argv = append(argv, "--export", spec)
		}
		s.proc = startProc(t, "dst serve", argv...)
		err = s.proc.waitFor(`"listening" log line`, startTimeout, func() bool {
			return strings.Contains(s.proc.out.String(), "listening")
		})
		if err == nil {
			return s
		}
		if !strings.Contains(s.proc.out.String(), "address already in use") {
			break
		}
	}
	t.Fatal(err)
	return nil
}

// lookup returns the export called name.
func (s *server) lookup(t testing.TB, name string) *export {
	t.Helper()
	for _, e := range s.exports {
		if e.Name == name {
			return e
		}
	}
	t.Fatalf("tests: no export %q", name)
	return nil
}

// attach starts `dst attach` for export and waits for its NBD socket.
func (s *server) attach(t testing.TB, name string, extra ...string) *attachment {
	t.Helper()
	a := &attachment{export: name, sock: filepath.Join(shortTempDir(t), "nbd.sock")}
	if standin() {
		e := s.lookup(t, name)
		argv := []string{"nbdkit", "-f", "-U", a.sock}
		if e.ReadOnly {
			argv = append(argv, "-r")
		}
		a.proc = startProc(t, "nbdkit", append(argv, "file", e.Path)...)
	} else {
		argv := append([]string{dstBin, "attach", "--key", s.clientKey, "--server-key", s.serverPub,
			s.addr, name, "--nbd-listen", "unix:" + a.sock}, extra...)
		a.proc = startProc(t, "dst attach "+name, argv...)
	}
	if err := a.proc.waitFor("NBD socket", startTimeout, func() bool { return isSocket(a.sock) }); err != nil {
		t.Fatal(err)
	}
	return a
}

// failedAttach is the outcome of an attach that is expected to fail.
type failedAttach struct {
	err        error  // exit status; nil means it exited 0
	out        string // stdout and stderr
	socketSeen bool   // the NBD socket existed at some point
	timedOut   bool   // still running after startTimeout (then killed)
}

// attachExpectingFailure runs `dst attach` with the given key files and
// export, watching the NBD socket path the whole time it runs.
func (s *server) attachExpectingFailure(t testing.TB, keyPath, serverPub, name string) failedAttach {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "nbd.sock")
	p := startProc(t, "dst attach (expected to fail) "+name, dstBin, "attach", "--key", keyPath,
		"--server-key", serverPub, s.addr, name, "--nbd-listen", "unix:"+sock)
	var r failedAttach
	deadline := time.Now().Add(startTimeout)
	for !p.exited() && time.Now().Before(deadline) {
		if _, err := os.Lstat(sock); err == nil {
			r.socketSeen = true
		}
		time.Sleep(2 * time.Millisecond)
	}
	if !p.exited() {
		r.timedOut = true
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	if _, err := os.Lstat(sock); err == nil {
		r.socketSeen = true
	}
	r.err, r.out = p.err, p.out.String()
	return r
}

// alive fails the test if the server process has exited.
func (s *server) alive(t testing.TB) {
	t.Helper()
	if s.proc != nil && s.proc.exited() {
		t.Fatalf("tests: dst serve exited: %v\n%s", s.proc.err, s.proc.out.String())
	}
}

// info runs `dst info` as the authorized client.
func (s *server) info(t testing.TB) string {
	t.Helper()
	return run(t, dstBin, "info", "--key", s.clientKey, "--server-key", s.serverPub, s.addr)
}
