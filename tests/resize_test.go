package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/nbdclient"
)

// TestResize: an export file that grows under a running dst serve is
// noticed on SIGHUP; the attachment hears of it over its control session
// (a "resized" event, the new size in dst status), a new NBD connection
// is told the new size, and the bytes past the old end can be written
// and read back. A file that shrinks is logged and the size kept. On
// SIGTERM the attachment hears that the server is stopping.
func TestResize(t *testing.T) {
	ownRunDir(t, "a resize event")
	e := newFaultEnv(t, false)
	c := e.startAttach("--name", "rs")
	ev := startProc(t, "dst events", dstBin, "events", "--json", "rs")
	time.Sleep(300 * time.Millisecond) // subscribed before the resize

	const grown = 2 * faultSize
	if err := os.Truncate(e.path, grown); err != nil {
		t.Fatal(err)
	}
	hup := time.Now()
	if err := e.serve.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	statusSize := func() uint64 {
		var sts []struct{ Size uint64 }
		out, err := runErr(dstBin, "status", "--json", "rs")
		if err != nil || json.Unmarshal([]byte(out), &sts) != nil || len(sts) != 1 {
			t.Fatalf("dst status --json rs: %v\n%s", err, out)
		}
		return sts[0].Size
	}
	if err := ev.waitFor("a resized event", 10*time.Second, func() bool {
		return strings.Contains(ev.out.String(), `"type":"resized"`)
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("attachment resized %v after SIGHUP", time.Since(hup).Round(time.Millisecond))
	if got := statusSize(); got != grown {
		t.Fatalf("dst status: size %d after the export grew to %d", got, grown)
	}
	if !strings.Contains(ev.out.String(), `"size":16777216`) {
		t.Errorf("the resized event lacks the new size:\n%s", ev.out.String())
	}

	// The connection made before the resize keeps the size it was told;
	// a new one learns the new size and reaches the new bytes.
	if c.Size() != faultSize {
		t.Errorf("the first NBD connection's size is %d", c.Size())
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c2, err := nbdclient.Dial(ctx, "unix", e.sock, "disk")
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.Size() != grown {
		t.Fatalf("a new NBD connection is told %d bytes, want %d", c2.Size(), grown)
	}
	p := bytes.Repeat([]byte("grown"), faultBlock/5+1)[:faultBlock]
	off := int64(grown - faultBlock)
	if err := c2.WriteAt(p, off, true); err != nil {
		t.Fatalf("writing the last block of the grown export: %v", err)
	}
	got := make([]byte, faultBlock)
	if err := c2.ReadAt(got, off); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("reading the last block back: %v, same=%v", err, bytes.Equal(got, p))
	}
	f, err := os.Open(e.path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(got, off)
	f.Close()
	if err != nil || !bytes.Equal(got, p) {
		t.Fatalf("the backing file's last block: %v, same=%v", err, bytes.Equal(got, p))
	}

	// Shrinking is refused: logged, and the size kept.
	if err := os.Truncate(e.path, faultSize); err != nil {
		t.Fatal(err)
	}
	e.serve.cmd.Process.Signal(syscall.SIGHUP)
	if err := e.serve.waitFor("the shrink to be logged", 10*time.Second, func() bool {
		return strings.Contains(e.serve.out.String(), "export is smaller than its clients were told")
	}); err != nil {
		t.Fatal(err)
	}
	if got := statusSize(); got != grown {
		t.Errorf("dst status: size %d after the file shrank; want %d kept", got, grown)
	}

	// A server stopping tells its clients first.
	e.serve.stop(t)
	if err := ev.waitFor("a server-stopping event", 10*time.Second, func() bool {
		return strings.Contains(ev.out.String(), `"type":"server-stopping"`)
	}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ev.out.String(), "dst serve is stopping") {
		t.Errorf("the server-stopping event lacks the server's reason:\n%s", ev.out.String())
	}
}
