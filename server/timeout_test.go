package server_test

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/server/servertest"
)

// TestConnectionStartTimeouts: a connection that never starts its
// handshake is closed HandshakeFirstTimeout after it came, and one that
// completes it but never says what it is, FirstMessageTimeout after. On
// synctest's clock, over net.Pipe, so both happen exactly on time.
func TestConnectionStartTimeouts(t *testing.T) {
	testsupport.Synctest(t, func(t *testing.T) {
		leakCheck(t)
		sk, _ := crypto.GeneratePrivateKey()
		ck, _ := crypto.GeneratePrivateKey()
		auth, err := crypto.ParseAuthorizedKeys(strings.NewReader(ck.Public().String()+"\n"), "test")
		if err != nil {
			t.Fatal(err)
		}
		srv, err := server.New(&server.Config{PrivateKey: sk, Authorized: auth, Logger: testsupport.Logger(t),
			Exports: []server.ExportConfig{{Name: "disk", Backend: servertest.NewMemBackend(1 << 20)}}})
		if err != nil {
			t.Fatal(err)
		}
		l := servertest.NewPipeListener()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx, l) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
			srv.Close()
		})

		start := time.Now()
		silent, err := l.Dial(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		defer silent.Close()
		raw, err := l.Dial(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		quiet, err := crypto.Client(ctx, raw, &crypto.ClientConfig{PrivateKey: ck, ServerKey: sk.Public()})
		if err != nil {
			t.Fatal(err)
		}
		defer quiet.Close()
		for _, c := range []struct {
			name string
			conn net.Conn
			want time.Duration
		}{
			{"connection without a handshake", silent, server.HandshakeFirstTimeout},
			{"session without a first message", quiet, server.FirstMessageTimeout},
		} {
			io.Copy(io.Discard, c.conn) // until the server closes it
			if d := time.Since(start); d != c.want {
				t.Errorf("%s closed after %v, want %v", c.name, d, c.want)
			}
		}
	})
}
