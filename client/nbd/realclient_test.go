package nbd_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
)

// needTool returns the path of an external client. In CI a missing tool is
// a failure, elsewhere the test is skipped with the reason.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI: %v", name, err)
		}
		t.Skipf("%s not installed: %v", name, err)
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, needTool(t, name), args...)
	cmd.Dir = t.TempDir() // fio leaves verify state files behind
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func uri(path, name string) string { return "nbd+unix:///" + name + "?socket=" + path }

func TestNbdinfo(t *testing.T) {
	rw, _ := memExport(64 << 20)
	ro, _ := memExport(1 << 20)
	ro.Name, ro.Description, ro.ReadOnly = "ro", "read only disk", true
	ro.Flush, ro.FUA, ro.Trim, ro.WriteZeroes, ro.MultiConn = false, false, false, false, false
	ro.MinBlockSize, ro.PreferredBlockSize, ro.MaxBlockSize = 512, 4096, 1<<20
	path, _ := serveUnix(t, &nbd.Server{Exports: []*nbd.Export{rw, ro}})

	type export struct {
		Name      string `json:"export-name"`
		Desc      string `json:"description"`
		Size      uint64 `json:"export-size"`
		ReadOnly  bool   `json:"is_read_only"`
		Flush     bool   `json:"can_flush"`
		FUA       bool   `json:"can_fua"`
		Trim      bool   `json:"can_trim"`
		Zero      bool   `json:"can_zero"`
		MultiConn bool   `json:"can_multi_conn"`
		MinBlock  uint32 `json:"block_size_minimum"`
		PrefBlock uint32 `json:"block_size_preferred"`
		MaxBlock  uint32 `json:"block_size_maximum"`
	}
	var info struct {
		Exports []export `json:"exports"`
	}
	parse := func(out string) {
		t.Helper()
		info.Exports = nil
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("nbdinfo output: %v\n%s", err, out)
		}
	}
	wantRW := export{Name: "mem", Desc: "test disk", Size: 64 << 20, Flush: true, FUA: true, Trim: true, Zero: true,
		MultiConn: true, MinBlock: 1, PrefBlock: 4096, MaxBlock: 32 << 20}
	wantRO := export{Name: "ro", Desc: "read only disk", Size: 1 << 20, ReadOnly: true, MinBlock: 512, PrefBlock: 4096, MaxBlock: 1 << 20}

	parse(run(t, "nbdinfo", "--json", uri(path, "")))
	if len(info.Exports) != 1 || info.Exports[0] != wantRW {
		t.Errorf("nbdinfo default export:\n got %+v\nwant %+v", info.Exports, wantRW)
	}
	parse(run(t, "nbdinfo", "--json", uri(path, "ro")))
	if len(info.Exports) != 1 || info.Exports[0] != wantRO {
		t.Errorf("nbdinfo ro:\n got %+v\nwant %+v", info.Exports, wantRO)
	}
	parse(run(t, "nbdinfo", "--json", "--list", uri(path, "")))
	if len(info.Exports) != 2 || info.Exports[0] != wantRW || info.Exports[1] != wantRO {
		t.Errorf("nbdinfo --list:\n got %+v\nwant %+v, %+v", info.Exports, wantRW, wantRO)
	}
}

func TestQemuIO(t *testing.T) {
	e, dev := memExport(1 << 20)
	path, _ := serveUnix(t, &nbd.Server{Exports: []*nbd.Export{e}})
	out := run(t, "qemu-io", "-f", "raw", uri(path, ""),
		"-c", "write -P 0xab 0 64k",
		"-c", "read -P 0xab 0 64k",
		"-c", "write -z 64k 64k",
		"-c", "write -P 0xcd -f 128k 4k",
		"-c", "flush",
		"-c", "read -P 0 1020k 4k")
	if strings.Contains(out, "fail") || strings.Contains(out, "Pattern verification") {
		t.Errorf("qemu-io: %s", out)
	}
	got := dev.Bytes()
	if !bytes.Equal(got[:64<<10], bytes.Repeat([]byte{0xab}, 64<<10)) || got[128<<10] != 0xcd {
		t.Error("device contents differ from what qemu-io wrote")
	}
	if dev.Flushes() == 0 || dev.FUAWrites() == 0 {
		t.Errorf("flushes %d, FUA writes %d", dev.Flushes(), dev.FUAWrites())
	}
	// A read-only export refuses qemu-io's write with EPERM.
	ro, _ := memExport(1 << 20)
	ro.ReadOnly = true
	path, _ = serveUnix(t, &nbd.Server{Exports: []*nbd.Export{ro}})
	out = run(t, "qemu-io", "-f", "raw", "-r", uri(path, ""), "-c", "read -P 0 0 4k")
	if strings.Contains(out, "fail") {
		t.Errorf("qemu-io read of ro export: %s", out)
	}
}

func TestNbdcopy(t *testing.T) {
	const size = 8 << 20
	e, dev := memExport(size)
	path, _ := serveUnix(t, &nbd.Server{Exports: []*nbd.Export{e}})
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	data := make([]byte, size)
	rand.Read(data[:size/2]) // the zero tail lets nbdcopy use its zeroing path
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dev.WriteAt(bytes.Repeat([]byte{0xff}, size), 0) // zeroing must really happen
	run(t, "nbdcopy", "--flush", src, uri(path, ""))
	if !bytes.Equal(dev.Bytes(), data) {
		t.Fatal("device differs from the copied file")
	}
	run(t, "nbdcopy", uri(path, ""), dst)
	back, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Error("file copied back differs")
	}
}

func TestFio(t *testing.T) {
	needTool(t, "fio")
	if !strings.Contains(run(t, "fio", "--enghelp"), "nbd") {
		if os.Getenv("CI") == "true" {
			t.Fatal("fio has no nbd engine")
		}
		t.Skip("fio has no nbd engine")
	}
	e, _ := memExport(16 << 20)
	path, _ := serveUnix(t, &nbd.Server{Exports: []*nbd.Export{e}})
	out := run(t, "fio", "--name=nbd", "--ioengine=nbd", "--uri="+uri(path, ""),
		"--rw=randrw", "--bs=4k", "--iodepth=32", "--size=16m", "--verify=crc32c",
		"--do_verify=1", "--verify_fatal=1", "--output-format=terse", "--terse-version=3")
	var fields []string
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "3;") {
			fields = strings.Split(line, ";")
		}
	}
	// Terse v3: field 4 is the error, 5 the read KiB, 46 the write KiB.
	if len(fields) < 50 || fields[4] != "0" || fields[5] == "0" || fields[46] == "0" {
		t.Fatalf("fio: %s", out)
	}
	t.Logf("fio: read %s KiB at %s KiB/s, wrote %s KiB at %s KiB/s", fields[5], fields[6], fields[46], fields[47])
}
