package nbd_test

import (
	"context"
	"testing"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/testsupport"
)

// Pinned wire values: changing one breaks every client.
func TestConstants(t *testing.T) {
	cmds := map[nbdwire.Command]uint16{nbdwire.CmdRead: 0, nbdwire.CmdWrite: 1, nbdwire.CmdDisc: 2, nbdwire.CmdFlush: 3, nbdwire.CmdTrim: 4, nbdwire.CmdWriteZeroes: 6}
	for c, v := range cmds {
		if uint16(c) != v {
			t.Errorf("%v = %d, want %d", c, c, v)
		}
	}
	errnos := map[nbdwire.Errno]uint32{nbdwire.EPERM: 1, nbdwire.EIO: 5, nbdwire.ENOMEM: 12, nbdwire.EINVAL: 22, nbdwire.ENOSPC: 28,
		nbdwire.EOVERFLOW: 75, nbdwire.ENOTSUP: 95, nbdwire.ESHUTDOWN: 108}
	for e, v := range errnos {
		if uint32(e) != v {
			t.Errorf("%v = %d, want %d", e, e, v)
		}
	}
	if nbdwire.FlagFUA != 1 || nbdwire.FlagNoHole != 2 {
		t.Errorf("flags FUA=%d NO_HOLE=%d", nbdwire.FlagFUA, nbdwire.FlagNoHole)
	}
	e := nbd.Export{}
	if f := e.TransmissionFlags(); f != 1 {
		t.Errorf("bare export flags %#x, want HAS_FLAGS", f)
	}
	e = nbd.Export{ReadOnly: true, Flush: true, FUA: true, Rotational: true, Trim: true, WriteZeroes: true, MultiConn: true}
	if f := e.TransmissionFlags(); f != 0x17f {
		t.Errorf("full export flags %#x, want 0x17f", f)
	}
}

func TestStrings(t *testing.T) {
	tests := []struct {
		got  interface{ String() string }
		want string
	}{
		{nbdwire.CmdWriteZeroes, "WRITE_ZEROES"},
		{nbdwire.Command(5), "CACHE"},
		{nbdwire.Command(99), "CMD_99"},
		{nbdwire.CmdFlags(0), "0"},
		{nbdwire.FlagFUA | nbdwire.FlagNoHole, "FUA|NO_HOLE"},
		{nbdwire.FlagFUA | 1<<9, "FUA|0x200"},
		{nbdwire.ENOSPC, "ENOSPC"},
		{nbdwire.Errno(7), "ERRNO_7"},
	}
	for _, tt := range tests {
		if s := tt.got.String(); s != tt.want {
			t.Errorf("String() = %q, want %q", s, tt.want)
		}
	}
	if s := nbdwire.EIO.Error(); s != "nbd: EIO" {
		t.Errorf("Error() = %q", s)
	}
}

// ServeTransmission skips the handshake, as for the kernel's socketpair.
func TestServeTransmission(t *testing.T) {
	testsupport.LeakCheck(t)
	e, dev := memExport(1 << 20)
	cc, sc := unixPair(t)
	done := make(chan error, 1)
	go func() { done <- nbd.ServeTransmission(context.Background(), sc, e, quietLog) }()
	c := newTClient(t, cc)
	go c.readLoop()
	data := make([]byte, 4096)
	for i := range data {
		data[i] = byte(i)
	}
	if got := c.mustDo(nbdwire.CmdWrite, 0, 4096, 4096, data, nil); got != 0 || dev.Bytes()[4096+77] != 77 {
		t.Errorf("write: %v", got)
	}
	c.disc()
	if err := <-done; err != nil {
		t.Errorf("ServeTransmission = %v", err)
	}
	cc.Close()
	if err := nbd.ServeTransmission(context.Background(), sc, &nbd.Export{}, nil); err == nil {
		t.Error("export without device accepted")
	}
}
