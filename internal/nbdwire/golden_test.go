package nbdwire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
)

// The golden encodings below were written out by hand, field by field, from
// proto.md, and only then compared with what the code produces.

// unhex decodes hex in which spaces, tabs, newlines and "|" separate fields
// and "#" starts a comment running to the end of the line.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	var sb strings.Builder
	for line := range strings.SplitSeq(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		sb.WriteString(strings.NewReplacer(" ", "", "\t", "", "|", "").Replace(line))
	}
	b, err := hex.DecodeString(sb.String())
	if err != nil {
		t.Fatalf("bad golden hex: %v", err)
	}
	return b
}

// form is one value of a wire form with its encoder and decoder.
type form struct {
	name   string
	val    any
	append func(b []byte) []byte
	decode func(b []byte) (any, error)
}

func decoder[T any](f func([]byte) (T, error)) func([]byte) (any, error) {
	return func(b []byte) (any, error) { return f(b) }
}

func serverHello(h ServerHello) form {
	return form{"ServerHello", h, h.Append, decoder(DecodeServerHello)}
}
func clientFlags(f ClientFlags) form {
	return form{"ClientFlags", f, f.Append, decoder(DecodeClientFlags)}
}
func optHeader(h OptHeader) form {
	return form{"OptHeader", h, h.Append, decoder(DecodeOptHeader)}
}
func optReplyHeader(h OptReplyHeader) form {
	return form{"OptReplyHeader", h, h.Append, decoder(DecodeOptReplyHeader)}
}
func exportNameReply(r ExportNameReply, zeroes bool) form {
	return form{"ExportNameReply", r, func(b []byte) []byte { return r.Append(b, zeroes) }, decoder(DecodeExportNameReply)}
}
func exportEntry(e ExportEntry) form {
	return form{"ExportEntry", e, e.Append, decoder(DecodeExportEntry)}
}
func infoRequest(r InfoRequest) form {
	return form{"InfoRequest", r, r.Append, decoder(DecodeInfoRequest)}
}
func exportInfo(i ExportInfo) form {
	return form{"ExportInfo", i, i.Append, decoder(DecodeExportInfo)}
}
func blockSizeInfo(i BlockSizeInfo) form {
	return form{"BlockSizeInfo", i, i.Append, decoder(DecodeBlockSizeInfo)}
}
func request(r Request) form {
	return form{"Request", r, r.Append, decoder(DecodeRequest)}
}
func simpleReply(r SimpleReply) form {
	return form{"SimpleReply", r, r.Append, decoder(DecodeSimpleReply)}
}

func TestGolden(t *testing.T) {
	tests := []struct {
		form
		hex string
	}{
		{serverHello(ServerHello{Flags: HandshakeFixedNewstyle | HandshakeNoZeroes}), `
			4e42444d41474943 # "NBDMAGIC"
			49484156454f5054 # "IHAVEOPT"
			0003             # FIXED_NEWSTYLE|NO_ZEROES`},
		{clientFlags(ClientFixedNewstyle | ClientNoZeroes), `00000003`},
		{optHeader(OptHeader{Option: OptGo, Length: 9}), `
			49484156454f5054 # "IHAVEOPT"
			00000007         # NBD_OPT_GO
			00000009         # 9 bytes of data follow`},
		{optReplyHeader(OptReplyHeader{Option: OptGo, Type: RepErrUnknown, Length: 17}), `
			0003e889045565a9 # reply magic
			00000007         # to NBD_OPT_GO
			80000006         # NBD_REP_ERR_UNKNOWN
			00000011         # 17 bytes of message follow`},
		{exportNameReply(ExportNameReply{Size: 1 << 20, Flags: 0x17f}, false), `
			0000000000100000 # 1 MiB
			017f             # HAS_FLAGS .. SEND_WRITE_ZEROES, CAN_MULTI_CONN`},
		{exportNameReply(ExportNameReply{Size: 8192, Flags: TransHasFlags | TransReadOnly}, true), `
			0000000000002000 | 0003 # 8 KiB, HAS_FLAGS|READ_ONLY
			` + strings.Repeat("00", 124) + `# reserved`},
		{exportEntry(ExportEntry{Name: "ro", Description: "read only"}), `
			00000002 | 726f    # name "ro"
			72656164206f6e6c79 # description "read only"`},
		{exportEntry(ExportEntry{}), `00000000`},
		{infoRequest(InfoRequest{Name: "mem", Infos: []InfoType{InfoBlockSize, InfoName}}), `
			00000003 | 6d656d # name "mem"
			0002              # two info requests
			0003 | 0001       # BLOCK_SIZE, NAME`},
		{infoRequest(InfoRequest{}), `
			00000000 # default export: empty name
			0000     # no info requests`},
		{exportInfo(ExportInfo{Size: 8192, Flags: TransHasFlags | TransReadOnly}), `
			0000             # NBD_INFO_EXPORT
			0000000000002000 # 8 KiB
			0003             # HAS_FLAGS|READ_ONLY`},
		{blockSizeInfo(BlockSizeInfo{Min: 512, Preferred: 4096, Max: 32 << 20}), `
			0003     # NBD_INFO_BLOCK_SIZE
			00000200 # minimum 512
			00001000 # preferred 4096
			02000000 # maximum 32 MiB`},
		{request(Request{Flags: FlagFUA, Cmd: CmdWrite, Cookie: 0x0102030405060708, Offset: 0x1000, Length: 0x200}), `
			25609513         # request magic
			0001 | 0001      # FUA, NBD_CMD_WRITE
			0102030405060708 # cookie
			0000000000001000 # offset 4096
			00000200         # length 512`},
		{simpleReply(SimpleReply{Errno: ENOSPC, Cookie: 42}), `
			67446698         # simple reply magic
			0000001c         # ENOSPC
			000000000000002a # cookie`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := unhex(t, tt.hex)
			if got := tt.append(nil); !bytes.Equal(got, want) {
				t.Errorf("encoding %+v:\n got %x\nwant %x", tt.val, got, want)
			}
			// Append keeps what b holds.
			if got := tt.append([]byte("xy")); !bytes.Equal(got, append([]byte("xy"), want...)) {
				t.Errorf("Append onto a prefix: %x", got)
			}
			got, err := tt.decode(want)
			if err != nil || !reflect.DeepEqual(got, tt.val) {
				t.Errorf("decoding %x = %+v, %v; want %+v", want, got, err, tt.val)
			}
		})
	}
	if b := AppendInfoText(nil, InfoName, "ro"); !bytes.Equal(b, unhex(t, "0001 | 726f")) {
		t.Errorf("NBD_INFO_NAME \"ro\" = %x", b)
	}
}

