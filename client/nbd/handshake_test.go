package nbd_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/client/nbd/nbdtest"
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
			if f := c.hello(cFixedNewstyle); f != 3 {
				t.Errorf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", f)
			}
			c.sendOption(optAbort, nil)
			if r := c.readOptReply(); r.typ != repAck || r.opt != optAbort {
				t.Errorf("ABORT reply %+v", r)
			}
			if _, err := c.br.ReadByte(); err != io.EOF {
				t.Errorf("after ABORT: %v, want EOF", err)
			}
		}},
		{"list", func(t *testing.T, c *tclient) {
			c.hello(cFixedNewstyle)
			c.sendOption(optList, nil)
			var got []string
			for {
				r := c.readOptReply()
				if r.typ == repAck {
					break
				}
				if r.typ != repServer || len(r.data) < 4 {
					t.Fatalf("LIST reply %+v", r)
				}
				n := binary.BigEndian.Uint32(r.data)
				got = append(got, string(r.data[4:4+n])+"/"+string(r.data[4+n:]))
			}
			if s := strings.Join(got, ","); s != "mem/test disk,ro/read only" {
				t.Errorf("LIST = %q", s)
			}
		}},
		{"list with data", func(t *testing.T, c *tclient) {
			c.hello(cFixedNewstyle)
			c.sendOption(optList, []byte{1})
			if r := c.readOptReply(); r.typ != repErrInvalid {
				t.Errorf("reply %#x, want ERR_INVALID", r.typ)
			}
		}},
		{"info all items", func(t *testing.T, c *tclient) {
			c.hello(cFixedNewstyle)
			ei, r := c.infoGo(optInfo, "ro", infoName, infoDesc, infoBlockSize)
			want := wantRO
			want.name, want.desc, want.haveName, want.haveDesc = "ro", "read only", true, true
			if r.typ != repAck || ei != want {
				t.Errorf("INFO ro = %+v %#x, want %+v", ei, r.typ, want)
			}
			// Still in haggling: a second option works.
			if ei, r := c.infoGo(optInfo, ""); r.typ != repAck || ei != wantMem {
				t.Errorf("INFO default = %+v %#x, want %+v (block size sent unasked)", ei, r.typ, wantMem)
			}
		}},
		{"go default export", func(t *testing.T, c *tclient) {
			if ei := c.goTransmission(""); ei != wantMem {
				t.Errorf("GO \"\" = %+v, want %+v", ei, wantMem)
			}
			buf := make([]byte, 512)
			if e := c.mustDo(nbd.CmdRead, 0, 0, 512, nil, buf); e != 0 {
				t.Errorf("read after GO: %v", e)
			}
		}},
		{"go named export", func(t *testing.T, c *tclient) {
			if ei := c.goTransmission("ro"); ei != wantRO {
				t.Errorf("GO ro = %+v, want %+v", ei, wantRO)
			}
			if e := c.mustDo(nbd.CmdWrite, 0, 0, 512, make([]byte, 512), nil); e != nbd.EPERM {
				t.Errorf("write to ro: %v, want EPERM", e)
			}
		}},
		{"unknown export then go", func(t *testing.T, c *tclient) {
			c.hello(cFixedNewstyle)
			for _, opt := range []uint32{optInfo, optGo} {
				_, r := c.infoGo(opt, "nope", infoBlockSize)
				if r.typ != repErrUnknown || !strings.Contains(string(r.data), "nope") {
					t.Errorf("opt %d unknown export: %#x %q", opt, r.typ, r.data)
				}
			}
			if _, r := c.infoGo(optGo, "mem"); r.typ != repAck {
				t.Errorf("GO after error: %#x", r.typ)
			}
		}},
		{"unsupported options", func(t *testing.T, c *tclient) {
			c.hello(cFixedNewstyle)
			for _, opt := range []uint32{optStructured, optStartTLS, 9, 10, 4, 1000} {
				c.sendOption(opt, nil)
				if r := c.readOptReply(); r.typ != repErrUnsup || r.opt != opt {
					t.Errorf("opt %d: reply %+v, want ERR_UNSUP", opt, r)
				}
			}
		}},
		{"malformed info", func(t *testing.T, c *tclient) {
			c.hello(cFixedNewstyle)
			bad := [][]byte{
				{0, 0, 0},
				{0, 0, 0, 9, 'm', 0, 0},               // name longer than payload
				{0, 0, 0, 0, 0, 2, 0, 3},              // two infos announced, one sent
				append(infoPayload("mem", 3), 0, 0x1), // trailing garbage
			}
			for _, p := range bad {
				c.sendOption(optGo, p)
				if r := c.readOptReply(); r.typ != repErrInvalid {
					t.Errorf("GO %x: reply %#x, want ERR_INVALID", p, r.typ)
				}
			}
		}},
		{"oversized option", func(t *testing.T, c *tclient) {
			c.hello(cFixedNewstyle)
			c.sendOption(optInfo, make([]byte, 100<<10))
			if r := c.readOptReply(); r.typ != repErrTooBig {
				t.Errorf("reply %#x, want ERR_TOO_BIG", r.typ)
			}
			c.sendOption(optList, nil)
			if r := c.readOptReply(); r.typ != repServer {
				t.Errorf("LIST after TOO_BIG: %#x", r.typ)
			}
		}},
		{"export name with zeroes", func(t *testing.T, c *tclient) {
			c.hello(cFixedNewstyle)
			c.sendOption(optExportName, []byte("ro"))
			b := make([]byte, 10+124)
			c.mustRead(b)
			if binary.BigEndian.Uint64(b) != 8192 || binary.BigEndian.Uint16(b[8:]) != wantRO.flags ||
				!bytes.Equal(b[10:], make([]byte, 124)) {
				t.Errorf("EXPORT_NAME reply %x", b)
			}
			go c.readLoop()
			if e := c.mustDo(nbd.CmdRead, 0, 512, 512, nil, make([]byte, 512)); e != 0 {
				t.Errorf("read: %v", e)
			}
		}},
		{"export name no zeroes", func(t *testing.T, c *tclient) {
			c.hello(cFixedNewstyle | cNoZeroes)
			c.sendOption(optExportName, nil)
			b := make([]byte, 10)
			c.mustRead(b)
			if binary.BigEndian.Uint64(b) != 1<<20 || binary.BigEndian.Uint16(b[8:]) != wantMem.flags {
				t.Errorf("EXPORT_NAME reply %x", b)
			}
			go c.readLoop()
			if e := c.mustDo(nbd.CmdFlush, 0, 0, 0, nil, nil); e != 0 {
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
		{"unknown client flags", func(c *tclient) { c.hello(cFixedNewstyle | 1<<7) }},
		{"bad option magic", func(c *tclient) {
			c.hello(cFixedNewstyle)
			c.mustWrite(make([]byte, 16))
		}},
		{"export name unknown", func(c *tclient) {
			c.hello(cFixedNewstyle)
			c.sendOption(optExportName, []byte("nope"))
		}},
		{"huge option", func(c *tclient) {
			c.hello(cFixedNewstyle)
			b := binary.BigEndian.AppendUint64(nil, magicOpt)
			b = binary.BigEndian.AppendUint32(b, optInfo)
			c.mustWrite(binary.BigEndian.AppendUint32(b, 1<<30))
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
	ts.cli.hello(cFixedNewstyle | 1<<9)
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
