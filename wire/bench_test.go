package wire

import "testing"

// The data path encodes and decodes one header per I/O; none of it may
// allocate (TestZeroAllocs enforces what these report).

func BenchmarkEncodeRequest(b *testing.B) {
	r := Request{Cmd: CmdWrite, Flags: FlagFUA, Length: 4096, ID: 1, Offset: 1 << 20, Checksum: checksumABC}
	var buf [RequestSize]byte
	b.ReportAllocs()
	b.SetBytes(RequestSize)
	for b.Loop() {
		r.ID++
		r.Encode(buf[:])
	}
}

func BenchmarkDecodeRequest(b *testing.B) {
	buf := encodeRequest(Request{Cmd: CmdWrite, Flags: FlagFUA, Length: 4096, ID: 1, Offset: 1 << 20, Checksum: checksumABC})
	b.ReportAllocs()
	b.SetBytes(RequestSize)
	for b.Loop() {
		if _, err := DecodeRequest(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeReply(b *testing.B) {
	buf := encodeReply(Reply{Cmd: CmdRead, Length: 4096, ID: 1, Checksum: checksumABC})
	b.ReportAllocs()
	b.SetBytes(ReplySize)
	for b.Loop() {
		if _, err := DecodeReply(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkChecksum4K(b *testing.B) {
	buf := make([]byte, 4096)
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		Checksum(buf)
	}
}
