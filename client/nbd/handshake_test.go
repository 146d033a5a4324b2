package nbd_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/client/nbd/nbdtest"
	"github.com/dstproject/dst/internal/nbdwire"
)

func twoExports() *nbd.Server {
	a, _ := memExport(1 << 20)
	b := &nbd.Export{Name: "ro", Description: "read only", Size: 8192, ReadOnly: true,
		MinBlockSize: 512, PreferredBlockSize: 4096, MaxBlockSize: 1 << 20, Device: nbdtest.NewMemDevice(8192)}
	return &nbd.Server{Exports: []*nbd.Export{a, b}}
}

func TestHandshakeOptions(t *testing.T) {
	wantMem := exportInfo{size: 1 << 20, flags: 1 | 1<<2 | 1<<3 | 1<<5 | 1<<6 | 1<<8, minB: 1, prefB: 4096, maxB: 32 << 20}
	wantRO := exportInfo{size: 8192, flags: 1 | 1<<1, minB: 512, prefB: 4096, maxB: 1 << 20}
	tests := []struct {
		name string
		run  func(t *testing.T, c *tclient)
	}{
		{"greeting flags", func(t *testing.T, c *tclient) {
			if f := c.hello(nbdwire.ClientFixedNewstyle); f != 3 {
				t.Errorf("handshake flags %v, want FIXED_NEWSTYLE|NO_ZEROES", f)
			}
			c.sendOption(nbdwire.OptAbort, nil)
			if r := c.readOptReply(); r.typ != nbdwire.RepAck || r.opt != nbdwire.OptAbort {
				t.Errorf("ABORT reply %+v", r)
			}
			if _, err := c.br.ReadByte(); err != io.EOF {
				t.Errorf("after ABORT: %v, want EOF", err)
			}
		}},
		{"list", func(t *testing.T, c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle)
			c.sendOption(nbdwire.OptList, nil)
			var got []string
			for {
				r := c.readOptReply()
				if r.typ == nbdwire.RepAck {
					break
				}
				if r.typ != nbdwire.RepServer {
					t.Fatalf("LIST reply %+v", r)
				}
				e, err := nbdwire.DecodeExportEntry(r.data)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, e.Name+"/"+e.Description)
			}
			if s := strings.Join(got, ","); s != "mem/test disk,ro/read only" {
				t.Errorf("LIST = %q", s)
			}
		}},
		{"list with data", func(t *testing.T, c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle)
			c.sendOption(nbdwire.OptList, []byte{1})
			if r := c.readOptReply(); r.typ != nbdwire.RepErrInvalid {
				t.Errorf("reply %v, want ERR_INVALID", r.typ)
			}
		}},
		{"info all items", func(t *testing.T, c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle)
			ei, r := c.infoGo(nbdwire.OptInfo, "ro", nbdwire.InfoName, nbdwire.InfoDescription, nbdwire.InfoBlockSize)
			want := wantRO
			want.name, want.desc, want.haveName, want.haveDesc = "ro", "read only", true, true
			if r.typ != nbdwire.RepAck || ei != want {
				t.Errorf("INFO ro = %+v %v, want %+v", ei, r.typ, want)
			}
			// Still in haggling: a second option works.
			if ei, r := c.infoGo(nbdwire.OptInfo, ""); r.typ != nbdwire.RepAck || ei != wantMem {
				t.Errorf("INFO default = %+v %v, want %+v (block size sent unasked)", ei, r.typ, wantMem)
			}
		}},
		{"go default export", func(t *testing.T, c *tclient) {
			if ei := c.goTransmission(""); ei != wantMem {
				t.Errorf("GO \"\" = %+v, want %+v", ei, wantMem)
			}
			buf := make([]byte, 512)
			if e := c.mustDo(nbdwire.CmdRead, 0, 0, 512, nil, buf); e != 0 {
				t.Errorf("read after GO: %v", e)
			}
		}},
		{"go named export", func(t *testing.T, c *tclient) {
			if ei := c.goTransmission("ro"); ei != wantRO {
				t.Errorf("GO ro = %+v, want %+v", ei, wantRO)
			}
			if e := c.mustDo(nbdwire.CmdWrite, 0, 0, 512, make([]byte, 512), nil); e != nbdwire.EPERM {
				t.Errorf("write to ro: %v, want EPERM", e)
			}
		}},
		{"unknown export then go", func(t *testing.T, c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle)
			for _, opt := range []nbdwire.Option{nbdwire.OptInfo, nbdwire.OptGo} {
				_, r := c.infoGo(opt, "nope", nbdwire.InfoBlockSize)
				if r.typ != nbdwire.RepErrUnknown || !strings.Contains(string(r.data), "nope") {
					t.Errorf("opt %v unknown export: %v %q", opt, r.typ, r.data)
				}
			}
			if _, r := c.infoGo(nbdwire.OptGo, "mem"); r.typ != nbdwire.RepAck {
				t.Errorf("GO after error: %v", r.typ)
			}
		}},
		{"unsupported options", func(t *testing.T, c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle)
			for _, opt := range []nbdwire.Option{nbdwire.OptStructuredReply, nbdwire.OptStartTLS, 9, 10, 4, 1000} {
				c.sendOption(opt, nil)
				if r := c.readOptReply(); r.typ != nbdwire.RepErrUnsup || r.opt != opt {
					t.Errorf("opt %v: reply %+v, want ERR_UNSUP", opt, r)
				}
			}
		}},
		{"malformed info", func(t *testing.T, c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle)
			bad := [][]byte{
				{0, 0, 0},
				{0, 0, 0, 9, 'm', 0, 0},               // name longer than payload
				{0, 0, 0, 0, 0, 2, 0, 3},              // two infos announced, one sent
				append(infoPayload("mem", 3), 0, 0x1), // trailing garbage
			}
			for _, p := range bad {
				c.sendOption(nbdwire.OptGo, p)
				if r := c.readOptReply(); r.typ != nbdwire.RepErrInvalid {
					t.Errorf("GO %x: reply %v, want ERR_INVALID", p, r.typ)
				}
			}
		}},
		{"oversized option", func(t *testing.T, c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle)
			c.sendOption(nbdwire.OptInfo, make([]byte, 100<<10))
			if r := c.readOptReply(); r.typ != nbdwire.RepErrTooBig {
				t.Errorf("reply %v, want ERR_TOO_BIG", r.typ)
			}
			c.sendOption(nbdwire.OptList, nil)
			if r := c.readOptReply(); r.typ != nbdwire.RepServer {
				t.Errorf("LIST after TOO_BIG: %v", r.typ)
			}
		}},
		{"export name with zeroes", func(t *testing.T, c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle)
			c.sendOption(nbdwire.OptExportName, []byte("ro"))
			b := make([]byte, nbdwire.ExportNameReplySize+nbdwire.ExportNameZeroes)
			c.mustRead(b)
			if r, _ := nbdwire.DecodeExportNameReply(b); r.Size != 8192 || uint16(r.Flags) != wantRO.flags ||
				!bytes.Equal(b[nbdwire.ExportNameReplySize:], make([]byte, nbdwire.ExportNameZeroes)) {
				t.Errorf("EXPORT_NAME reply %x", b)
			}
			go c.readLoop()
			if e := c.mustDo(nbdwire.CmdRead, 0, 512, 512, nil, make([]byte, 512)); e != 0 {
				t.Errorf("read: %v", e)
			}
		}},
		{"export name no zeroes", func(t *testing.T, c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle | nbdwire.ClientNoZeroes)
			c.sendOption(nbdwire.OptExportName, nil)
			b := make([]byte, nbdwire.ExportNameReplySize)
			c.mustRead(b)
			if r, _ := nbdwire.DecodeExportNameReply(b); r.Size != 1<<20 || uint16(r.Flags) != wantMem.flags {
				t.Errorf("EXPORT_NAME reply %x", b)
			}
			go c.readLoop()
			if e := c.mustDo(nbdwire.CmdFlush, 0, 0, 0, nil, nil); e != 0 {
				t.Errorf("flush: %v", e)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startConn(t, kindUnix, twoExports())
			tt.run(t, ts.cli)
		})
	}
}

