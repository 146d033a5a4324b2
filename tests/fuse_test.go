package tests

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFUSEExt4 puts ext4 on the export without a kernel NBD driver:
// qemu-storage-daemon turns the NBD export into a regular file (FUSE), a loop
// device turns that into a block device. It writes files, checks the
// filesystem with e2fsck after unmounting, mounts again and verifies the data.
func TestFUSEExt4(t *testing.T) {
	requireRoot(t)
	requireTool(t, "qemu-storage-daemon", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "mountpoint", "blockdev")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if ci() {
			t.Fatalf("tests: /dev/fuse: %v", err)
		}
		t.Skipf("tests: no FUSE: %v", err)
	}
	s := startServer(t, &export{Name: "fs", Size: 256 << 20})
	a := s.attach(t, "fs")
	dir := shortTempDir(t)
	file, mnt, pidfile := filepath.Join(dir, "disk.raw"), filepath.Join(dir, "mnt"), filepath.Join(dir, "qsd.pid")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}

	// Cleanups run last-in first-out: umount, then the loop device, then qsd.
	t.Cleanup(func() { stopQSD(t, pidfile, file) })
	run(t, "qemu-storage-daemon",
		"--blockdev", "driver=nbd,server.type=unix,server.path="+a.sock+",export=fs,node-name=n0",
		"--export", "type=fuse,id=e0,node-name=n0,mountpoint="+file+",writable=on",
		"--pidfile", pidfile, "--daemonize")
	if fi, err := os.Stat(file); err != nil || fi.Size() != 256<<20 {
		t.Fatalf("tests: FUSE file %s: %v, size %v, want %d", file, err, fi, 256<<20)
	}
	// Buffered, not --direct-io=on: direct I/O on a FUSE-backed loop device
	// corrupted ext4 on this kernel.
	loop := strings.TrimSpace(run(t, "losetup", "-f", "--show", file))
	t.Cleanup(func() {
		if out, err := runErr("losetup", "-d", loop); err != nil {
			t.Errorf("tests: losetup -d %s: %v\n%s", loop, err, out)
		}
	})
	run(t, "mkfs.ext4", "-q", "-F", loop)
	mount(t, loop, mnt)

	files := writeTree(t, mnt, 24)
	run(t, "sync")
	umount(t, mnt)
	if out, err := runErr("e2fsck", "-f", "-n", loop); err != nil {
		t.Fatalf("tests: e2fsck -f -n %s: %v\n%s", loop, err, out)
	}
	// Drop the loop device's page cache so the next mount reads through NBD.
	run(t, "blockdev", "--flushbufs", loop)
	mount(t, loop, mnt)
	for name, sum := range files {
		if got := fileSum(t, filepath.Join(mnt, name)); got != sum {
			t.Errorf("tests: %s: checksum %x after remount, want %x", name, got, sum)
		}
	}
	umount(t, mnt)
	s.alive(t)
}

func mount(t testing.TB, dev, mnt string) {
	t.Helper()
	run(t, "mount", dev, mnt)
	t.Cleanup(func() {
		if _, err := runErr("mountpoint", "-q", mnt); err == nil {
			if out, err := runErr("umount", mnt); err != nil {
				t.Errorf("tests: umount %s: %v\n%s", mnt, err, out)
			}
		}
	})
}

func umount(t testing.TB, mnt string) {
	t.Helper()
	run(t, "umount", mnt)
}

// writeTree writes n files of random size and content into dir and returns
// their checksums.
func writeTree(t testing.TB, dir string, n int) map[string][32]byte {
	t.Helper()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	sums := make(map[string][32]byte)
	for i := range n {
		name := fmt.Sprintf("f%02d", i)
		if i%4 == 3 {
			name = filepath.Join(fmt.Sprintf("d%d", i), name)
			if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		size := 1 + r.IntN(4<<20)
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		sums[name] = sha256.Sum256(data)
	}
	return sums
}

func fileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("tests: read %s: %v", path, err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// stopQSD stops qemu-storage-daemon, which removes its FUSE mount on SIGTERM;
// a lazy fusermount is the fallback so a stuck daemon cannot leave a mount.
func stopQSD(t testing.TB, pidfile, file string) {
	t.Helper()
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return // never started
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil {
		t.Errorf("tests: qsd pidfile %q: %v", b, err)
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for deadline := time.Now().Add(stopTimeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
	t.Errorf("tests: qemu-storage-daemon %d ignored SIGTERM", pid)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	_, _ = runErr("fusermount3", "-u", "-z", file)
}
