package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// A message codec under test: append a value's body, decode a body back.
type codec struct {
	name   string
	append func(b []byte, v any) []byte
	decode func(b []byte) (any, error)
}

var (
	helloCodec = codec{"Hello",
		func(b []byte, v any) []byte { h := v.(Hello); return AppendHello(b, &h) },
		func(b []byte) (any, error) { return DecodeHello(b) }}
	serverInfoCodec = codec{"ServerInfo",
		func(b []byte, v any) []byte { s := v.(ServerInfo); return AppendServerInfo(b, &s) },
		func(b []byte) (any, error) { return DecodeServerInfo(b) }}
	queueCodec = codec{"Queue",
		func(b []byte, v any) []byte { q := v.(Queue); return AppendQueue(b, &q) },
		func(b []byte) (any, error) { return DecodeQueue(b) }}
	controlCodec = codec{"Control",
		func(b []byte, v any) []byte { c := v.(Control); return AppendControl(b, &c) },
		func(b []byte) (any, error) { return DecodeControl(b) }}
	openedCodec = codec{"Opened",
		func(b []byte, v any) []byte { o := v.(Opened); return AppendOpened(b, &o) },
		func(b []byte) (any, error) { return DecodeOpened(b) }}
	errorCodec = codec{"Error",
		func(b []byte, v any) []byte { e := v.(ErrorMsg); return AppendError(b, &e) },
		func(b []byte) (any, error) { return DecodeError(b) }}
	pingCodec = codec{"Ping",
		func(b []byte, v any) []byte { p := v.(Ping); return AppendPing(b, &p) },
		func(b []byte) (any, error) { return DecodePing(b) }}
	pongCodec = codec{"Pong",
		func(b []byte, v any) []byte { p := v.(Pong); return AppendPong(b, &p) },
		func(b []byte) (any, error) { return DecodePong(b) }}
	eventCodec = codec{"Event",
		func(b []byte, v any) []byte { e := v.(Event); return AppendEvent(b, &e) },
		func(b []byte) (any, error) { return DecodeEvent(b) }}
)

// A name at the limit, and one over it; bytes that are not UTF-8 must pass
// through untouched.
var (
	maxName  = strings.Repeat("n", MaxName-2) + "\xff\x00"
	longName = maxName + "cut"
)

// validExport returns an export that passes validation, named name.
func validExport(name string) ExportInfo {
	return ExportInfo{
		Name: name, Size: 1 << 40, LogicalBlock: 4096, PhysicalBlock: 4096,
		MaxTransfer: 1 << 20, Flags: ExportFlush | ExportFUA, Identity: Identity{1, 2, 3},
	}
}

func manyExports(n int) []ExportInfo {
	e := make([]ExportInfo, n)
	for i := range e {
		e[i] = validExport(fmt.Sprintf("export-%d", i))
		e[i].Identity[15] = byte(i)
	}
	return e
}

