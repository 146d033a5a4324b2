package nbdwire

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// Every decoder has a fuzz target. Each checks that the decoder does not
// panic, that a failure wraps ErrShort exactly when the input is shorter
// than the form's minimum and ErrMalformed otherwise, and that a success
// survives parse(serialize(parse(x))) == parse(x). Encodings are canonical,
// so re-encoding must also give back the bytes that were decoded: the
// header's bytes for a header (data may follow it), all of them for a form
// that is a whole option's or reply's data.
//
// Seeds are valid forms, the same cut short, and the same with a byte
// appended or with a length or count field pushed past what follows.

// addVariants seeds f with b, b cut short, and b with a byte appended.
func addVariants(f *testing.F, b []byte) {
	f.Add(b)
	if len(b) > 0 {
		f.Add(b[:len(b)-1])
		f.Add(b[:len(b)/2])
	}
	f.Add(append(append([]byte(nil), b...), 0))
}

// fuzzDecoder runs the checks above. min is the shortest input that is not
// ErrShort; whole says the form must take all of its input.
func fuzzDecoder[T any](f *testing.F, min int, whole bool, decode func([]byte) (T, error), encode func(T) []byte) {
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := decode(b)
		if err != nil {
			if !errors.Is(err, ErrShort) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v wraps neither ErrShort nor ErrMalformed", err)
			}
			if errors.Is(err, ErrShort) != (len(b) < min) {
				t.Fatalf("%d bytes (minimum %d): error %v", len(b), min, err)
			}
			return
		}
		enc := encode(v)
		if whole && !bytes.Equal(enc, b) || !bytes.HasPrefix(b, enc) {
			t.Fatalf("re-encoding %+v: got %x, decoded %x", v, enc, b)
		}
		v2, err := decode(enc)
		if err != nil || !reflect.DeepEqual(v2, v) {
			t.Fatalf("second decode = %+v, %v; want %+v", v2, err, v)
		}
	})
}

func FuzzDecodeServerHello(f *testing.F) {
	addVariants(f, ServerHello{Flags: HandshakeFixedNewstyle | HandshakeNoZeroes}.Append(nil))
	f.Add(unhex(f, "4e42444d41474943 0000420281861253 0000")) // old style
	fuzzDecoder(f, ServerHelloSize, false, DecodeServerHello, func(h ServerHello) []byte { return h.Append(nil) })
}

func FuzzDecodeClientFlags(f *testing.F) {
	addVariants(f, (ClientFixedNewstyle | ClientNoZeroes).Append(nil))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	fuzzDecoder(f, ClientFlagsSize, false, DecodeClientFlags, func(c ClientFlags) []byte { return c.Append(nil) })
}

func FuzzDecodeOptHeader(f *testing.F) {
	addVariants(f, OptHeader{Option: OptList}.Append(nil))
	addVariants(f, append(OptHeader{Option: OptGo, Length: 9}.Append(nil), InfoRequest{Name: "mem"}.Append(nil)...))
	f.Add(OptHeader{Option: OptInfo, Length: 1 << 30}.Append(nil))
	fuzzDecoder(f, OptHeaderSize, false, DecodeOptHeader, func(h OptHeader) []byte { return h.Append(nil) })
}

func FuzzDecodeOptReplyHeader(f *testing.F) {
	addVariants(f, OptReplyHeader{Option: OptGo, Type: RepAck}.Append(nil))
	addVariants(f, append(OptReplyHeader{Option: OptGo, Type: RepErrUnknown, Length: 4}.Append(nil), "nope"...))
	f.Add(OptReplyHeader{Option: OptGo, Type: RepInfo, Length: 1<<32 - 1}.Append(nil))
	fuzzDecoder(f, OptReplyHeaderSize, false, DecodeOptReplyHeader, func(h OptReplyHeader) []byte { return h.Append(nil) })
}

func FuzzDecodeExportNameReply(f *testing.F) {
	addVariants(f, ExportNameReply{Size: 1 << 20, Flags: TransHasFlags}.Append(nil, false))
	f.Add(ExportNameReply{Size: 8192, Flags: TransHasFlags | TransReadOnly}.Append(nil, true))
	fuzzDecoder(f, ExportNameReplySize, false, DecodeExportNameReply, func(r ExportNameReply) []byte { return r.Append(nil, false) })
}

func FuzzDecodeExportEntry(f *testing.F) {
	addVariants(f, ExportEntry{Name: "ro", Description: "read only"}.Append(nil))
	addVariants(f, ExportEntry{Name: "disk0"}.Append(nil))
	f.Add(unhex(f, "00000009 726f"))      // name longer than the data
	f.Add(unhex(f, "ffffffff 726f 726f")) // name length near 2^32
	fuzzDecoder(f, exportEntryMinSize, true, DecodeExportEntry, func(e ExportEntry) []byte { return e.Append(nil) })
}

