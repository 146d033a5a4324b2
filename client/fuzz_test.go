package client

import (
	"bytes"
	"errors"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/tamper"
	"github.com/dstproject/dst/wire"
)

// FuzzQueueReply puts arbitrary bytes in the place of a READ's reply, as a
// broken or hostile server would send them, and closes that connection
// after them. The client must not panic or hang: the READ completes with
// the disk's data (after a reconnect and a resend) or with an errno, never
// with data the server did not send, and the attachment goes on serving.
func FuzzQueueReply(f *testing.F) {
	rep := func(r wire.Reply, payload []byte) []byte {
		b := make([]byte, wire.ReplySize, wire.ReplySize+len(payload))
		r.Encode(b)
		return append(b, payload...)
	}
	data := make([]byte, 4096)
	// Transaction ids count from 1; the fuzz target's READs are the
	// attachment's first transactions, two per input.
	for _, id := range []uint64{1, 3, 1 << 40} {
		f.Add(rep(wire.Reply{Cmd: wire.CmdRead, ID: id, Length: 4096, Checksum: wire.Checksum(data)}, data))
		f.Add(rep(wire.Reply{Cmd: wire.CmdRead, ID: id, Length: 4096, Checksum: 1}, data))
		f.Add(rep(wire.Reply{Cmd: wire.CmdRead, ID: id, Length: 4096}, data[:100]))
		f.Add(rep(wire.Reply{Cmd: wire.CmdRead, ID: id, Status: wire.StatusEIO}, nil))
		f.Add(rep(wire.Reply{Cmd: wire.CmdRead, ID: id, Status: wire.StatusBadChecksum}, nil))
		f.Add(rep(wire.Reply{Cmd: wire.CmdRead, ID: id, Status: wire.StatusESTALE}, nil))
		f.Add(rep(wire.Reply{Cmd: wire.CmdRead, ID: id, Status: 0xffff}, nil))
		f.Add(rep(wire.Reply{Cmd: wire.CmdWrite, ID: id}, nil))
		f.Add(rep(wire.Reply{Cmd: wire.CmdRead, ID: id, Length: 1 << 31}, nil))
		f.Add(rep(wire.Reply{Cmd: wire.CmdRead, ID: id, Status: wire.StatusEIO, Length: 8}, data[:8]))
	}
	f.Add(rep(wire.Reply{Cmd: wire.CmdRead, ID: 1}, nil)[:wire.ReplySize-1])
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})

	// A fuzz target may not log through testing.F, and a fuzzer's inputs
	// are refused by the thousand: server and client log nowhere.
	const size = 1 << 20
	env := newEnvLog(f, "tcp", size, slog.New(slog.DiscardHandler))
	p, err := tamper.New(tamper.Config{Target: env.addr, ServerKey: env.server, ClientKey: env.client})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { p.Close() })
	cfg := &AttachConfig{Config: *env.config(), Export: "disk", Connections: 1, IOTimeout: 10 * time.Second}
	cfg.Server = p.Addr()
	a, err := Attach(f.Context(), cfg)
	if err != nil {
		f.Fatalf("Attach: %v", err)
	}
	f.Cleanup(func() { a.Close() })
	want := bytes.Repeat([]byte("dst!"), 1024)
	if err := do(a, wire.CmdWrite, wire.FlagFUA, 0, 4096, want); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		got := make([]byte, 4096)
		p.InjectReply(append([]byte{}, b...)) // never nil
		err := do(a, wire.CmdRead, 0, 0, 4096, got)
		var errno syscall.Errno
		switch {
		case err == nil && !bytes.Equal(got, want):
			t.Fatalf("after %x: the READ delivered data the server did not send", b)
		case err != nil && !errors.As(err, &errno):
			t.Fatalf("after %x: the READ ended with %v, not an errno", b, err)
		}
		p.InjectReply(nil)
		got = make([]byte, 4096)
		if err := do(a, wire.CmdRead, 0, 0, 4096, got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("after %x: the next READ: err %v, data right %v", b, err, bytes.Equal(got, want))
		}
	})
}