func TestControlRoundTrip(t *testing.T) {
	max64 := uint64(math.MaxUint64)
	maxExport := ExportInfo{
		Name: maxName, Size: max64 - (64<<10 - 1), LogicalBlock: 64 << 10, PhysicalBlock: 64 << 10,
		MaxTransfer: MaxPayload, Flags: knownExportFlags,
		Identity: Identity{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	}
	minExport := ExportInfo{LogicalBlock: 512, PhysicalBlock: 512, MaxTransfer: 512}
	tests := []struct {
		c    codec
		in   any
		want any // what decoding gives back; in if nil
	}{
		{helloCodec, Hello{}, nil},
		{helloCodec, Hello{Version: Version, Attachment: Identity{1}, Epoch: 1, Client: "c"}, nil},
		{helloCodec, Hello{Version: math.MaxUint16, Attachment: maxExport.Identity, Epoch: max64, Client: maxName}, nil},
		{helloCodec, Hello{Version: Version, Epoch: max64 - 1, Client: longName},
			Hello{Version: Version, Epoch: max64 - 1, Client: maxName}},
		{helloCodec, Hello{Version: Version, Flags: HelloEvents, Attachment: Identity{1}, Epoch: 1, Client: "c"}, nil},

		{eventCodec, Event{}, nil},
		{eventCodec, Event{Kind: EventResized, Size: 1 << 40, Export: "disk0"}, nil},
		{eventCodec, Event{Kind: EventShutdown, Message: "restarting"}, nil},
		{eventCodec, Event{Kind: math.MaxUint16, Size: max64, Export: maxName, Message: maxName}, nil},
		{eventCodec, Event{Kind: EventResized, Export: longName, Message: longName},
			Event{Kind: EventResized, Export: maxName, Message: maxName}},

		{serverInfoCodec, ServerInfo{}, nil},
		{serverInfoCodec, ServerInfo{Version: Version, Exports: []ExportInfo{}}, ServerInfo{Version: Version}},
		{serverInfoCodec, ServerInfo{Version: Version, Clock: 1, Server: longName, Exports: []ExportInfo{minExport}},
			ServerInfo{Version: Version, Clock: 1, Server: maxName, Exports: []ExportInfo{minExport}}},
		{serverInfoCodec, ServerInfo{Version: math.MaxUint16, Instance: maxExport.Identity, Clock: max64, Server: maxName,
			Exports: []ExportInfo{maxExport, minExport, validExport("")}}, nil},
		{serverInfoCodec, ServerInfo{Version: Version, Clock: 1 << 63, Exports: manyExports(MaxExports)}, nil},

		{pingCodec, Ping{}, nil},
		{pingCodec, Ping{Seq: 1}, nil},
		{pingCodec, Ping{Seq: max64}, nil},

		{pongCodec, Pong{}, nil},
		{pongCodec, Pong{Seq: 1, Clock: max64}, nil},
		{pongCodec, Pong{Seq: max64, Clock: 1}, nil},
		{pongCodec, Pong{Seq: max64, Clock: max64}, nil},

		{queueCodec, Queue{Version: Version}, nil},
		{queueCodec, Queue{Version: math.MaxUint16, Attachment: maxExport.Identity, Epoch: max64,
			Session: Identity{0xff, 1}, Export: maxName}, nil},
		{queueCodec, Queue{Version: Version, Epoch: 1, Export: longName}, Queue{Version: Version, Epoch: 1, Export: maxName}},
		{queueCodec, Queue{Version: Version, Flags: QueueReadOnly | QueueTakeOver, Epoch: 1, Export: "e"}, nil},
		{controlCodec, Control{Version: Version}, nil},
		{controlCodec, Control{Version: math.MaxUint16}, nil},

		{openedCodec, Opened{Export: minExport}, nil},
		{openedCodec, Opened{Export: maxExport}, nil},
		{openedCodec, Opened{Export: validExport(longName)}, Opened{Export: validExport(maxName)}},

		{errorCodec, ErrorMsg{}, nil},
		{errorCodec, ErrorMsg{Status: math.MaxUint16, Message: maxName}, nil},
		{errorCodec, ErrorMsg{Status: StatusEPERM, Message: longName}, ErrorMsg{Status: StatusEPERM, Message: maxName}},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.c.name, i), func(t *testing.T) {
			want := tt.want
			if want == nil {
				want = tt.in
			}
			body := tt.c.append(nil, tt.in)
			got, err := tt.c.decode(body)
			if err != nil {
				t.Fatalf("decode(%x): %v", body, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
			// Encoding what was decoded gives the same bytes.
			if again := tt.c.append(nil, got); !bytes.Equal(again, body) {
				t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, body)
			}
			// Every strict prefix is short, one byte more is malformed.
			// Long bodies check every prefix near either end and a stride
			// between, to stay fast.
			for n := 0; n < len(body); n += prefixStep(n, len(body)) {
				if v, err := tt.c.decode(body[:n]); !errors.Is(err, ErrShort) {
					t.Fatalf("decode of %d/%d bytes = %+v, %v; want ErrShort", n, len(body), v, err)
				}
			}
			if v, err := tt.c.decode(append(body, 0)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("decode with a trailing byte = %+v, %v; want ErrMalformed", v, err)
			}
			// A framed message fits the header's limit.
			if len(body) > MaxMessage {
				t.Fatalf("body of %d bytes exceeds MaxMessage", len(body))
			}
		})
	}
}

