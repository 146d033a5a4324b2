package client

import (
	"bytes"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/internal/nbdwire"
)

// nbdDo runs one request through the NBD adapter, as the front end would.
func nbdDo(t *testing.T, d nbd.Device, cmd nbdwire.Command, flags nbdwire.CmdFlags, off uint64, data []byte) error {
	t.Helper()
	ch := make(chan error, 1)
	d.Submit(nbd.NewRequest(cmd, flags, off, uint32(len(data)), data, func(_ *nbd.Request, err error) { ch <- err }))
	select {
	case err := <-ch:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("no completion")
		return nil
	}
}

// TestNBDAdapter: NBD requests reach the engine with their command and
// flags translated, batches included, and a command the engine does not
// know completes with EINVAL instead of reaching the wire.
func TestNBDAdapter(t *testing.T) {
	env := newEnv(t, "pipe", 1<<20)
	a := env.attach(t, "disk", 1)
	defer a.Close()
	dev := a.NBDExport().Device
	bd, ok := dev.(nbd.BatchDevice)
	if !ok {
		t.Fatal("the adapter is not an nbd.BatchDevice")
	}

	data := bytes.Repeat([]byte{0x5a}, 40*512)
	if err := nbdDo(t, dev, nbdwire.CmdWrite, nbdwire.FlagFUA, 4096, data); err != nil {
		t.Fatalf("FUA write: %v", err)
	}
	if err := nbdDo(t, dev, nbdwire.Command(99), 0, 0, nil); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("unknown command: %v, want EINVAL", err)
	}

	// A batch larger than the adapter's stack array.
	const n = 40
	got := make([][]byte, n)
	errs := make(chan error, n)
	var rs []*nbd.Request
	for i := range n {
		got[i] = make([]byte, 512)
		rs = append(rs, nbd.NewRequest(nbdwire.CmdRead, 0, 4096+uint64(i)*512, 512, got[i],
			func(_ *nbd.Request, err error) { errs <- err }))
	}
	bd.SubmitBatch(rs)
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("batched read: %v", err)
		}
	}
	for i := range n {
		if !bytes.Equal(got[i], data[i*512:(i+1)*512]) {
			t.Fatalf("batched read %d: wrong data", i)
		}
	}
	if s := a.Stats(); s.Reconnects != 0 {
		t.Fatalf("stats %+v: want no reconnect", s)
	}
}
