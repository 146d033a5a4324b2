package client

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/tamper"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/wire"
)

// TestChecksumRetry drives a real server through a proxy that holds both
// keys and flips a bit in payloads after their checksums were computed,
// as memory corruption in either program would. A READ whose payload
// fails its checksum is read again and never delivered; a WRITE whose
// payload fails is refused by the server (BAD_CHECKSUM), never applied,
// and sent again. A transaction is sent at most maxTries times in all,
// then fails with EIO, and the queue goes on serving: a checksum failure
// is not a session error.
func TestChecksumRetry(t *testing.T) {
	testsupport.LeakCheck(t)
	const size = 1 << 20
	env := newEnv(t, "tcp", size)
	p, err := tamper.New(tamper.Config{Target: env.addr, ServerKey: env.server, ClientKey: env.client})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	cfg := &AttachConfig{Config: *env.config(), Export: "disk", Connections: 1}
	cfg.Server = p.Addr()
	a, err := Attach(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	defer a.Close()
	evs, stop := a.Subscribe(16)
	defer stop()

	disk := func(off, n int) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(env.dir, "disk"))
		if err != nil {
			t.Fatal(err)
		}
		return b[off : off+n]
	}
	pattern := func(seed byte) []byte {
		b := make([]byte, 4096)
		for i := range b {
			b[i] = seed + byte(i*7)
		}
		return b
	}
	read := func(off uint64) ([]byte, error) {
		b := make([]byte, 4096)
		return b, do(a, wire.CmdRead, 0, off, 4096, b)
	}
	corrupted := func(wantReads, wantWrites int64) {
		t.Helper()
		if r, w := p.Corrupted(); r != wantReads || w != wantWrites {
			t.Fatalf("proxy corrupted %d READ and %d WRITE payloads, want %d and %d", r, w, wantReads, wantWrites)
		}
	}
	retries := func(want uint64) {
		t.Helper()
		if got := a.Stats().ChecksumRetries; got != want {
			t.Fatalf("ChecksumRetries = %d, want %d", got, want)
		}
	}

	a1 := pattern(1)
	if err := do(a, wire.CmdWrite, 0, 0, 4096, a1); err != nil {
		t.Fatal(err)
	}

	// A READ corrupted once is read again and delivers the right data.
	p.CorruptReads(1)
	if got, err := read(0); err != nil || !bytes.Equal(got, a1) {
		t.Fatalf("READ corrupted once: err %v, data right %v", err, bytes.Equal(got, a1))
	}
	corrupted(1, 0)
	retries(1)
	select {
	case e := <-evs:
		if e.Type != EventChecksumRetry {
			t.Fatalf("event %+v, want %s", e, EventChecksumRetry)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no checksum-retry event")
	}

	// A WRITE corrupted once is refused, sent again and applied whole.
	p.CorruptWrites(1)
	b1 := pattern(2)
	if err := do(a, wire.CmdWrite, 0, 4096, 4096, b1); err != nil {
		t.Fatalf("WRITE corrupted once: %v", err)
	}
	corrupted(1, 1)
	retries(2)
	if !bytes.Equal(disk(4096, 4096), b1) {
		t.Fatal("WRITE corrupted once: the file does not hold what was written")
	}

	// A READ corrupted every time fails after maxTries sends.
	p.CorruptReads(100)
	if _, err := read(0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("READ corrupted every time: %v, want EIO", err)
	}
	p.CorruptReads(0)
	corrupted(1+maxTries, 1)
	retries(2 + maxTries - 1)

	// A WRITE corrupted every time fails after maxTries sends, and the
	// server applied none of them: the file keeps what it had.
	p.CorruptWrites(100)
	if err := do(a, wire.CmdWrite, 0, 0, 4096, pattern(3)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("WRITE corrupted every time: %v, want EIO", err)
	}
	p.CorruptWrites(0)
	corrupted(1+maxTries, 1+maxTries)
	retries(2 + 2*(maxTries-1))
	if !bytes.Equal(disk(0, 4096), a1) {
		t.Fatal("a WRITE whose payload failed its checksum was applied")
	}

	// The same queue connection goes on serving.
	if got, err := read(4096); err != nil || !bytes.Equal(got, b1) {
		t.Fatalf("READ after the failures: err %v, data right %v", err, bytes.Equal(got, b1))
	}
	if s := a.Stats(); s.Reconnects != 0 || s.Resent != 0 {
		t.Fatalf("stats %+v: a checksum failure cost a reconnect", s)
	}
}