// TestRoundTrip encodes boundary values and decodes them back.
func TestRoundTrip(t *testing.T) {
	infos := make([]InfoType, 300)
	for i := range infos {
		infos[i] = InfoType(i * 257)
	}
	forms := []form{
		serverHello(ServerHello{}),
		serverHello(ServerHello{Flags: math.MaxUint16}),
		clientFlags(math.MaxUint32),
		optHeader(OptHeader{}),
		optHeader(OptHeader{Option: math.MaxUint32, Length: math.MaxUint32}),
		optReplyHeader(OptReplyHeader{Option: math.MaxUint32, Type: math.MaxUint32, Length: math.MaxUint32}),
		exportNameReply(ExportNameReply{Size: math.MaxUint64, Flags: math.MaxUint16}, true),
		exportEntry(ExportEntry{Name: strings.Repeat("n", MaxString), Description: strings.Repeat("d", MaxString)}),
		exportEntry(ExportEntry{Description: "\x00\x00\x00\x09"}),
		infoRequest(InfoRequest{Name: strings.Repeat("n", MaxString), Infos: infos}),
		infoRequest(InfoRequest{Name: "\x00\xff", Infos: []InfoType{math.MaxUint16}}),
		exportInfo(ExportInfo{}),
		exportInfo(ExportInfo{Size: math.MaxUint64, Flags: math.MaxUint16}),
		blockSizeInfo(BlockSizeInfo{}),
		blockSizeInfo(BlockSizeInfo{Min: math.MaxUint32, Preferred: math.MaxUint32, Max: math.MaxUint32}),
		request(Request{}),
		request(Request{Flags: math.MaxUint16, Cmd: math.MaxUint16, Cookie: math.MaxUint64, Offset: math.MaxUint64, Length: math.MaxUint32}),
		simpleReply(SimpleReply{}),
		simpleReply(SimpleReply{Errno: math.MaxUint32, Cookie: math.MaxUint64}),
	}
	for _, f := range forms {
		b := f.append(nil)
		got, err := f.decode(b)
		if err != nil || !reflect.DeepEqual(got, f.val) {
			t.Errorf("%s: %+v encodes to %x, decodes to %+v, %v", f.name, f.val, b, got, err)
		}
	}
	if r := (InfoRequest{Name: "mem", Infos: infos}); r.Len() != len(r.Append(nil)) {
		t.Errorf("InfoRequest.Len() = %d, encoding has %d bytes", r.Len(), len(r.Append(nil)))
	}
}