func prefixStep(n, size int) int {
	if n < 512 || n >= size-128 {
		return 1
	}
	return min(257, size-128-n)
}

func TestServerInfoExportCount(t *testing.T) {
	// The count follows version, flags, instance, clock, session and the server
	// name, empty here.
	const countOffset = 2 + 2 + IdentitySize + 8 + IdentitySize + 1
	// One over the limit is refused even though every export is valid.
	body := AppendServerInfo(nil, &ServerInfo{Version: Version, Exports: manyExports(MaxExports + 1)})
	if _, err := DecodeServerInfo(body); !errors.Is(err, ErrMalformed) {
		t.Errorf("%d exports: err = %v, want ErrMalformed", MaxExports+1, err)
	}
	// A huge count is refused before anything is read for it.
	head := AppendServerInfo(nil, &ServerInfo{Version: Version})
	if len(head) != countOffset+2 {
		t.Fatalf("ServerInfo without exports is %d bytes, want %d", len(head), countOffset+2)
	}
	binary.BigEndian.PutUint16(head[countOffset:], math.MaxUint16)
	s, err := DecodeServerInfo(head)
	if !errors.Is(err, ErrMalformed) {
		t.Errorf("count 65535 with no exports: err = %v, want ErrMalformed", err)
	}
	if len(s.Exports) != 0 {
		t.Errorf("count 65535 decoded %d exports", len(s.Exports))
	}
	// A count that promises more than the body holds is short.
	body = AppendServerInfo(nil, &ServerInfo{Version: Version, Exports: manyExports(2)})
	binary.BigEndian.PutUint16(body[countOffset:], 3)
	if _, err := DecodeServerInfo(body); !errors.Is(err, ErrShort) {
		t.Errorf("count 3 with 2 exports: err = %v, want ErrShort", err)
	}
	// A count lower than the exports present leaves trailing bytes.
	binary.BigEndian.PutUint16(body[countOffset:], 1)
	if _, err := DecodeServerInfo(body); !errors.Is(err, ErrMalformed) {
		t.Errorf("count 1 with 2 exports: err = %v, want ErrMalformed", err)
	}
}

