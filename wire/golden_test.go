package wire

import (
	"bytes"
	"encoding/hex"
	"reflect"
	"strings"
	"testing"
)

// The golden encodings below were written out by hand, field by field, from
// the layout comments in data.go and control.go, and only then compared with
// what the code produces. A change to any of them is a wire format change:
// bump Version and note it in the version history.

// unhex decodes a hex string in which spaces, tabs, newlines and "|"
// separate fields and "#" starts a comment running to the end of the line,
// for the reader's benefit.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	var sb strings.Builder
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		sb.WriteString(line)
	}
	s = strings.NewReplacer(" ", "", "\t", "", "|", "").Replace(sb.String())
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad golden hex: %v", err)
	}
	return b
}

// checksumABC is xxhash64("abc"), the published test vector.
const checksumABC = 0x44bc2cf5ad770999

func TestGoldenRequest(t *testing.T) {
	tests := []struct {
		name string
		r    Request
		hex  string
	}{
		{
			// "abc" at offset 4096, which the server must not start once
			// its clock reads 10 s (10^10 ns = 0x2540be400).
			name: "WRITE FUA with expiry",
			r: Request{Cmd: CmdWrite, Flags: FlagFUA, Length: 3, ID: 0x0102030405060708, Offset: 0x1000,
				Checksum: checksumABC, Expires: 10_000_000_000},
			hex: `
				02 | 01 | 0000 | 00000003 # cmd WRITE, flags FUA, reserved, length 3
				0102030405060708          # id
				0000000000001000          # offset 4096
				44bc2cf5ad770999          # checksum xxhash64("abc")
				00000002540be400          # expires 10 s on the server's clock`,
		},
		{
			name: "READ without expiry",
			r:    Request{Cmd: CmdRead, Length: 0x10000, ID: 42, Offset: 1 << 40},
			hex: `
				01 | 00 | 0000 | 00010000 # cmd READ, no flags, reserved, length 64 KiB
				000000000000002a          # id 42
				0000010000000000          # offset 1 TiB
				0000000000000000          # no checksum without payload
				0000000000000000          # expires 0: never`,
		},
		{
			name: "FLUSH expiring at the last nanosecond",
			r:    Request{Cmd: CmdFlush, ID: 7, Expires: 0xffffffffffffffff},
			hex: `03 | 00 | 0000 | 00000000 | 0000000000000007 | 0000000000000000 | 0000000000000000
				ffffffffffffffff`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := unhex(t, tt.hex)
			if len(want) != RequestSize {
				t.Fatalf("golden request is %d bytes, want %d", len(want), RequestSize)
			}
			// Encode must write every byte, reserved ones included.
			got := bytes.Repeat([]byte{0xee}, RequestSize)
			tt.r.Encode(got)
			if !bytes.Equal(got, want) {
				t.Errorf("Encode(%+v)\n got %x\nwant %x", tt.r, got, want)
			}
			dec, err := DecodeRequest(want)
			if err != nil {
				t.Fatalf("DecodeRequest(golden): %v", err)
			}
			if dec != tt.r {
				t.Errorf("DecodeRequest(golden) = %+v, want %+v", dec, tt.r)
			}
		})
	}
	r := tests[0].r
	if r.PayloadLen() != 3 {
		t.Errorf("PayloadLen = %d, want 3", r.PayloadLen())
	}
	if Checksum([]byte("abc")) != r.Checksum {
		t.Errorf("golden checksum is not Checksum(\"abc\")")
	}
}

func TestGoldenReply(t *testing.T) {
	tests := []struct {
		name string
		r    Reply
		hex  string
	}{
		{
			name: "READ OK with checksum",
			r:    Reply{Cmd: CmdRead, Status: StatusOK, Length: 3, ID: 0x0102030405060708, Checksum: checksumABC},
			hex:  `01 | 00 | 0000 | 00000003 | 0102030405060708 | 44bc2cf5ad770999`,
		},
		{
			name: "WRITE ENOSPC",
			r:    Reply{Cmd: CmdWrite, Status: StatusENOSPC, ID: 9},
			hex:  `02 | 00 | 001c | 00000000 | 0000000000000009 | 0000000000000000`,
		},
		{
			name: "WRITE BAD_CHECKSUM",
			r:    Reply{Cmd: CmdWrite, Status: StatusBadChecksum, ID: 0xffffffffffffffff},
			hex:  `02 | 00 | 0100 | 00000000 | ffffffffffffffff | 0000000000000000`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := unhex(t, tt.hex)
			if len(want) != ReplySize {
				t.Fatalf("golden reply is %d bytes, want %d", len(want), ReplySize)
			}
			got := bytes.Repeat([]byte{0xee}, ReplySize)
			tt.r.Encode(got)
			if !bytes.Equal(got, want) {
				t.Errorf("Encode(%+v)\n got %x\nwant %x", tt.r, got, want)
			}
			dec, err := DecodeReply(want)
			if err != nil {
				t.Fatalf("DecodeReply(golden): %v", err)
			}
			if dec != tt.r {
				t.Errorf("DecodeReply(golden) = %+v, want %+v", dec, tt.r)
			}
		})
	}
}

