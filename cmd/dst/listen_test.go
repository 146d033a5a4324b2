package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestListenNBDSocketMode creates the NBD socket many times under umask 000
// while another goroutine stats its path as fast as it can. Whenever the
// path exists it must be a socket with mode 0600: a moment at 0777 is
// enough for another user to connect and keep the connection.
func TestListenNBDSocketMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nbd.sock")
	defer unix.Umask(unix.Umask(0))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var seen, bad int
	var badMode os.FileMode
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			fi, err := os.Lstat(path)
			if err != nil {
				continue
			}
			seen++
			if m := fi.Mode(); m.Type() != os.ModeSocket || m.Perm() != 0o600 {
				bad++
				badMode = m
			}
		}
	})
	const runs = 200
	for range runs {
		l, err := listenNBD("unix", path)
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
		l.Close()
	}
	close(stop)
	wg.Wait()
	if bad > 0 {
		t.Errorf("the socket path was seen %d times in %d listens, %d of them with mode %v, want %v",
			seen, runs, bad, badMode, os.ModeSocket|0o600)
	}
	if seen == 0 {
		t.Errorf("the socket path was never seen in %d listens: the watcher checked nothing", runs)
	}
	t.Logf("socket path seen %d times in %d listens", seen, runs)
	if left, _ := os.ReadDir(dir); len(left) > 0 {
		t.Errorf("left behind in the socket's directory: %v", left)
	}
}

// TestListenNBDExistingPath keeps what --nbd-listen does with a path that
// already exists: a stale socket is replaced, a live one or a file refused.
func TestListenNBDExistingPath(t *testing.T) {
	dir := t.TempDir()

	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l, err = listenNBD("unix", stale)
	if err != nil {
		t.Fatalf("a stale socket was not replaced: %v", err)
	}
	if c, err := net.Dial("unix", stale); err != nil {
		t.Errorf("dialling the new socket: %v", err)
	} else {
		c.Close()
	}
	l.Close()
	if _, err := os.Lstat(stale); !os.IsNotExist(err) {
		t.Errorf("the socket outlived its listener: %v", err)
	}

	live := filepath.Join(dir, "live.sock")
	other, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if l, err := listenNBD("unix", live); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("listening on a socket in use: error %v, want one saying it is in use", err)
		if l != nil {
			l.Close()
		}
	}

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := listenNBD("unix", file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listening on a regular file: error %v, want one saying it is not a socket", err)
		if l != nil {
			l.Close()
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "data" {
		t.Errorf("the regular file at the socket path was changed: %q", b)
	}
}