func FuzzDecodeInfoRequest(f *testing.F) {
	addVariants(f, InfoRequest{Name: "mem", Infos: []InfoType{InfoBlockSize, InfoName}}.Append(nil))
	addVariants(f, InfoRequest{}.Append(nil))
	addVariants(f, InfoRequest{Name: strings.Repeat("x", MaxString)}.Append(nil))
	f.Add(unhex(f, "00000009 6d 0000"))             // name longer than the data
	f.Add(unhex(f, "ffffffff 0000"))                // name length near 2^32
	f.Add(unhex(f, "00000000 ffff 0003"))           // count far past the data
	f.Add(unhex(f, "00000003 6d656d 0001 0003 00")) // trailing byte
	fuzzDecoder(f, infoRequestMinSize, true, func(b []byte) (InfoRequest, error) {
		r, err := DecodeInfoRequest(b)
		if err == nil && 2*len(r.Infos) > len(b) {
			panic("more info types than the data holds")
		}
		return r, err
	}, func(r InfoRequest) []byte { return r.Append(nil) })
}

func FuzzDecodeInfoType(f *testing.F) {
	addVariants(f, ExportInfo{Size: 1 << 20}.Append(nil))
	f.Add(AppendInfoText(nil, InfoName, "mem"))
	fuzzDecoder(f, InfoTypeSize, false, DecodeInfoType, func(t InfoType) []byte { return AppendInfoText(nil, t, "") })
}

func FuzzDecodeExportInfo(f *testing.F) {
	addVariants(f, ExportInfo{Size: 1 << 20, Flags: 0x17f}.Append(nil))
	f.Add(BlockSizeInfo{Min: 1, Preferred: 4096, Max: 32 << 20}.Append(nil)[:InfoExportSize])
	fuzzDecoder(f, InfoExportSize, true, DecodeExportInfo, func(i ExportInfo) []byte { return i.Append(nil) })
}

func FuzzDecodeBlockSizeInfo(f *testing.F) {
	addVariants(f, BlockSizeInfo{Min: 512, Preferred: 4096, Max: 32 << 20}.Append(nil))
	f.Add(append(ExportInfo{Size: 1 << 20}.Append(nil), 0, 0))
	fuzzDecoder(f, InfoBlockSizeSize, true, DecodeBlockSizeInfo, func(i BlockSizeInfo) []byte { return i.Append(nil) })
}

func FuzzDecodeRequest(f *testing.F) {
	addVariants(f, Request{Flags: FlagFUA, Cmd: CmdWrite, Cookie: 1, Offset: 4096, Length: 3}.Append(nil))
	f.Add(append(Request{Cmd: CmdWrite, Cookie: 2, Length: 3}.Append(nil), "abc"...))
	f.Add(Request{Cmd: CmdRead, Cookie: 1<<64 - 1, Offset: 1<<64 - 1, Length: 1<<32 - 1}.Append(nil))
	f.Add(SimpleReply{Cookie: 1}.Append(make([]byte, 0, RequestSize))[:SimpleReplySize])
	fuzzDecoder(f, RequestSize, false, DecodeRequest, func(r Request) []byte { return r.Append(nil) })
}

func FuzzDecodeSimpleReply(f *testing.F) {
	addVariants(f, SimpleReply{Errno: EIO, Cookie: 42}.Append(nil))
	f.Add(append(SimpleReply{Cookie: 7}.Append(nil), make([]byte, 512)...))
	f.Add(unhex(f, "668e33ef 0001 0001 000000000000002a")) // structured
	fuzzDecoder(f, SimpleReplySize, false, DecodeSimpleReply, func(r SimpleReply) []byte { return r.Append(nil) })
}

func FuzzDecodeChunk(f *testing.F) {
	addVariants(f, Chunk{Flags: ChunkDone, Type: ChunkOffsetData, Cookie: 7, Length: 4104}.Append(nil))
	addVariants(f, SimpleReply{Errno: EIO, Cookie: 7}.Append(nil))
	fuzzDecoder(f, ChunkSize, false, DecodeChunk, func(c Chunk) []byte { return c.Append(nil) })
}

func FuzzDecodeChunkErr(f *testing.F) {
	for _, t := range []ChunkType{ChunkError, ChunkErrorOffset} {
		addVariants(f, AppendChunkErr(nil, t, ChunkErr{Errno: EIO, Message: "disk on fire", Offset: 4096}))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, typ := range []ChunkType{ChunkError, ChunkErrorOffset} {
			e, err := DecodeChunkErr(typ, b)
			if err != nil {
				if !errors.Is(err, ErrShort) && !errors.Is(err, ErrMalformed) {
					t.Fatalf("error %v wraps neither ErrShort nor ErrMalformed", err)
				}
				if errors.Is(err, ErrShort) != (len(b) < ChunkErrorMinSize) {
					t.Fatalf("%d bytes: error %v", len(b), err)
				}
				continue
			}
			if enc := AppendChunkErr(nil, typ, e); !bytes.Equal(enc, b) {
				t.Fatalf("re-encoding %+v as %v: got %x, decoded %x", e, typ, enc, b)
			}
		}
	})
}
