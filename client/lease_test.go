package client

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/wire"
)

// TestCloseWhileReconnectingLetsGo: an attachment closed between sessions
// (its connections lost, its reconnect not through yet) lets go of its
// writer lease at once, as one closed while connected does (BYE), so a new
// writer is not refused for the lease's grace (2 minutes). Found by the
// guest's fresh-device cycles: attach was stopped while it reconnected
// after a keepalive timeout, and the next cycle's attach was refused.
func TestCloseWhileReconnectingLetsGo(t *testing.T) {
	e := newEnv(t, "tcp", 1<<20)
	var (
		mu    sync.Mutex
		conns []net.Conn
		hold  bool // the next dial waits until its context ends
		held  = make(chan struct{}, 1)
	)
	var d net.Dialer
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		mu.Lock()
		h := hold
		hold = false
		mu.Unlock()
		if h {
			held <- struct{}{}
			<-ctx.Done()
			return nil, ctx.Err()
		}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
		return c, err
	}
	attach := func() (*Attachment, error) {
		ac := &AttachConfig{Config: *e.config(), Export: "disk", Connections: 1}
		ac.Dialer = dial
		return Attach(t.Context(), ac)
	}
	a, err := attach()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	p := bytes.Repeat([]byte{7}, 4096)
	if err := do(a, wire.CmdWrite, 0, 0, 4096, p); err != nil {
		t.Fatal(err)
	}

	// Lose every connection; the reconnect's first dial hangs until the
	// attachment closes.
	mu.Lock()
	hold = true
	for _, c := range conns {
		c.Close()
	}
	mu.Unlock()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the attachment did not try to reconnect")
	}
	if st := a.Status().State; st != StateReconnecting {
		t.Fatalf("state %v, want %v", st, StateReconnecting)
	}
	a.Close()

	b, err := attach()
	if err != nil {
		t.Fatalf("a new writer after the holder closed while reconnecting: %v", err)
	}
	defer b.Close()
	if err := do(b, wire.CmdWrite, 0, 0, 4096, p); err != nil {
		t.Fatal(err)
	}
}