func TestExportValidation(t *testing.T) {
	tests := []struct {
		name string
		edit func(e *ExportInfo)
		ok   bool
	}{
		{"valid", func(e *ExportInfo) {}, true},
		{"all known flags", func(e *ExportInfo) { e.Flags = knownExportFlags }, true},
		{"unknown flag 0x100", func(e *ExportInfo) { e.Flags |= 0x100 }, false},
		{"unknown flag 1<<31", func(e *ExportInfo) { e.Flags = 1 << 31 }, false},
		{"size 0", func(e *ExportInfo) { e.Size = 0 }, true},
		{"size not a block multiple", func(e *ExportInfo) { e.Size = 1<<40 + 512 }, false},
		{"largest size", func(e *ExportInfo) { e.Size = math.MaxUint64 - 4095 }, true},
		{"size 2^64-1", func(e *ExportInfo) { e.Size = math.MaxUint64 }, false},
		{"logical 512", func(e *ExportInfo) { e.LogicalBlock = 512 }, true},
		{"logical 0", func(e *ExportInfo) { e.LogicalBlock = 0 }, false},
		{"logical 256", func(e *ExportInfo) { e.LogicalBlock, e.PhysicalBlock = 256, 256 }, false},
		{"logical 511", func(e *ExportInfo) { e.LogicalBlock = 511 }, false},
		{"logical 513", func(e *ExportInfo) { e.LogicalBlock = 513 }, false},
		{"logical 3072", func(e *ExportInfo) { e.LogicalBlock = 3072 }, false},
		{"logical 64 KiB", func(e *ExportInfo) { e.LogicalBlock, e.PhysicalBlock = 64<<10, 64<<10 }, true},
		{"logical 128 KiB", func(e *ExportInfo) { e.LogicalBlock, e.PhysicalBlock = 128<<10, 128<<10 }, false},
		{"logical 2^31", func(e *ExportInfo) { e.LogicalBlock, e.PhysicalBlock = 1<<31, 1<<31 }, false},
		{"physical 64 KiB over logical 512", func(e *ExportInfo) { e.LogicalBlock, e.PhysicalBlock = 512, 64<<10 }, true},
		{"physical below logical", func(e *ExportInfo) { e.PhysicalBlock = 512 }, false},
		{"physical 0", func(e *ExportInfo) { e.PhysicalBlock = 0 }, false},
		{"physical 6144", func(e *ExportInfo) { e.PhysicalBlock = 6144 }, false},
		{"physical 128 KiB", func(e *ExportInfo) { e.PhysicalBlock = 128 << 10 }, false},
		{"max transfer one block", func(e *ExportInfo) { e.MaxTransfer = 4096 }, true},
		{"max transfer MaxPayload", func(e *ExportInfo) { e.MaxTransfer = MaxPayload }, true},
		{"max transfer 0", func(e *ExportInfo) { e.MaxTransfer = 0 }, false},
		{"max transfer below a block", func(e *ExportInfo) { e.MaxTransfer = 2048 }, false},
		{"max transfer over MaxPayload", func(e *ExportInfo) { e.MaxTransfer = MaxPayload + 4096 }, false},
		{"max transfer 4 GiB-4 KiB", func(e *ExportInfo) { e.MaxTransfer = math.MaxUint32 - 4095 }, false},
		{"max transfer not a block multiple", func(e *ExportInfo) { e.MaxTransfer = 1<<20 + 512 }, false},
		{"empty name", func(e *ExportInfo) { e.Name = "" }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := validExport("disk")
			tt.edit(&e)
			check := func(what string, err error) {
				t.Helper()
				switch {
				case tt.ok && err != nil:
					t.Errorf("%s: %+v rejected: %v", what, e, err)
				case !tt.ok && !errors.Is(err, ErrMalformed):
					t.Errorf("%s: %+v: err = %v, want ErrMalformed", what, e, err)
				}
				checkErrPrefix(t, err)
			}
			_, err := DecodeOpened(AppendOpened(nil, &Opened{Export: e}))
			check("Opened", err)
			// In a ServerInfo, a bad export anywhere in the list fails it.
			s := ServerInfo{Version: Version, Exports: []ExportInfo{validExport("a"), e, validExport("b")}}
			_, err = DecodeServerInfo(AppendServerInfo(nil, &s))
			check("ServerInfo", err)
		})
	}
}

