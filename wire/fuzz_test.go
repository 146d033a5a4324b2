package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
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
	addVariants(f, encodeRequest(Request{Cmd: CmdWrite, Flags: FlagFUA, Length: 3, ID: 1, Offset: 4096, Checksum: checksumABC, Expires: 10_000_000_000}))
	addVariants(f, encodeRequest(Request{Cmd: CmdRead, Length: MaxPayload, ID: math.MaxUint64, Offset: 1 << 40, Expires: math.MaxUint64}))
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
	for _, typ := range []MsgType{MsgHello, MsgServerInfo, MsgOpened, MsgError, MsgPing, MsgPong, MsgControl, MsgQueue, MsgEvent, MsgBye} {
		addVariants(f, AppendMessage(nil, typ, []byte("body")))
	}
	f.Add(AppendMessage(nil, MsgControl, nil))
	f.Add(binary.BigEndian.AppendUint32([]byte{0, 2, 0, 0}, MaxMessage))
	f.Add(binary.BigEndian.AppendUint32([]byte{0, 2, 0, 0}, MaxMessage+1))
	f.Add(binary.BigEndian.AppendUint32([]byte{0, 1, 0, 0}, math.MaxUint32))
	f.Add([]byte{0, 8, 0, 0, 0, 0, 0, 0})
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
	addVariants(f, AppendHello(nil, &Hello{Version: Version, Attachment: goldenAttachment, Epoch: 1, Client: "client.example"}))
	addVariants(f, AppendHello(nil, &Hello{Version: math.MaxUint16, Attachment: goldenAttachment, Epoch: math.MaxUint64, Client: maxName}))
	// A client name longer than the body, and nonzero flags.
	empty := AppendHello(nil, &Hello{Version: Version, Epoch: 1})
	f.Add(append(empty[:len(empty)-1:len(empty)-1], 0xff))
	flags := append([]byte(nil), empty...)
	flags[3] = 1
	f.Add(flags)
	// A version 1 HELLO, which version 2 reads as short.
	f.Add([]byte{0, 1, 0, 0, 4, 'h', 'o', 's', 't'})
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, helloCodec, b) })
}

func FuzzDecodeServerInfo(f *testing.F) {
	addVariants(f, AppendServerInfo(nil, &ServerInfo{Version: Version, Instance: Identity{1}, Clock: 3600_000_000_000,
		Server: "srv", Exports: []ExportInfo{goldenExport, validExport("b")}}))
	addVariants(f, AppendServerInfo(nil, &ServerInfo{Version: Version, Clock: math.MaxUint64}))
	bad := validExport("bad")
	bad.PhysicalBlock = 1000
	f.Add(AppendServerInfo(nil, &ServerInfo{Version: Version, Exports: []ExportInfo{bad}}))
	huge := AppendServerInfo(nil, &ServerInfo{Version: Version})
	binary.BigEndian.PutUint16(huge[len(huge)-2:], math.MaxUint16)
	f.Add(huge)
	over := AppendServerInfo(nil, &ServerInfo{Version: Version})
	binary.BigEndian.PutUint16(over[len(over)-2:], MaxExports+1)
	f.Add(over)
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, serverInfoCodec, b) })
}

func FuzzDecodeQueue(f *testing.F) {
	addVariants(f, AppendQueue(nil, &Queue{Version: Version, Attachment: goldenAttachment, Epoch: 1,
		Session: Identity{7}, Export: "disk"}))
	addVariants(f, AppendQueue(nil, &Queue{Version: Version, Epoch: math.MaxUint64, Export: maxName}))
	f.Add([]byte{0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, queueCodec, b) })
}

func FuzzDecodeControl(f *testing.F) {
	addVariants(f, AppendControl(nil, &Control{Version: Version}))
	f.Add([]byte{0, 3, 0, 1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, controlCodec, b) })
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

func FuzzDecodePing(f *testing.F) {
	addVariants(f, AppendPing(nil, &Ping{Seq: 1}))
	addVariants(f, AppendPing(nil, &Ping{Seq: math.MaxUint64}))
	f.Add(AppendPong(nil, &Pong{Seq: 1, Clock: 2}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, pingCodec, b) })
}

func FuzzDecodePong(f *testing.F) {
	addVariants(f, AppendPong(nil, &Pong{Seq: 1, Clock: 10_000_000_000}))
	addVariants(f, AppendPong(nil, &Pong{Seq: math.MaxUint64, Clock: math.MaxUint64}))
	f.Add(AppendPing(nil, &Ping{Seq: 1}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, pongCodec, b) })
}

