package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"reflect"
	"testing"
)

// Every decoder has a fuzz target. Each checks that the decoder does not
// panic, that a failure wraps ErrShort or ErrMalformed, and that a success
// survives parse(serialize(parse(x))) == parse(x). Encodings are canonical
// (reserved fields must be zero, lengths are exact), so re-encoding must also
// give back the bytes that were decoded.
//
// Seeds are valid frames, the same cut short, and the same with extra bytes
// or with a length field pushed past its limit. More seeds are committed
// under testdata/fuzz/.

// checkDecodeErr fails unless err is one of the decoders' two kinds.
func checkDecodeErr(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrShort) && !errors.Is(err, ErrMalformed) {
		t.Fatalf("error %v wraps neither ErrShort nor ErrMalformed", err)
	}
}

// addVariants seeds f with b, b cut short, and b with a byte appended.
func addVariants(f *testing.F, b []byte) {
	f.Add(b)
	if len(b) > 0 {
		f.Add(b[:len(b)-1])
		f.Add(b[:len(b)/2])
	}
	f.Add(append(append([]byte(nil), b...), 0))
}

func FuzzDecodeRequest(f *testing.F) {
	addVariants(f, encodeRequest(Request{Cmd: CmdWrite, Flags: FlagFUA, Length: 3, ID: 1, Offset: 4096, Checksum: checksumABC}))
	addVariants(f, encodeRequest(Request{Cmd: CmdRead, Length: MaxPayload, ID: math.MaxUint64, Offset: 1 << 40}))
	f.Add(encodeRequest(Request{Cmd: CmdWrite, Length: MaxPayload + 1}))
	f.Add(encodeRequest(Request{Cmd: CmdTrim, Length: math.MaxUint32, Offset: math.MaxUint64}))
	f.Add(append(encodeRequest(Request{Cmd: CmdWrite, Length: 3, Checksum: checksumABC}), "abc"...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRequest(b)
		if err != nil {
			checkDecodeErr(t, err)
			if errors.Is(err, ErrShort) != (len(b) < RequestSize) {
				t.Fatalf("%d bytes: error %v", len(b), err)
			}
			return
		}
		enc := encodeRequest(r)
		if !bytes.Equal(enc, b[:RequestSize]) {
			t.Fatalf("re-encoding %+v: got %x, decoded %x", r, enc, b[:RequestSize])
		}
		r2, err := DecodeRequest(enc)
		if err != nil || r2 != r {
			t.Fatalf("second decode = %+v, %v; want %+v", r2, err, r)
		}
		if p := r.PayloadLen(); p < 0 || p > MaxPayload {
			t.Fatalf("accepted %+v with payload length %d", r, p)
		}
		if r.Offset+uint64(r.Length) < r.Offset {
			t.Fatalf("accepted overflowing range %+v", r)
		}
	})
}

func FuzzDecodeReply(f *testing.F) {
	addVariants(f, encodeReply(Reply{Cmd: CmdRead, Length: 3, ID: 1, Checksum: checksumABC}))
	addVariants(f, encodeReply(Reply{Cmd: CmdWrite, Status: StatusBadChecksum, ID: math.MaxUint64}))
	f.Add(encodeReply(Reply{Cmd: CmdRead, Length: MaxPayload + 1, Checksum: 1}))
	f.Add(encodeReply(Reply{Cmd: CmdRead, Length: math.MaxUint32, Checksum: 1}))
	f.Add(append(encodeReply(Reply{Cmd: CmdRead, Length: 3, Checksum: checksumABC}), "abc"...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeReply(b)
		if err != nil {
			checkDecodeErr(t, err)
			if errors.Is(err, ErrShort) != (len(b) < ReplySize) {
				t.Fatalf("%d bytes: error %v", len(b), err)
			}
			return
		}
		enc := encodeReply(r)
		if !bytes.Equal(enc, b[:ReplySize]) {
			t.Fatalf("re-encoding %+v: got %x, decoded %x", r, enc, b[:ReplySize])
		}
		r2, err := DecodeReply(enc)
		if err != nil || r2 != r {
			t.Fatalf("second decode = %+v, %v; want %+v", r2, err, r)
		}
		if r.Length > MaxPayload || (r.Length != 0 && (r.Cmd != CmdRead || r.Status != StatusOK)) {
			t.Fatalf("accepted %+v", r)
		}
	})
}