func TestControlRejects(t *testing.T) {
	hello := AppendHello(nil, &Hello{Version: Version, Attachment: Identity{1}, Epoch: 1, Client: "c"})
	info := AppendServerInfo(nil, &ServerInfo{Version: Version, Clock: 1, Server: "s"})
	ping := AppendPing(nil, &Ping{Seq: 1})
	pong := AppendPong(nil, &Pong{Seq: 1, Clock: 2})
	event := AppendEvent(nil, &Event{Kind: EventResized, Size: 4096, Export: "e"})
	flip := func(b []byte, i int) []byte {
		b = append([]byte(nil), b...)
		b[i] ^= 0x01
		return b
	}
	withByte := func(b []byte, i int, v byte) []byte {
		b = append([]byte(nil), b...)
		b[i] = v
		return b
	}
	tests := []struct {
		name string
		c    codec
		body []byte
		want error
	}{
		{"Hello empty", helloCodec, nil, ErrShort},
		{"Hello flags high byte", helloCodec, flip(hello, 2), ErrMalformed},
		{"Hello unknown flag", helloCodec, withByte(hello, 3, 0x02), ErrMalformed},
		{"Hello cut in the attachment", helloCodec, hello[:4+IdentitySize-1], ErrShort},
		{"Hello cut in the epoch", helloCodec, hello[:4+IdentitySize+7], ErrShort},
		{"Hello without its client name", helloCodec, hello[:4+IdentitySize+8], ErrShort},
		{"Hello name longer than body", helloCodec, append(hello[:4+IdentitySize+8:4+IdentitySize+8], 5, 'a'), ErrShort},
		{"Hello two names", helloCodec, append(hello[:len(hello):len(hello)], 1, 'x'), ErrMalformed},
		{"ServerInfo empty", serverInfoCodec, nil, ErrShort},
		{"ServerInfo flags", serverInfoCodec, flip(info, 3), ErrMalformed},
		{"ServerInfo cut in the instance", serverInfoCodec, info[:10], ErrShort},
		{"ServerInfo cut in the clock", serverInfoCodec, info[:4+IdentitySize+7], ErrShort},
		{"ServerInfo without its count", serverInfoCodec, info[:len(info)-2], ErrShort},
		{"Ping empty", pingCodec, nil, ErrShort},
		{"Ping of 7 bytes", pingCodec, ping[:7], ErrShort},
		{"Ping of 9 bytes", pingCodec, append(ping[:8:8], 0), ErrMalformed},
		{"Ping carrying a Pong's body", pingCodec, pong, ErrMalformed},
		{"Event empty", eventCodec, nil, ErrShort},
		{"Event reserved", eventCodec, flip(event, 3), ErrMalformed},
		{"Event cut in the size", eventCodec, event[:11], ErrShort},
		{"Event without its message", eventCodec, event[:len(event)-1], ErrShort},
		{"Event with a trailing byte", eventCodec, append(event[:len(event):len(event)], 0), ErrMalformed},
		{"Pong empty", pongCodec, nil, ErrShort},
		{"Pong with only a seq", pongCodec, pong[:8], ErrShort},
		{"Pong of 15 bytes", pongCodec, pong[:15], ErrShort},
		{"Pong of 17 bytes", pongCodec, append(pong[:16:16], 0), ErrMalformed},
		{"Queue empty", queueCodec, nil, ErrShort},
		{"Queue without export", queueCodec, make([]byte, 44), ErrShort},
		{"Queue name length 255, body 1", queueCodec, append(make([]byte, 44), 255, 'x'), ErrShort},
		{"Queue two names", queueCodec, append(make([]byte, 44), 1, 'a', 1, 'b'), ErrMalformed},
		{"Queue unknown flag", queueCodec, append([]byte{0, 3, 0, 4}, make([]byte, 41)...), ErrMalformed},
		{"Control empty", controlCodec, nil, ErrShort},
		{"Control flags", controlCodec, []byte{0, 3, 0, 1}, ErrMalformed},
		{"Control long", controlCodec, []byte{0, 3, 0, 0, 0}, ErrMalformed},
		{"Opened empty", openedCodec, nil, ErrShort},
		{"Opened name only", openedCodec, []byte{1, 'a'}, ErrShort},
		{"Error empty", errorCodec, nil, ErrShort},
		{"Error status only", errorCodec, []byte{0, 5}, ErrShort},
		{"Error one status byte", errorCodec, []byte{0}, ErrShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := tt.c.decode(tt.body)
			if !errors.Is(err, tt.want) {
				t.Fatalf("decode(%x) = %+v, %v; want an error wrapping %v", tt.body, v, err, tt.want)
			}
			checkErrPrefix(t, err)
		})
	}
}

