package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestShapes runs every shape on a small file: each must move all its bytes
// through every stage (a record that does not open, or a stage that stops
// early, fails the run) and print a positive rate and CPU time.
func TestShapes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "seqfloor")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, make([]byte, 4*chunkSize), 0o600); err != nil {
		t.Fatal(err)
	}
	for shape := range shapes {
		out, err := exec.Command(bin, shape, file, "3").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", shape, err, out)
		}
		f := strings.Fields(string(out))
		if len(f) != 3 || f[0] != shape {
			t.Fatalf("%s printed %q, want %q, a rate and a CPU time", shape, out, shape)
		}
		for _, v := range f[1:] {
			if r, err := strconv.ParseFloat(v, 64); err != nil || r <= 0 {
				t.Fatalf("%s: %q is not a positive figure", shape, v)
			}
		}
	}
}

// TestBadUsage: an unknown shape or a size that is not a positive number
// is refused with a message naming what is wrong.
func TestBadUsage(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "seqfloor")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"read-nfs", "f", "1"}, {"read-dst", "f", "0"}, {"read-dst"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "SHAPE") {
			t.Errorf("seqfloor %q: err %v, output %q; want a usage error", args, err, out)
		}
	}
}
