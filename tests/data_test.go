package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNbdcopyRoundTrip writes 256 MiB of random data through the export with
// nbdcopy, reads it back, and checks the server's backing file holds exactly
// those bytes, both while attached (after nbdcopy's flush) and after attach
// has been stopped.
func TestNbdcopyRoundTrip(t *testing.T) {
	requireTool(t, "nbdcopy")
	const size = 256 << 20
	s := startServer(t, &export{Name: "disk", Size: size})
	a := s.attach(t, "disk")
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src"), filepath.Join(dir, "back")
	writeRandomFile(t, src, size)

	start := time.Now()
	run(t, "nbdcopy", "--flush", src, a.uri())
	w := time.Since(start)
	start = time.Now()
	run(t, "nbdcopy", a.namedURI(), back)
	r := time.Since(start)
	t.Logf("nbdcopy 256 MiB: write %.0f MB/s, read %.0f MB/s",
		float64(size)/1e6/w.Seconds(), float64(size)/1e6/r.Seconds())

	sameContent(t, src, back, size)
	sameContent(t, src, s.lookup(t, "disk").Path, size)

	a.proc.stop(t)
	sameContent(t, src, s.lookup(t, "disk").Path, size)
	fi, err := os.Stat(s.lookup(t, "disk").Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size {
		t.Errorf("tests: backing file is %d bytes after the copy, want %d", fi.Size(), size)
	}
}

// TestQemuImg converts a raw image into the export and back out.
func TestQemuImg(t *testing.T) {
	requireTool(t, "qemu-img")
	const size, part = 64 << 20, 24 << 20
	s := startServer(t, &export{Name: "disk", Size: size})
	a := s.attach(t, "disk")
	dir := t.TempDir()
	in, out, want := filepath.Join(dir, "in.raw"), filepath.Join(dir, "out.raw"), filepath.Join(dir, "want.raw")

	var img struct {
		VirtualSize int64  `json:"virtual-size"`
		Format      string `json:"format"`
	}
	js := run(t, "qemu-img", "info", "--output=json", a.namedURI())
	if err := json.Unmarshal([]byte(js), &img); err != nil {
		t.Fatalf("tests: qemu-img info: %v\n%s", err, js)
	}
	if img.VirtualSize != size || img.Format != "raw" {
		t.Errorf("tests: qemu-img info: virtual-size %d format %q, want %d raw", img.VirtualSize, img.Format, size)
	}

	writeRandomFile(t, in, part)
	// -n: the target exists; qemu-img must not try to create it.
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", in, a.uri())
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", a.uri(), out)

	// Expected image: the random part, then the untouched (zero) rest.
	b, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(want, append(b, make([]byte, size-part)...), 0o600); err != nil {
		t.Fatal(err)
	}
	sameContent(t, want, out, size)
}

// TestQemuIO exercises write, read, flush, discard and write-zeroes with
// pattern checks; qemu-io exits non-zero on a failed command or a pattern
// mismatch.
func TestQemuIO(t *testing.T) {
	requireTool(t, "qemu-io")
	s := startServer(t, &export{Name: "disk", Size: 32 << 20})
	a := s.attach(t, "disk")
	qemuIO(t, a.uri(),
		"write -P 0xa5 0 4M",
		"write -P 0x5a 4M 64k",
		"write -P 0x11 8M 3584", // sub-4k, 512-aligned
		"flush",
		"read -P 0xa5 0 4M",
		"read -P 0x5a 4M 64k",
		"read -P 0x11 8M 3584",
		"write -z 1M 1M",
		"read -P 0 1M 1M",
		"read -P 0xa5 0 1M",
		"read -P 0xa5 2M 2M",
		"write -z -u 4M 64k", // zeroes that may unmap
		"read -P 0 4M 64k",
		"discard 0 1M",
		"read -P 0xa5 2M 2M",
		"write -P 0x77 -f 16M 1M", // FUA
		"read -P 0x77 16M 1M",
		"flush",
	)
	// A second connection sees what the first wrote and flushed.
	qemuIO(t, a.namedURI(), "read -P 0x77 16M 1M", "read -P 0 1M 1M", "read -P 0 4M 64k")
}

// qemuIO runs commands in one qemu-io session and fails on any error.
func qemuIO(t testing.TB, uri string, cmds ...string) string {
	t.Helper()
	argv := []string{"qemu-io", "-f", "raw"}
	for _, c := range cmds {
		argv = append(argv, "-c", c)
	}
	out := run(t, append(argv, uri)...)
	if strings.Contains(out, "failed") {
		t.Fatalf("tests: qemu-io reported a failure:\n%s", out)
	}
	return out
}