// A version 1 peer's HELLO or SERVER_INFO does not decode as version 2,
// but the decoders still return the version they read first, so the server
// and client can name the mismatch instead of reporting a malformed message.
func TestDecodeVersion1(t *testing.T) {
	v1Hello := unhex(t, `0001 | 0000 | 04 686f7374`) // version 1, flags, client "host"
	h, err := DecodeHello(v1Hello)
	if !errors.Is(err, ErrShort) || h.Version != 1 {
		t.Errorf("DecodeHello(version 1 body) = %+v, %v; want version 1 and ErrShort", h, err)
	}
	v1Info := unhex(t, `
		0001 | 0000                      # version 1, flags
		000102030405060708090a0b0c0d0e0f # instance
		03 737276 | 0000                 # server "srv", no exports`)
	s, err := DecodeServerInfo(v1Info)
	if !errors.Is(err, ErrShort) || s.Version != 1 {
		t.Errorf("DecodeServerInfo(version 1 body) = %+v, %v; want version 1 and ErrShort", s, err)
	}
	// A version 1 HELLO whose client name fills the fields version 2 added
	// still fails, and still says version 1.
	long := append(unhex(t, `0001 | 0000 | 30`), strings.Repeat("x", 0x30)...)
	h, err = DecodeHello(long)
	if err == nil || h.Version != 1 {
		t.Errorf("DecodeHello(version 1 body, 48-byte name) = %+v, %v; want version 1 and an error", h, err)
	}
}

func TestMsgHeader(t *testing.T) {
	header := func(typ, reserved uint16, length uint32) []byte {
		b := binary.BigEndian.AppendUint16(nil, typ)
		b = binary.BigEndian.AppendUint16(b, reserved)
		return binary.BigEndian.AppendUint32(b, length)
	}
	tests := []struct {
		name string
		b    []byte
		want error // nil: decodes to typ, length
		typ  MsgType
		len  uint32
	}{
		{"Hello, empty body", header(1, 0, 0), nil, MsgHello, 0},
		{"Error at MaxMessage", header(5, 0, MaxMessage), nil, MsgError, MaxMessage},
		{"ServerInfo", header(2, 0, 7), nil, MsgServerInfo, 7},
		{"Control", header(8, 0, 4), nil, MsgControl, 4},
		{"Queue", header(9, 0, 45), nil, MsgQueue, 45},
		{"Opened", header(4, 0, 45), nil, MsgOpened, 45},
		{"Ping", header(6, 0, 8), nil, MsgPing, 8},
		{"Pong", header(7, 0, 16), nil, MsgPong, 16},
		{"empty", nil, ErrShort, 0, 0},
		{"one byte short", header(1, 0, 0)[:MsgHeaderSize-1], ErrShort, 0, 0},
		{"type 0", header(0, 0, 0), ErrMalformed, 0, 0},
		{"type 3, OPEN before version 3", header(3, 0, 1), ErrMalformed, 0, 0},
		{"type 12, the first unknown", header(12, 0, 0), ErrMalformed, 0, 0},
		{"Ping with reserved set", header(6, 1, 8), ErrMalformed, 0, 0},
		{"type 0x0100", header(0x0100, 0, 0), ErrMalformed, 0, 0},
		{"type 65535", header(math.MaxUint16, 0, 0), ErrMalformed, 0, 0},
		{"reserved 1", header(1, 1, 0), ErrMalformed, 0, 0},
		{"reserved 0x8000", header(1, 0x8000, 0), ErrMalformed, 0, 0},
		{"MaxMessage+1", header(1, 0, MaxMessage+1), ErrMalformed, 0, 0},
		{"length 2^32-1", header(2, 0, math.MaxUint32), ErrMalformed, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := DecodeMsgHeader(tt.b)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("DecodeMsgHeader(%x) = %+v, %v; want an error wrapping %v", tt.b, h, err, tt.want)
				}
				checkErrPrefix(t, err)
				return
			}
			if err != nil || h != (MsgHeader{Type: tt.typ, Length: tt.len}) {
				t.Fatalf("DecodeMsgHeader(%x) = %+v, %v; want %v %d", tt.b, h, err, tt.typ, tt.len)
			}
			// AppendMessage writes the same header.
			framed := AppendMessage(nil, tt.typ, make([]byte, tt.len))
			if !bytes.Equal(framed[:MsgHeaderSize], tt.b) {
				t.Fatalf("AppendMessage header %x, want %x", framed[:MsgHeaderSize], tt.b)
			}
		})
	}
}