func TestDecodeErrors(t *testing.T) {
	valid := func(f form) []byte { return f.append(nil) }
	req := valid(request(Request{Cmd: CmdRead, Length: 512}))
	tests := []struct {
		name   string
		decode func([]byte) (any, error)
		in     []byte
		want   error
	}{
		{"hello short", decoder(DecodeServerHello), valid(serverHello(ServerHello{}))[:17], ErrShort},
		{"hello oldstyle", decoder(DecodeServerHello), unhex(t, "4e42444d41474943 0000420281861253 0000"), ErrMalformed},
		{"hello bad first magic", decoder(DecodeServerHello), unhex(t, "4e42444d41474944 49484156454f5054 0001"), ErrMalformed},
		{"client flags short", decoder(DecodeClientFlags), []byte{0, 0, 3}, ErrShort},
		{"option short", decoder(DecodeOptHeader), valid(optHeader(OptHeader{}))[:15], ErrShort},
		{"option magic", decoder(DecodeOptHeader), make([]byte, OptHeaderSize), ErrMalformed},
		{"option reply short", decoder(DecodeOptReplyHeader), nil, ErrShort},
		{"option reply is an option header", decoder(DecodeOptReplyHeader), valid(optHeader(OptHeader{})), ErrShort},
		{"option reply magic", decoder(DecodeOptReplyHeader), append(valid(optHeader(OptHeader{})), 0, 0, 0, 0), ErrMalformed},
		{"export name reply short", decoder(DecodeExportNameReply), make([]byte, 9), ErrShort},
		{"export entry short", decoder(DecodeExportEntry), []byte{0, 0, 0}, ErrShort},
		{"export entry name too long", decoder(DecodeExportEntry), unhex(t, "00000003 726f"), ErrMalformed},
		{"export entry name wraps", decoder(DecodeExportEntry), unhex(t, "ffffffff 726f"), ErrMalformed},
		{"info request short", decoder(DecodeInfoRequest), []byte{0, 0, 0, 0, 0}, ErrShort},
		{"info request name too long", decoder(DecodeInfoRequest), unhex(t, "00000009 6d 0000"), ErrMalformed},
		{"info request name into count", decoder(DecodeInfoRequest), unhex(t, "00000002 6d6d 00"), ErrMalformed},
		{"info request count too high", decoder(DecodeInfoRequest), unhex(t, "00000000 0002 0003"), ErrMalformed},
		{"info request trailing bytes", decoder(DecodeInfoRequest), unhex(t, "00000000 0001 0003 0001"), ErrMalformed},
		{"info request name wraps", decoder(DecodeInfoRequest), unhex(t, "ffffffff 0000"), ErrMalformed},
		{"info type short", decoder(DecodeInfoType), []byte{0}, ErrShort},
		{"export info short", decoder(DecodeExportInfo), valid(exportInfo(ExportInfo{}))[:11], ErrShort},
		{"export info long", decoder(DecodeExportInfo), append(valid(exportInfo(ExportInfo{})), 0), ErrMalformed},
		{"export info wrong type", decoder(DecodeExportInfo), valid(blockSizeInfo(BlockSizeInfo{}))[:12], ErrMalformed},
		{"block size short", decoder(DecodeBlockSizeInfo), valid(blockSizeInfo(BlockSizeInfo{}))[:13], ErrShort},
		{"block size long", decoder(DecodeBlockSizeInfo), append(valid(blockSizeInfo(BlockSizeInfo{})), 0), ErrMalformed},
		{"block size wrong type", decoder(DecodeBlockSizeInfo), append(valid(exportInfo(ExportInfo{})), 0, 0), ErrMalformed},
		{"request short", decoder(DecodeRequest), req[:RequestSize-1], ErrShort},
		{"request magic", decoder(DecodeRequest), make([]byte, RequestSize), ErrMalformed},
		{"request is a reply", decoder(DecodeRequest), append(valid(simpleReply(SimpleReply{})), make([]byte, 12)...), ErrMalformed},
		{"reply short", decoder(DecodeSimpleReply), valid(simpleReply(SimpleReply{}))[:15], ErrShort},
		{"reply magic", decoder(DecodeSimpleReply), req[:SimpleReplySize], ErrMalformed},
		{"structured reply", decoder(DecodeSimpleReply), unhex(t, "668e33ef 0001 0001 000000000000002a"), ErrMalformed},
	}
	for _, tt := range tests {
		_, err := tt.decode(tt.in)
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: decoding %x = %v, want %v", tt.name, tt.in, err, tt.want)
		}
	}
	// Headers are followed by data; decoding reads only the header.
	if r, err := DecodeRequest(append(req, "payload"...)); err != nil || r.Length != 512 {
		t.Errorf("request followed by payload: %+v, %v", r, err)
	}
}

// The transmission phase's forms are on the hot path: decoding must not
// allocate, and encoding into a buffer with room must not either.
func TestTransmissionNoAllocs(t *testing.T) {
	var hdr [RequestSize]byte
	Request{Cmd: CmdRead, Cookie: 1, Length: 4096}.Append(hdr[:0])
	var rep [SimpleReplySize]byte
	var sink uint64
	n := testing.AllocsPerRun(100, func() {
		r, err := DecodeRequest(hdr[:])
		if err != nil {
			t.Fatal(err)
		}
		s, err := DecodeSimpleReply(SimpleReply{Errno: EIO, Cookie: r.Cookie}.Append(rep[:0]))
		if err != nil {
			t.Fatal(err)
		}
		sink += s.Cookie + uint64(len(Request{}.Append(hdr[:0])))
	})
	if n != 0 {
		t.Errorf("%v allocations per decode and encode", n)
	}
	_ = sink
}

func BenchmarkDecodeRequest(b *testing.B) {
	hdr := Request{Flags: FlagFUA, Cmd: CmdWrite, Cookie: 1, Offset: 4096, Length: 4096}.Append(nil)
	var sum uint64
	for b.Loop() {
		r, _ := DecodeRequest(hdr)
		sum += r.Offset
	}
	_ = sum
}