// zeros backs the bodies FuzzDecodeMsgHeader frames, so that re-encoding a
// header of any accepted length does not allocate.
var zeros = make([]byte, MaxMessage)

func FuzzDecodeMsgHeader(f *testing.F) {
	for _, typ := range []MsgType{MsgHello, MsgServerInfo, MsgOpen, MsgOpened, MsgError} {
		addVariants(f, AppendMessage(nil, typ, []byte("body")))
	}
	f.Add(AppendMessage(nil, MsgOpen, nil))
	f.Add(binary.BigEndian.AppendUint32([]byte{0, 2, 0, 0}, MaxMessage))
	f.Add(binary.BigEndian.AppendUint32([]byte{0, 2, 0, 0}, MaxMessage+1))
	f.Add(binary.BigEndian.AppendUint32([]byte{0, 1, 0, 0}, math.MaxUint32))
	f.Add([]byte{0, 6, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 1, 0, 1, 0, 0, 0, 0})
	buf := make([]byte, 0, MsgHeaderSize+MaxMessage)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeMsgHeader(b)
		if err != nil {
			checkDecodeErr(t, err)
			if errors.Is(err, ErrShort) != (len(b) < MsgHeaderSize) {
				t.Fatalf("%d bytes: error %v", len(b), err)
			}
			return
		}
		if h.Length > MaxMessage {
			t.Fatalf("accepted %+v", h)
		}
		enc := AppendMessage(buf[:0], h.Type, zeros[:h.Length])[:MsgHeaderSize]
		if !bytes.Equal(enc, b[:MsgHeaderSize]) {
			t.Fatalf("re-encoding %+v: got %x, decoded %x", h, enc, b[:MsgHeaderSize])
		}
		h2, err := DecodeMsgHeader(enc)
		if err != nil || h2 != h {
			t.Fatalf("second decode = %+v, %v; want %+v", h2, err, h)
		}
	})
}

// fuzzBody is the body of the control message fuzz targets.
func fuzzBody(t *testing.T, c codec, b []byte) {
	v, err := c.decode(b)
	if err != nil {
		checkDecodeErr(t, err)
		return
	}
	enc := c.append(nil, v)
	if !bytes.Equal(enc, b) {
		t.Fatalf("re-encoding %+v:\n got %x\nfrom %x", v, enc, b)
	}
	v2, err := c.decode(enc)
	if err != nil || !reflect.DeepEqual(v2, v) {
		t.Fatalf("second decode = %+v, %v; want %+v", v2, err, v)
	}
}

func FuzzDecodeHello(f *testing.F) {
	addVariants(f, AppendHello(nil, &Hello{Version: Version, Client: "client.example"}))
	addVariants(f, AppendHello(nil, &Hello{Version: math.MaxUint16, Client: maxName}))
	f.Add([]byte{0, 1, 0, 0, 0xff})
	f.Add([]byte{0, 1, 0, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, helloCodec, b) })
}

func FuzzDecodeServerInfo(f *testing.F) {
	addVariants(f, AppendServerInfo(nil, &ServerInfo{Version: 1, Instance: Identity{1}, Server: "srv",
		Exports: []ExportInfo{goldenExport, validExport("b")}}))
	addVariants(f, AppendServerInfo(nil, &ServerInfo{Version: 1}))
	bad := validExport("bad")
	bad.PhysicalBlock = 1000
	f.Add(AppendServerInfo(nil, &ServerInfo{Version: 1, Exports: []ExportInfo{bad}}))
	huge := AppendServerInfo(nil, &ServerInfo{Version: 1})
	binary.BigEndian.PutUint16(huge[len(huge)-2:], math.MaxUint16)
	f.Add(huge)
	over := AppendServerInfo(nil, &ServerInfo{Version: 1})
	binary.BigEndian.PutUint16(over[len(over)-2:], MaxExports+1)
	f.Add(over)
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, serverInfoCodec, b) })
}

