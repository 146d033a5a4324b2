package tests

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/tamper"
)

// TestChecksumCorruption puts a proxy that holds both keys between dst
// attach and dst serve (internal/tamper): it flips a bit in payloads after
// their checksums were computed, as memory corruption in either program
// would, which the channel's AEAD cannot see. nbdcopy writes and reads the
// whole export while a few payloads each way are corrupted; every one is
// caught and sent again, and the copies match. Then one READ and one WRITE
// corrupted on every send fail with EIO after three sends, the WRITE
// applied by none of them, and the same attachment goes on serving. The
// counts in attach's stats and serve's log match what the proxy did.
func TestChecksumCorruption(t *testing.T) {
	requireTool(t, "nbdcopy")
	e := newFaultEnv(t, false)
	sk, err := crypto.LoadPrivateKey(e.serverKey, crypto.KeyModePolicy{})
	if err != nil {
		t.Fatal(err)
	}
	ck, err := crypto.LoadPrivateKey(e.clientKey, crypto.KeyModePolicy{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := tamper.New(tamper.Config{Target: e.addr, ServerKey: sk, ClientKey: ck})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	e.via = p.Addr()
	c := e.startAttach()
	uri := "nbd+unix:///disk?socket=" + e.sock

	// Two corruptions each way: no transaction can meet three of them.
	src, back := filepath.Join(e.dir, "src"), filepath.Join(e.dir, "back")
	writeRandomFile(t, src, faultSize)
	p.CorruptWrites(2)
	run(t, "nbdcopy", "--flush", src, uri)
	p.CorruptReads(2)
	run(t, "nbdcopy", uri, back)
	if r, w := p.Corrupted(); r != 2 || w != 2 {
		t.Fatalf("the proxy corrupted %d READ and %d WRITE payloads during the copies, want 2 and 2", r, w)
	}
	sameContent(t, src, back, faultSize)
	sameContent(t, src, e.path, faultSize)

	// Corrupted on every send: EIO, and the next request is served.
	want := e.fileBlock(0)
	buf := make([]byte, len(want))
	p.CorruptReads(100)
	if err := c.ReadAt(buf, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a READ corrupted on every send: %v, want EIO", err)
	}
	p.CorruptReads(0)
	p.CorruptWrites(100)
	if err := c.WriteAt(bytes.Repeat([]byte{0xee}, len(want)), 0, false); !errors.Is(err, syscall.EIO) {
		t.Fatalf("a WRITE corrupted on every send: %v, want EIO", err)
	}
	p.CorruptWrites(0)
	if err := c.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, want) {
		t.Fatalf("READ after the failures: err %v, data right %v", err, bytes.Equal(buf, want))
	}
	if !bytes.Equal(e.fileBlock(0), want) {
		t.Fatal("a WRITE whose payload failed its checksum was applied")
	}

	r, w := p.Corrupted()
	if r != 2+3 || w != 2+3 {
		t.Fatalf("the proxy corrupted %d READ and %d WRITE payloads in all, want 5 and 5", r, w)
	}
	st := e.stopAttach()
	// Each corrupted payload but the last of each failed request was
	// sent again.
	if st.ChecksumRetries != r+w-2 || st.Reconnects != 0 || st.Timeouts != 0 {
		t.Errorf("attach's stats: %v; want checksum_retries=%d, no reconnect, no timeout", st, r+w-2)
	}
	if n := strings.Count(e.serveLog(), "WRITE payload failed its checksum"); int64(n) != w {
		t.Errorf("serve logged %d WRITE payloads that failed their checksum, want %d", n, w)
	}
}
