package nbd_test

import (
	"context"
	"testing"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/internal/testsupport"
)

// Pinned wire values: changing one breaks every client.
func TestConstants(t *testing.T) {
	cmds := map[nbd.Command]uint16{nbd.CmdRead: 0, nbd.CmdWrite: 1, nbd.CmdDisc: 2, nbd.CmdFlush: 3, nbd.CmdTrim: 4, nbd.CmdWriteZeroes: 6}
	for c, v := range cmds {
		if uint16(c) != v {
			t.Errorf("%v = %d, want %d", c, c, v)
		}
	}
	errnos := map[nbd.Errno]uint32{nbd.EPERM: 1, nbd.EIO: 5, nbd.ENOMEM: 12, nbd.EINVAL: 22, nbd.ENOSPC: 28,
		nbd.EOVERFLOW: 75, nbd.ENOTSUP: 95, nbd.ESHUTDOWN: 108}
	for e, v := range errnos {
		if uint32(e) != v {
			t.Errorf("%v = %d, want %d", e, e, v)
		}
	}
	if nbd.FlagFUA != 1 || nbd.FlagNoHole != 2 {
		t.Errorf("flags FUA=%d NO_HOLE=%d", nbd.FlagFUA, nbd.FlagNoHole)
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
		{nbd.CmdWriteZeroes, "WRITE_ZEROES"},
		{nbd.Command(5), "CACHE"},
		{nbd.Command(99), "CMD_99"},
		{nbd.CmdFlags(0), "0"},
		{nbd.FlagFUA | nbd.FlagNoHole, "FUA|NO_HOLE"},
		{nbd.FlagFUA | 1<<9, "FUA|0x200"},
		{nbd.ENOSPC, "ENOSPC"},
		{nbd.Errno(7), "ERRNO_7"},
	}
	for _, tt := range tests {
		if s := tt.got.String(); s != tt.want {
			t.Errorf("String() = %q, want %q", s, tt.want)
		}
	}
	if s := nbd.EIO.Error(); s != "nbd: EIO" {
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
	if got := c.mustDo(nbd.CmdWrite, 0, 4096, 4096, data, nil); got != 0 || dev.Bytes()[4096+77] != 77 {
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
