package tests

import (
	"path/filepath"
	"regexp"
	"testing"
)

// TestMultiConnection attaches over two TCP connections, so requests and
// their flushes are spread over independent encrypted sessions, and checks
// data with nbdcopy and fio's verifier.
func TestMultiConnection(t *testing.T) {
	requireTool(t, "nbdcopy", "fio")
	const size = 64 << 20
	s := startServer(t, &export{Name: "disk", Size: 96 << 20})
	a := s.attach(t, "disk", "--connections", "2")
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src"), filepath.Join(dir, "back")
	writeRandomFile(t, src, size)
	run(t, "nbdcopy", "--flush", src, a.uri())
	run(t, "nbdcopy", a.uri(), back)
	sameContent(t, src, back, size)
	sameContent(t, src, s.lookup(t, "disk").Path, size)
	out := run(t, fioVerify(a.uri(), "--rw=randwrite", "--bs=4k", "--iodepth=32", "--numjobs=2",
		"--offset_increment=32m", "--size=32m", "--output-format=json")...)
	checkFio(t, out)
}

// TestCiphers runs I/O over each channel cipher the client can ask for and
// checks the server agreed to that cipher.
func TestCiphers(t *testing.T) {
	requireDst(t)
	requireTool(t, "qemu-io")
	for _, c := range []string{"aes-256-gcm", "chacha20-poly1305"} {
		t.Run(c, func(t *testing.T) {
			s := startServer(t, &export{Name: "disk", Size: 16 << 20})
			a := s.attach(t, "disk", "--cipher", c)
			qemuIO(t, a.uri(), "write -P 0x2f 0 2M", "flush", "read -P 0x2f 0 2M")
			if !regexp.MustCompile(`cipher=` + c).MatchString(s.proc.out.String()) {
				t.Errorf("tests: server log does not show a session with cipher %s", c)
			}
		})
	}
}
