package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// build compiles gofloor into a temporary directory.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gofloor")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// pair is a unix socketpair as two files.
func pair(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "a"), os.NewFile(uintptr(fds[1]), "b")
}

// TestStages runs each mode as a middle and as an end stage, 100 tokens:
// every token must come back whole, and on the chain's end the stage must
// report the round trips it passed.
func TestStages(t *testing.T) {
	bin := build(t)
	const n, trips = 4096, 100
	for _, mode := range []string{"poller", "block"} {
		for _, role := range []string{"middle", "end"} {
			t.Run(mode+"-"+role, func(t *testing.T) {
				up, upStage := pair(t)
				files := []*os.File{upStage}
				var down *os.File
				if role == "middle" {
					downStage, d := pair(t)
					files, down = append(files, downStage), d
				}
				cmd := exec.Command(bin, mode, role, fmt.Sprint(n))
				var stderr bytes.Buffer
				cmd.ExtraFiles, cmd.Stderr = files, &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				for _, f := range files {
					f.Close()
				}
				tok, got := make([]byte, n), make([]byte, n)
				for i := range trips {
					for j := range tok {
						tok[j] = byte(i + j)
					}
					if _, err := up.Write(tok); err != nil {
						t.Fatal(err)
					}
					if down != nil {
						if _, err := io.ReadFull(down, got); err != nil || !bytes.Equal(got, tok) {
							t.Fatalf("token %d going down: %v, equal %v", i, err, bytes.Equal(got, tok))
						}
						if _, err := down.Write(got); err != nil {
							t.Fatal(err)
						}
					}
					if _, err := io.ReadFull(up, got); err != nil || !bytes.Equal(got, tok) {
						t.Fatalf("token %d coming back: %v, equal %v", i, err, bytes.Equal(got, tok))
					}
				}
				up.Close()
				if down != nil {
					down.Close()
				}
				if err := cmd.Wait(); err != nil {
					t.Fatalf("gofloor: %v\n%s", err, &stderr)
				}
				want := fmt.Sprintf("gofloor %s %s: %d round trips, ", mode, role, trips)
				if !strings.HasPrefix(stderr.String(), want) {
					t.Errorf("reported %q, want it to start %q", &stderr, want)
				}
			})
		}
	}
}

// TestBadUsage: a wrong mode, role or payload is refused with a message
// naming it.
func TestBadUsage(t *testing.T) {
	bin := build(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"spin", "end", "4096"}, "unknown mode"},
		{[]string{"poller", "first", "4096"}, "middle or end"},
		{[]string{"poller", "end", "0"}, "PAYLOAD"},
		{[]string{"poller"}, "usage"},
	} {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("gofloor %q: err %v, output %q; want an error saying %q", c.args, err, out, c.want)
		}
	}
}
