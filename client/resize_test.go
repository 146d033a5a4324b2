package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dstproject/dst/wire"
)

// TestResize: an export file that grows is served at its new size as soon
// as the server checks it; the attachment hears of it on its control
// stream (Resized, a "resized" event) and the new bytes are reachable. A
// file that shrinks changes nothing; a server about to stop says so.
func TestResize(t *testing.T) {
	const size = 1 << 20
	e := newEnv(t, "pipe", size)
	a := e.attach(t, "disk", 2)
	defer a.Close()
	evs, stop := a.Subscribe(16)
	defer stop()

	p := bytes.Repeat([]byte{0xa5}, 4096)
	if err := do(a, wire.CmdWrite, 0, size, 4096, p); err == nil {
		t.Fatal("a write past the end succeeded")
	}
	if err := os.Truncate(filepath.Join(e.dir, "disk"), 4*size); err != nil {
		t.Fatal(err)
	}
	e.srv.CheckSizes() // the periodic check may have come first
	select {
	case <-a.Resized():
	case <-time.After(10 * time.Second):
		t.Fatal("no resize reached the attachment")
	}
	if a.Size() != 4*size {
		t.Fatalf("Size() = %d after the export grew to %d", a.Size(), 4*size)
	}
	if st := a.Status(); st.Size != 4*size {
		t.Errorf("Status().Size = %d", st.Size)
	}
	waitEvent(t, evs, EventResized, func(ev Event) bool { return ev.Size == 4*size })
	if err := do(a, wire.CmdWrite, wire.FlagFUA, 4*size-4096, 4096, p); err != nil {
		t.Fatalf("writing the new last block: %v", err)
	}
	got := make([]byte, 4096)
	if err := do(a, wire.CmdRead, 0, 4*size-4096, 4096, got); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("reading it back: %v, same=%v", err, bytes.Equal(got, p))
	}
	// A new attachment (a reader: a holds the writer lease) is told the
	// new size at once.
	b, err := Attach(context.Background(), &AttachConfig{Config: *e.config(), Export: "disk", Connections: 1, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if b.Size() != 4*size {
		t.Errorf("a new attachment's Size() = %d", b.Size())
	}
	b.Close()

	if err := os.Truncate(filepath.Join(e.dir, "disk"), size); err != nil {
		t.Fatal(err)
	}
	if grew := e.srv.CheckSizes(); len(grew) != 0 {
		t.Errorf("CheckSizes after a shrink = %v", grew)
	}
	if a.Size() != 4*size || e.srv.Info().Exports[0].Size != 4*size {
		t.Errorf("after a shrink: attachment %d, server %d bytes; want %d kept", a.Size(), e.srv.Info().Exports[0].Size, 4*size)
	}

	e.srv.NotifyShutdown("maintenance", time.Second)
	waitEvent(t, evs, EventServerStopping, func(ev Event) bool { return ev.Detail == "maintenance" })
}

func waitEvent(t *testing.T, evs <-chan Event, typ string, ok func(Event) bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-evs:
			if ev.Type == typ {
				if !ok(ev) {
					t.Errorf("event %+v", ev)
				}
				return
			}
		case <-timeout:
			t.Fatalf("no %s event", typ)
		}
	}
}

// TestReplayProgress: a replay's progress counts writes and bytes, reports
// each tenth once, and is absent from Status when no replay runs.
func TestReplayProgress(t *testing.T) {
	var p replayProgress
	if p.status() != nil {
		t.Fatal("progress before a replay")
	}
	p.start(25, 25*4096)
	var tenths []int64
	for range 25 {
		if _, tenth, ok := p.advance(4096); ok {
			tenths = append(tenths, tenth)
		}
		if st := p.status(); st == nil || st.Writes != 25 {
			t.Fatalf("status during the replay: %+v", st)
		}
	}
	// 25 writes: tenths reached at writes 3, 5, 8, 10, 13, 15, 18, 20, 23, 25.
	if fmt.Sprint(tenths) != "[1 2 3 4 5 6 7 8 9 10]" {
		t.Errorf("tenths reported %v", tenths)
	}
	if st := p.status(); st.Done != 25 || st.DoneBytes != 25*4096 || st.Bytes != 25*4096 {
		t.Errorf("status at the end %+v", st)
	}
	p.stop()
	if p.status() != nil {
		t.Error("progress after the replay")
	}
}

// TestWriterLease: a second writer is refused, naming the holder; a reader
// joins and cannot write; a take-over fences the holder, which fails for
// good when it finds the lease gone; a closed attachment frees the lease
// at once (BYE); Resume continues an attachment under its lease.
func TestWriterLease(t *testing.T) {
	e := newEnv(t, "pipe", 1<<20)
	attach := func(ac AttachConfig) (*Attachment, error) {
		ac.Config, ac.Export, ac.Connections = *e.config(), "disk", 1
		ac.KeepaliveInterval, ac.KeepaliveTimeout = 50*time.Millisecond, 500*time.Millisecond
		return Attach(context.Background(), &ac)
	}
	p := bytes.Repeat([]byte{1}, 4096)
	a, err := attach(AttachConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := do(a, wire.CmdWrite, 0, 0, 4096, p); err != nil {
		t.Fatal(err)
	}
	if _, err := attach(AttachConfig{}); !errors.Is(err, ErrLeaseHeld) || !strings.Contains(err.Error(), "held for writing by test") {
		t.Fatalf("a second writer: %v", err)
	}
	r, err := attach(AttachConfig{ReadOnly: true})
	if err != nil {
		t.Fatalf("a reader: %v", err)
	}
	defer r.Close()
	if !r.NBDExport().ReadOnly {
		t.Error("a read-only attachment's NBD export is writable")
	}
	if err := do(r, wire.CmdWrite, 0, 0, 4096, p); err == nil {
		t.Error("a read-only attachment wrote")
	}

	// Take-over: a is fenced, reconnects, finds the lease gone, fails.
	b, err := attach(AttachConfig{TakeOver: true})
	if err != nil {
		t.Fatalf("take-over: %v", err)
	}
	select {
	case <-a.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("the old holder did not fail after the take-over")
	}
	if !errors.Is(a.Err(), ErrLeaseHeld) {
		t.Errorf("the old holder failed with %v", a.Err())
	}
	if err := do(a, wire.CmdWrite, 0, 0, 4096, make([]byte, 4096)); err == nil {
		t.Error("the old holder wrote after the take-over")
	}

	// Resume: b's id, in a new Attachment, keeps the lease.
	b2, err := attach(AttachConfig{Resume: b.ID()})
	if err != nil {
		t.Fatalf("resuming b: %v", err)
	}
	if err := do(b2, wire.CmdWrite, 0, 0, 4096, p); err != nil {
		t.Fatalf("a write of the resumed attachment: %v", err)
	}
	b.Close()
	// A closed attachment lets go at once.
	b2.Close()
	c, err := attach(AttachConfig{})
	if err != nil {
		t.Fatalf("a writer after the holder closed: %v", err)
	}
	c.Close()
}
