package fdconn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pair returns a Conn and the plain peer socket it talks to.
func pair(t *testing.T, network string) (*Conn, net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s")
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	d, err := net.Dial(network, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	c, err := New(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c, peer
}

func TestReadWrite(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		c, peer := pair(t, network)
		msg := bytes.Repeat([]byte("dst"), 100000) // larger than a socket buffer
		go peer.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("%s: read %v", network, err)
		}
		go func() {
			c.WriteBuffers([][]byte{msg[:10], {}, msg[10:]})
		}()
		if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("%s: WriteBuffers: %v", network, err)
		}
		peer.Close()
		if _, err := c.Read(got); err != io.EOF {
			t.Fatalf("%s: read after peer close: %v, want EOF", network, err)
		}
	}
}

func TestCloseWakesBlockedRead(t *testing.T) {
	c, _ := pair(t, "tcp")
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("blocked Read returned no error after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a blocked Read")
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
}

func TestReadDeadline(t *testing.T) {
	c, peer := pair(t, "tcp")
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("deadline took %v", d)
	}
	c.SetReadDeadline(time.Time{})
	peer.Write([]byte("y"))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatalf("Read after clearing deadline: %v", err)
	}
}