func FuzzDecodeEvent(f *testing.F) {
	addVariants(f, AppendEvent(nil, &Event{Kind: EventResized, Size: 1 << 40, Export: "disk0"}))
	addVariants(f, AppendEvent(nil, &Event{Kind: EventShutdown, Message: "restarting"}))
	f.Add(AppendPong(nil, &Pong{Seq: 1, Clock: 2}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) { fuzzBody(t, eventCodec, b) })
}

func FuzzReadMessage(f *testing.F) {
	addVariants(f, AppendMessage(nil, MsgHello, AppendHello(nil, &Hello{Version: Version, Attachment: goldenAttachment, Epoch: 1, Client: "c"})))
	addVariants(f, AppendMessage(nil, MsgPing, AppendPing(nil, &Ping{Seq: 1})))
	addVariants(f, AppendMessage(nil, MsgPong, AppendPong(nil, &Pong{Seq: 1, Clock: 2})))
	addVariants(f, AppendMessage(nil, MsgOpened, AppendOpened(nil, &Opened{Export: goldenExport})))
	f.Add(AppendMessage(nil, MsgControl, nil))
	f.Add(AppendMessage(nil, MsgQueue, nil)[:MsgHeaderSize-1])
	two := AppendMessage(nil, MsgControl, []byte{0, 3, 0, 0})
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

// TestSeedCorpus keeps the committed seeds honest after a layout change:
// a seed named valid… must decode, and a seed named for a defect
// (truncated, trailing-byte, oversized…) must not. Inputs that fuzzing
// saved, named by their hash, are left to their targets.
func TestSeedCorpus(t *testing.T) {
	decoders := map[string]func([]byte) error{
		"FuzzDecodeRequest":    func(b []byte) error { _, err := DecodeRequest(b); return err },
		"FuzzDecodeReply":      func(b []byte) error { _, err := DecodeReply(b); return err },
		"FuzzDecodeMsgHeader":  func(b []byte) error { _, err := DecodeMsgHeader(b); return err },
		"FuzzDecodeHello":      func(b []byte) error { _, err := DecodeHello(b); return err },
		"FuzzDecodeServerInfo": func(b []byte) error { _, err := DecodeServerInfo(b); return err },
		"FuzzDecodePing":       func(b []byte) error { _, err := DecodePing(b); return err },
		"FuzzDecodePong":       func(b []byte) error { _, err := DecodePong(b); return err },
		"FuzzDecodeEvent":      func(b []byte) error { _, err := DecodeEvent(b); return err },
		"FuzzDecodeQueue":      func(b []byte) error { _, err := DecodeQueue(b); return err },
		"FuzzDecodeControl":    func(b []byte) error { _, err := DecodeControl(b); return err },
		"FuzzDecodeOpened":     func(b []byte) error { _, err := DecodeOpened(b); return err },
		"FuzzDecodeError":      func(b []byte) error { _, err := DecodeError(b); return err },
		"FuzzReadMessage":      readAllMessages,
	}
	dirs, err := os.ReadDir(filepath.Join("testdata", "fuzz"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		decode, ok := decoders[dir.Name()]
		if !ok {
			t.Errorf("testdata/fuzz/%s: no such fuzz target here", dir.Name())
			continue
		}
		files, err := os.ReadDir(filepath.Join("testdata", "fuzz", dir.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, file := range files {
			name := dir.Name() + "/" + file.Name()
			if savedByFuzzing.MatchString(file.Name()) {
				continue
			}
			b := readSeed(t, filepath.Join("testdata", "fuzz", name))
			err := decode(b)
			switch valid := strings.HasPrefix(file.Name(), "valid"); {
			case valid && err != nil:
				t.Errorf("seed %s (%x) does not decode: %v", name, b, err)
			case !valid && err == nil:
				t.Errorf("seed %s (%x) decodes, but its name says it should not", name, b)
			}
		}
	}
}

// savedByFuzzing matches the names go test gives the inputs it saves.
var savedByFuzzing = regexp.MustCompile(`^[0-9a-f]{16}$`)

// readAllMessages reads framed messages until the input ends between two.
func readAllMessages(b []byte) error {
	r := bytes.NewReader(b)
	for {
		if _, _, err := ReadMessage(r); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// readSeed parses a corpus file holding one []byte in the
// "go test fuzz v1" encoding.
func readSeed(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	header, value, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
	lit, ok := strings.CutPrefix(value, "[]byte(")
	lit, ok2 := strings.CutSuffix(lit, ")")
	if header != "go test fuzz v1" || !ok || !ok2 {
		t.Fatalf("%s: not a go test fuzz v1 file holding one []byte", path)
	}
	s, err := strconv.Unquote(lit)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(s)
}