// goldenExport is the export used by the ServerInfo and Opened goldens.
var goldenExport = ExportInfo{
	Name:          "disk",
	Size:          1 << 30,
	LogicalBlock:  512,
	PhysicalBlock: 4096,
	MaxTransfer:   1 << 20,
	Flags:         ExportFlush | ExportFUA | ExportTrim,
	Identity:      Identity{0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf},
}

// goldenAttachment is the attachment id of the Hello golden.
var goldenAttachment = Identity{0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f}

// goldenExportHex is goldenExport's encoding: 45 bytes.
const goldenExportHex = `
	04 6469736b                      # name "disk"
	0000000040000000                 # size 1 GiB
	00000200 | 00001000 | 00100000   # logical 512, physical 4096, max transfer 1 MiB
	0000000e                         # flags flush|fua|trim
	a0a1a2a3a4a5a6a7a8a9aaabacadaeaf # identity`

func TestGoldenControl(t *testing.T) {
	tests := []struct {
		name   string
		typ    MsgType
		append func([]byte) []byte
		decode func([]byte) (any, error)
		want   any
		hex    string // whole frame: header, then body
	}{
		{
			name: "Hello",
			typ:  MsgHello,
			want: Hello{Version: 2, Attachment: goldenAttachment, Epoch: 1, Client: "host"},
			append: func(b []byte) []byte {
				return AppendHello(b, &Hello{Version: 2, Attachment: goldenAttachment, Epoch: 1, Client: "host"})
			},
			decode: func(b []byte) (any, error) { return DecodeHello(b) },
			// body: 2+2+16+8+1+4 = 33 bytes.
			hex: `0001 | 0000 | 00000021
				0002 | 0000                      # version 2, flags
				101112131415161718191a1b1c1d1e1f # attachment
				0000000000000001                 # epoch 1: the first session
				04 686f7374                      # client "host"`,
		},
		{
			name: "Hello accepting events",
			typ:  MsgHello,
			want: Hello{Version: 3, Flags: HelloEvents, Attachment: goldenAttachment, Epoch: 1, Client: "host"},
			append: func(b []byte) []byte {
				return AppendHello(b, &Hello{Version: 3, Flags: HelloEvents, Attachment: goldenAttachment, Epoch: 1, Client: "host"})
			},
			decode: func(b []byte) (any, error) { return DecodeHello(b) },
			hex: `0001 | 0000 | 00000021
				0003 | 0001                      # version 3, flags: events
				101112131415161718191a1b1c1d1e1f # attachment
				0000000000000001                 # epoch 1
				04 686f7374                      # client "host"`,
		},
		{
			name: "Event resized",
			typ:  MsgEvent,
			want: Event{Kind: EventResized, Size: 2 << 30, Export: "disk0"},
			append: func(b []byte) []byte {
				return AppendEvent(b, &Event{Kind: EventResized, Size: 2 << 30, Export: "disk0"})
			},
			decode: func(b []byte) (any, error) { return DecodeEvent(b) },
			hex: `000a | 0000 | 00000013
				0001 | 0000       # kind RESIZED, reserved
				0000000080000000  # size 2 GiB
				05 6469736b30     # export "disk0"
				00                # no message`,
		},
		{
			name:   "Event shutdown",
			typ:    MsgEvent,
			want:   Event{Kind: EventShutdown, Message: "stop"},
			append: func(b []byte) []byte { return AppendEvent(b, &Event{Kind: EventShutdown, Message: "stop"}) },
			decode: func(b []byte) (any, error) { return DecodeEvent(b) },
			hex: `000a | 0000 | 00000012
				0002 | 0000 | 0000000000000000 | 00
				04 73746f70       # message "stop"`,
		},
		{
			name:   "Hello opting out of fencing",
			typ:    MsgHello,
			want:   Hello{Version: 2, Epoch: 0xfffffffffffffffe},
			append: func(b []byte) []byte { return AppendHello(b, &Hello{Version: 2, Epoch: 0xfffffffffffffffe}) },
			decode: func(b []byte) (any, error) { return DecodeHello(b) },
			hex: `0001 | 0000 | 0000001d
				0002 | 0000 | 00000000000000000000000000000000 | fffffffffffffffe | 00`,
		},
		{
			name: "ServerInfo",
			typ:  MsgServerInfo,
			want: ServerInfo{
				Version:  3,
				Instance: Identity{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
				Clock:    3600_000_000_000,
				Session:  Identity{0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff},
				Server:   "srv",
				Exports:  []ExportInfo{goldenExport},
			},
			append: func(b []byte) []byte {
				return AppendServerInfo(b, &ServerInfo{
					Version:  3,
					Instance: Identity{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
					Clock:    3600_000_000_000,
					Session:  Identity{0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff},
					Server:   "srv",
					Exports:  []ExportInfo{goldenExport},
				})
			},
			decode: func(b []byte) (any, error) { return DecodeServerInfo(b) },
			// body: 2+2+16+8+16+1+3+2 = 50 bytes, then one 45-byte export: 95 = 0x5f.
			hex: `0002 | 0000 | 0000005f
				0003 | 0000                      # version 3, flags
				000102030405060708090a0b0c0d0e0f # instance
				0000034630b8a000                 # clock: up for an hour (3.6e12 ns)
				f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff # session
				03 737276                        # server "srv"
				0001                             # one export` + goldenExportHex,
		},
		{
			name: "ServerInfo without exports",
			typ:  MsgServerInfo,
			want: ServerInfo{Version: 3, Clock: 0xffffffffffffffff},
			append: func(b []byte) []byte {
				return AppendServerInfo(b, &ServerInfo{Version: 3, Clock: 0xffffffffffffffff, Exports: []ExportInfo{}})
			},
			decode: func(b []byte) (any, error) { return DecodeServerInfo(b) },
			hex: `0002 | 0000 | 0000002f
				0003 | 0000 | 00000000000000000000000000000000 | ffffffffffffffff
				00000000000000000000000000000000 | 00 | 0000`,
		},
		{
			name:   "Ping",
			typ:    MsgPing,
			want:   Ping{Seq: 0x0102030405060708},
			append: func(b []byte) []byte { return AppendPing(b, &Ping{Seq: 0x0102030405060708}) },
			decode: func(b []byte) (any, error) { return DecodePing(b) },
			hex:    `0006 | 0000 | 00000008 | 0102030405060708`,
		},
		{
			name:   "Pong",
			typ:    MsgPong,
			want:   Pong{Seq: 0x0102030405060708, Clock: 10_000_000_000},
			append: func(b []byte) []byte { return AppendPong(b, &Pong{Seq: 0x0102030405060708, Clock: 10_000_000_000}) },
			decode: func(b []byte) (any, error) { return DecodePong(b) },
			hex: `0007 | 0000 | 00000010
				0102030405060708 # seq, the Ping's
				00000002540be400 # clock 10 s`,
		},
		{
			name:   "Control",
			typ:    MsgControl,
			want:   Control{Version: 3},
			append: func(b []byte) []byte { return AppendControl(b, &Control{Version: 3}) },
			decode: func(b []byte) (any, error) { return DecodeControl(b) },
			hex:    `0008 | 0000 | 00000004 | 0003 | 0000`,
		},
		{
			name: "Queue",
			typ:  MsgQueue,
			want: Queue{Version: 3, Attachment: Identity{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
				Epoch: 2, Session: Identity{0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff},
				Export: "disk"},
			append: func(b []byte) []byte {
				return AppendQueue(b, &Queue{Version: 3, Attachment: Identity{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
					Epoch: 2, Session: Identity{0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff},
					Export: "disk"})
			},
			decode: func(b []byte) (any, error) { return DecodeQueue(b) },
			// body: 2+2+16+8+16+1+4 = 49 bytes = 0x31.
			hex: `0009 | 0000 | 00000031
				0003 | 0000                      # version 3, flags
				0102030405060708090a0b0c0d0e0f10 # attachment
				0000000000000002                 # epoch 2
				f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff # session
				04 6469736b                      # export "disk"`,
		},
		{
			name:   "Opened",
			typ:    MsgOpened,
			want:   Opened{Export: goldenExport},
			append: func(b []byte) []byte { return AppendOpened(b, &Opened{Export: goldenExport}) },
			decode: func(b []byte) (any, error) { return DecodeOpened(b) },
			hex:    `0004 | 0000 | 0000002d` + goldenExportHex,
		},
		{
			name: "Error",
			typ:  MsgError,
			want: ErrorMsg{Status: StatusEINVAL, Message: "no such export"},
			append: func(b []byte) []byte {
				return AppendError(b, &ErrorMsg{Status: StatusEINVAL, Message: "no such export"})
			},
			decode: func(b []byte) (any, error) { return DecodeError(b) },
			hex: `0005 | 0000 | 00000011
				0016 | 0e 6e6f2073756368206578706f7274`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := unhex(t, tt.hex)
			body := tt.append(nil)
			got := AppendMessage(nil, tt.typ, body)
			if !bytes.Equal(got, want) {
				t.Errorf("encoding\n got %x\nwant %x", got, want)
			}
			// Appending must not disturb what is already in the buffer.
			prefix := []byte("prefix")
			if got := tt.append(append([]byte(nil), prefix...)); !bytes.Equal(got, append(prefix, body...)) {
				t.Errorf("append to a non-empty buffer gave %x", got)
			}

			typ, rbody, err := ReadMessage(bytes.NewReader(want))
			if err != nil {
				t.Fatalf("ReadMessage(golden): %v", err)
			}
			if typ != tt.typ || !bytes.Equal(rbody, want[MsgHeaderSize:]) {
				t.Fatalf("ReadMessage(golden) = %v %x, want %v %x", typ, rbody, tt.typ, want[MsgHeaderSize:])
			}
			dec, err := tt.decode(rbody)
			if err != nil {
				t.Fatalf("decode(golden): %v", err)
			}
			if !reflect.DeepEqual(dec, tt.want) {
				t.Errorf("decode(golden) = %+v, want %+v", dec, tt.want)
			}
		})
	}
}