func TestReadMessage(t *testing.T) {
	var stream []byte
	stream = AppendMessage(stream, MsgHello, AppendHello(nil, &Hello{Version: Version, Epoch: 1, Client: "c"}))
	stream = AppendMessage(stream, MsgControl, nil)
	stream = AppendMessage(stream, MsgPing, AppendPing(nil, &Ping{Seq: 3}))
	big := bytes.Repeat([]byte{0x5a}, MaxMessage)
	stream = AppendMessage(stream, MsgError, big)
	want := []struct {
		typ  MsgType
		body []byte
	}{
		{MsgHello, AppendHello(nil, &Hello{Version: Version, Epoch: 1, Client: "c"})},
		{MsgControl, []byte{}},
		{MsgPing, AppendPing(nil, &Ping{Seq: 3})},
		{MsgError, big},
	}
	// One byte at a time, to show ReadMessage copes with short reads.
	r := iotest.OneByteReader(bytes.NewReader(stream))
	for i, w := range want {
		typ, body, err := ReadMessage(r)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if typ != w.typ || !bytes.Equal(body, w.body) {
			t.Fatalf("message %d = %v %d bytes, want %v %d bytes", i, typ, len(body), w.typ, len(w.body))
		}
	}
	// The stream ends cleanly between messages.
	if _, _, err := ReadMessage(r); err != io.EOF {
		t.Fatalf("at the end of the stream: err = %v, want io.EOF", err)
	}
}

func TestReadMessageErrors(t *testing.T) {
	hello := AppendMessage(nil, MsgHello, AppendHello(nil, &Hello{Version: Version, Epoch: 1, Client: "client"}))
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"header cut", hello[:3], io.ErrUnexpectedEOF},
		{"body cut", hello[:len(hello)-1], io.ErrUnexpectedEOF},
		{"unknown type", AppendMessage(nil, 12, nil), ErrMalformed},
		// Refused before the body is read, or allocated: there is none.
		{"length over MaxMessage", binary.BigEndian.AppendUint32([]byte{0, 1, 0, 0}, MaxMessage+1), ErrMalformed},
		{"length 2^32-1", binary.BigEndian.AppendUint32([]byte{0, 1, 0, 0}, math.MaxUint32), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ, body, err := ReadMessage(bytes.NewReader(tt.b))
			if !errors.Is(err, tt.want) {
				t.Fatalf("ReadMessage(%x) = %v, %x, %v; want an error wrapping %v", tt.b, typ, body, err, tt.want)
			}
			if body != nil {
				t.Errorf("ReadMessage returned a body with its error")
			}
		})
	}
	// A reader's own error comes back wrapped.
	boom := errors.New("boom")
	r := io.MultiReader(bytes.NewReader(hello[:MsgHeaderSize+2]), iotest.ErrReader(boom))
	if _, _, err := ReadMessage(r); !errors.Is(err, boom) {
		t.Errorf("reader error: got %v, want it wrapped", err)
	}
}

// BUG: a stream that ends right after a message header makes ReadMessage
// return an error wrapping io.EOF, which callers take for a clean close
// between messages. A header promising a body that never comes is a
// truncated message: io.ErrUnexpectedEOF, as when the body is cut short.
func TestReadMessageEOFAfterHeader(t *testing.T) {
	header := AppendMessage(nil, MsgQueue, []byte{4, 'd', 'i', 's', 'k'})[:MsgHeaderSize]
	_, _, err := ReadMessage(bytes.NewReader(header))
	if errors.Is(err, io.EOF) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("EOF after a header promising 5 bytes: err = %v, want io.ErrUnexpectedEOF and not io.EOF", err)
	}
}

func TestErrorMsgIsError(t *testing.T) {
	var err error = &ErrorMsg{Status: StatusEINVAL, Message: "no such export"}
	s := err.Error()
	if !strings.Contains(s, "no such export") || !strings.Contains(s, "EINVAL") {
		t.Errorf("ErrorMsg.Error() = %q, want the message and the status", s)
	}
	var em *ErrorMsg
	if !errors.As(fmt.Errorf("opening: %w", err), &em) || em.Status != StatusEINVAL {
		t.Errorf("errors.As did not find the *ErrorMsg")
	}
}