// Violations that leave no way to answer end the session.
func TestHandshakeHangsUp(t *testing.T) {
	tests := []struct {
		name string
		run  func(c *tclient)
	}{
		{"unknown client flags", func(c *tclient) { c.hello(nbdwire.ClientFixedNewstyle | 1<<7) }},
		{"bad option magic", func(c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle)
			c.mustWrite(make([]byte, 16))
		}},
		{"export name unknown", func(c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle)
			c.sendOption(nbdwire.OptExportName, []byte("nope"))
		}},
		{"huge option", func(c *tclient) {
			c.hello(nbdwire.ClientFixedNewstyle)
			c.mustWrite(nbdwire.OptHeader{Option: nbdwire.OptInfo, Length: 1 << 30}.Append(nil))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startConn(t, kindUnix, twoExports())
			tt.run(ts.cli)
			if err := ts.wait(t); err == nil {
				t.Error("ServeConn returned nil")
			}
			ts.cli.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadAll(ts.cli.br); err != nil {
				t.Errorf("connection not closed: %v", err)
			}
		})
	}
}

func TestHandshakeProtocolErrorIs(t *testing.T) {
	ts := startConn(t, kindPipe, twoExports())
	ts.cli.hello(nbdwire.ClientFixedNewstyle | 1<<9)
	if err := ts.wait(t); !errors.Is(err, nbd.ErrProtocol) {
		t.Errorf("ServeConn = %v, want ErrProtocol", err)
	}
}

func TestExportValidation(t *testing.T) {
	d := nbdtest.NewMemDevice(4096)
	bad := []*nbd.Export{
		{Name: "nodev", Size: 1},
		{Name: "min", Size: 4096, MinBlockSize: 3, Device: d},
		{Name: "pref", Size: 4096, MinBlockSize: 4096, PreferredBlockSize: 512, Device: d},
		{Name: "max", Size: 4096, MaxBlockSize: 1024, Device: d},
	}
	for _, e := range bad {
		s := &nbd.Server{Exports: []*nbd.Export{e}, Logger: quietLog}
		a, b := unixPair(t)
		if err := s.ServeConn(t.Context(), a); err == nil {
			t.Errorf("export %q accepted", e.Name)
		}
		a.Close()
		b.Close()
	}
}