func FuzzDecodeOpen(f *testing.F) {
	addVariants(f, AppendOpen(nil, &Open{Export: "disk"}))
	addVariants(f, AppendOpen(nil, &Open{Export: maxName}))
	f.Add([]byte{0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, openCodec, b) })
}

func FuzzDecodeOpened(f *testing.F) {
	addVariants(f, AppendOpened(nil, &Opened{Export: goldenExport}))
	big := ExportInfo{Name: maxName, Size: math.MaxUint64 - 65535, LogicalBlock: 64 << 10,
		PhysicalBlock: 64 << 10, MaxTransfer: MaxPayload, Flags: knownExportFlags}
	addVariants(f, AppendOpened(nil, &Opened{Export: big}))
	big.MaxTransfer = math.MaxUint32
	f.Add(AppendOpened(nil, &Opened{Export: big}))
	big.MaxTransfer, big.Flags = MaxPayload, math.MaxUint32
	f.Add(AppendOpened(nil, &Opened{Export: big}))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, openedCodec, b) })
}

func FuzzDecodeError(f *testing.F) {
	addVariants(f, AppendError(nil, &ErrorMsg{Status: StatusEINVAL, Message: "no such export"}))
	addVariants(f, AppendError(nil, &ErrorMsg{Status: math.MaxUint16, Message: maxName}))
	f.Add([]byte{0, 0, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, errorCodec, b) })
}

func FuzzReadMessage(f *testing.F) {
	addVariants(f, AppendMessage(nil, MsgHello, AppendHello(nil, &Hello{Version: 1, Client: "c"})))
	addVariants(f, AppendMessage(nil, MsgOpened, AppendOpened(nil, &Opened{Export: goldenExport})))
	f.Add(AppendMessage(nil, MsgOpen, nil))
	f.Add(AppendMessage(nil, MsgOpen, nil)[:MsgHeaderSize-1])
	two := AppendMessage(nil, MsgOpen, []byte{1, 'a'})
	f.Add(AppendMessage(two, MsgError, []byte{0, 5, 0}))
	f.Add(binary.BigEndian.AppendUint32([]byte{0, 2, 0, 0}, MaxMessage+1))
	f.Add(binary.BigEndian.AppendUint32([]byte{0, 2, 0, 0}, 1000))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		typ, body, err := ReadMessage(r)
		if err != nil {
			// io.EOF alone means nothing at all was read. Errors that wrap
			// io.EOF after a header are TestReadMessageEOFAfterHeader's.
			switch {
			case err == io.EOF && len(b) != 0:
				t.Fatalf("bare io.EOF after %d bytes", len(b))
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, ErrMalformed):
			default:
				t.Fatalf("unexpected error %v", err)
			}
			if body != nil {
				t.Fatalf("body %x returned with error %v", body, err)
			}
			return
		}
		framed := AppendMessage(nil, typ, body)
		if consumed := len(b) - r.Len(); consumed != len(framed) || !bytes.Equal(framed, b[:consumed]) {
			t.Fatalf("read %v with %d body bytes, consuming %d input bytes; re-framed as %x", typ, len(body), consumed, framed)
		}
		typ2, body2, err := ReadMessage(bytes.NewReader(framed))
		if err != nil || typ2 != typ || !bytes.Equal(body2, body) {
			t.Fatalf("second read = %v %x, %v; want %v %x", typ2, body2, err, typ, body)
		}
	})
}
