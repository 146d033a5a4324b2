package client

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

	"github.com/dstproject/dst/wire"
)

// lazyDone is a Completer that hands out a READ's buffer only when asked
// (ReadBufferer), as the NBD front end does; n is how many bytes it gives,
// which a broken one gets wrong.
type lazyDone struct {
	n     int
	buf   []byte
	asked int
	ch    chan error
}

func (d *lazyDone) ReadBuffer() []byte {
	d.asked++
	if d.buf == nil {
		d.buf = make([]byte, d.n)
	}
	return d.buf
}

func (d *lazyDone) Complete(err error) { d.ch <- err }

// TestLazyReadBuffer: a READ with no Data whose Done is a ReadBufferer is
// filled in the buffer it hands out when the reply comes; one that hands
// out a buffer of the wrong length fails with EIO, and the next READ on the
// same connection succeeds; a READ with no Data and no
// ReadBufferer is refused with EINVAL.
func TestLazyReadBuffer(t *testing.T) {
	env := newRestartEnv(t, 1<<20, false)
	cfg := env.config(t, 0)
	cfg.Connections = 1
	a := attachWith(t, cfg)

	want := bytes.Repeat([]byte("lazy read buffer"), 64<<10/16)
	if err := wait(t, submit(a, wire.CmdWrite, 128<<10, want), "write"); err != nil {
		t.Fatalf("write: %v", err)
	}
	read := func(n int) (*lazyDone, error) {
		d := &lazyDone{n: n, ch: make(chan error, 1)}
		a.Submit(Request{Cmd: wire.CmdRead, Offset: 128 << 10, Length: uint32(len(want)), Done: d})
		return d, wait(t, d.ch, "read")
	}
	d, err := read(len(want))
	if err != nil || d.asked != 1 || !bytes.Equal(d.buf, want) {
		t.Fatalf("lazy read: err %v, buffer asked for %d times, data matches %v; want nil, 1, true",
			err, d.asked, bytes.Equal(d.buf, want))
	}
	if _, err := read(len(want) - 1); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read into a buffer one byte short: %v, want EIO", err)
	}
	if d, err := read(len(want)); err != nil || !bytes.Equal(d.buf, want) {
		t.Fatalf("read after the short buffer: %v (data matches %v)", err, bytes.Equal(d.buf, want))
	}
	ch := make(chan error, 1)
	a.Submit(Request{Cmd: wire.CmdRead, Offset: 0, Length: 4096, Done: CompleteFunc(func(err error) { ch <- err })})
	if err := wait(t, ch, "read without a buffer"); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("read with no Data and no ReadBufferer: %v, want EINVAL", err)
	}
}
