package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dstproject/dst/wire"
)

func makeFile(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(i*7 + 1)
	}
	if err := os.WriteFile(path, p, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func openTest(t *testing.T, path string, ro bool) *File {
	t.Helper()
	f, err := OpenFile(path, ro, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// dataAt reports whether the file has data (not a hole) at off.
func dataAt(t *testing.T, f *File, off int64) bool {
	t.Helper()
	hole, err := unix.Seek(f.fd, off, unix.SEEK_HOLE)
	if err != nil {
		t.Fatal(err)
	}
	return hole != off
}

func TestFileSize(t *testing.T) {
	for _, tt := range []struct {
		size, want int64
	}{
		{1 << 20, 1 << 20},
		{1<<20 + 100, 1 << 20},
		{512, 512},
		{1023, 512},
	} {
		f := openTest(t, makeFile(t, tt.size), false)
		if got, _ := f.Size(); got != tt.want {
			t.Errorf("file of %d bytes: size %d, want %d", tt.size, got, tt.want)
		}
	}
	if _, err := OpenFile(makeFile(t, 511), false, nil); err == nil {
		t.Error("file smaller than a block opened")
	}
	if _, err := OpenFile(t.TempDir(), true, nil); err == nil {
		t.Error("directory opened")
	}
	if _, err := OpenFile(filepath.Join(t.TempDir(), "missing"), false, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestFileReadWrite(t *testing.T) {
	f := openTest(t, makeFile(t, 1<<20), false)
	logical, physical, rot, trim := f.Info()
	if logical != 512 || physical != 4096 || rot || !trim {
		t.Fatalf("Info = %d %d %v %v; ext4 and tmpfs punch holes", logical, physical, rot, trim)
	}
	p := bytes.Repeat([]byte("dst!"), 2048)
	if n, err := f.WriteAt(p, 4096); n != len(p) || err != nil {
		t.Fatal(n, err)
	}
	if err := f.WriteAtFUA(p[:4096], 64<<10); err != nil {
		t.Fatal(err)
	}
	f.noDsyncWrite.Store(true) // the pwrite+fdatasync fallback
	if err := f.WriteAtFUA(p[:4096], 128<<10); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{4096, 64 << 10, 128 << 10} {
		got := make([]byte, 4096)
		if n, err := f.ReadAt(got, off); n != 4096 || err != nil {
			t.Fatal(n, err)
		}
		if !bytes.Equal(got, p[:4096]) {
			t.Fatalf("data at %d differs", off)
		}
	}
	got := make([]byte, 1024)
	if n, err := f.ReadAt(got, 1<<20-512); n != 512 || err != io.EOF {
		t.Fatalf("read across the end: %d, %v", n, err)
	}
}

func TestFileTrimAndZeroes(t *testing.T) {
	f := openTest(t, makeFile(t, 1<<20), false)
	zero := make([]byte, 64<<10)
	check := func(what string, off int64, hole bool) {
		t.Helper()
		got := make([]byte, len(zero))
		if _, err := f.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, zero) {
			t.Errorf("%s: range does not read as zeroes", what)
		}
		if dataAt(t, f, off) == hole {
			t.Errorf("%s: hole = %v, want %v", what, !hole, hole)
		}
		// Neighbours untouched.
		b := make([]byte, 1)
		f.ReadAt(b, off+int64(len(zero)))
		if b[0] != byte((off+int64(len(zero)))*7+1) {
			t.Errorf("%s: byte after the range changed", what)
		}
	}
	if err := f.Trim(64<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	check("trim", 64<<10, true)
	if err := f.WriteZeroes(256<<10, 64<<10, false); err != nil {
		t.Fatal(err)
	}
	check("write zeroes", 256<<10, true)
	if err := f.WriteZeroes(512<<10, 64<<10, true); err != nil {
		t.Fatal(err)
	}
	check("write zeroes, no hole", 512<<10, false)
	f.noZeroRange.Store(true) // the written-zeroes fallback
	if err := f.WriteZeroes(768<<10, 64<<10, true); err != nil {
		t.Fatal(err)
	}
	check("written zeroes", 768<<10, false)
	if size, _ := f.Size(); size != 1<<20 {
		t.Fatalf("size changed to %d", size)
	}
}

func TestFileReadOnly(t *testing.T) {
	path := makeFile(t, 1<<20)
	f := openTest(t, path, true)
	if _, _, _, trim := f.Info(); trim {
		t.Error("read-only export offers trim")
	}
	p := make([]byte, 512)
	_, err := f.WriteAt(p, 0)
	for i, err := range []error{err, f.WriteAtFUA(p, 0), f.Trim(0, 512), f.WriteZeroes(0, 512, false)} {
		if st := errStatus(err); st != wire.StatusEPERM {
			t.Errorf("modification %d: %v (%v), want EPERM", i, st, err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Errorf("Sync on read-only: %v", err)
	}
	if _, err := f.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if p[1] != 8 {
		t.Fatal("file changed")
	}
}

func TestFileIdentity(t *testing.T) {
	path := makeFile(t, 1<<20)
	idAt := func(path string, ro bool) wire.Identity {
		f, err := OpenFile(path, ro, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return f.Identity()
	}
	id := func(ro bool) wire.Identity { return idAt(path, ro) }
	first := id(false)
	if first.IsZero() {
		t.Fatal("zero identity")
	}
	if again := id(false); again != first {
		t.Fatalf("identity changed on reopen: %v, %v", first, again)
	}
	if ro := id(true); ro != first {
		t.Fatalf("identity differs read-only: %v, %v", first, ro)
	}
	// Same path, new file.
	tmp := path + ".new"
	if err := os.WriteFile(tmp, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if replaced := id(false); replaced == first {
		t.Fatal("replaced file kept the identity")
	}
	// The identity survives a rename.
	moved := path + ".moved"
	want := id(false)
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	if got := idAt(moved, false); got != want {
		t.Fatal("identity changed on rename")
	}
}

func TestInodeIdentity(t *testing.T) {
	open := func(path string) int {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return int(f.Fd())
	}
	a, b := makeFile(t, 512), makeFile(t, 512)
	ia1, err := inodeIdentity(open(a))
	if err != nil {
		t.Fatal(err)
	}
	ia2, _ := inodeIdentity(open(a))
	ib, _ := inodeIdentity(open(b))
	if ia1 != ia2 || ia1 == ib || ia1.IsZero() {
		t.Fatalf("inode identities %v %v %v", ia1, ia2, ib)
	}
}

func TestBlockIdentityFallback(t *testing.T) {
	dir := t.TempDir()
	rdev := unix.Mkdev(7, 3)
	a, b := blockIdentity(dir, rdev, 1<<30), blockIdentity(dir, rdev, 1<<30)
	if a != b {
		t.Fatal("not deterministic")
	}
	if c := blockIdentity(dir, rdev, 2<<30); c == a {
		t.Fatal("size not part of the fallback identity")
	}
	os.WriteFile(filepath.Join(dir, "wwid"), []byte("naa.5000c500a1b2c3d4\n"), 0o600)
	w := blockIdentity(dir, rdev, 1<<30)
	if w == a || blockIdentity(dir, unix.Mkdev(8, 0), 5<<30) != w {
		t.Fatal("the WWID does not decide the identity")
	}
}

func TestErrStatus(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want wire.Status
	}{
		{nil, wire.StatusOK},
		{fmt.Errorf("x: %w", syscall.ENOSPC), wire.StatusENOSPC},
		{fmt.Errorf("x: %w", syscall.EDQUOT), wire.StatusENOSPC},
		{fmt.Errorf("x: %w", syscall.EROFS), wire.StatusEPERM},
		{&os.PathError{Op: "open", Path: "p", Err: syscall.EACCES}, wire.StatusEPERM},
		{syscall.EOPNOTSUPP, wire.StatusENOTSUP},
		{syscall.EIO, wire.StatusEIO},
		{syscall.ENXIO, wire.StatusEIO},
		{io.ErrUnexpectedEOF, wire.StatusEIO},
		{errors.New("anything"), wire.StatusEIO},
	} {
		if got := errStatus(tt.err); got != tt.want {
			t.Errorf("errStatus(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestExportLocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	rw, err := OpenFile(path, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		if _, err := OpenFile(path, ro, nil); err == nil || !strings.Contains(err.Error(), "already exported") {
			t.Errorf("second open (read-only %v) while exported read-write: %v", ro, err)
		}
	}
	rw.Close()
	ro1, err := OpenFile(path, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ro1.Close()
	ro2, err := OpenFile(path, true, nil)
	if err != nil {
		t.Fatalf("two read-only exports: %v", err)
	}
	ro2.Close()
	if _, err := OpenFile(path, false, nil); err == nil {
		t.Error("read-write export while exported read-only elsewhere")
	}
}
