// Package nbdfake is an NBD server for tests of what a client does with
// replies that break the protocol: it does a correct fixed-newstyle
// handshake (structured replies agreed, NBD_OPT_GO for a 1 MiB export with
// block sizes 512/4096/1 MiB), then hands every request to the test, which
// writes whatever it likes back.
package nbdfake

import (
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/dstproject/dst/internal/nbdwire"
)

// Size is the export's size.
const Size = 1 << 20

// Answer gets each request's header (a WRITE's payload already read) and
// writes the reply, or anything else, on c.
type Answer func(c net.Conn, r nbdwire.Request)

// Listen serves on a unix socket in t's temporary directory until the test
// ends, every connection with answer, and returns the socket's path.
func Listen(t testing.TB, answer Answer) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go Serve(c, answer)
		}
	}()
	return sock
}

// Serve runs the handshake on c, then answers requests until c ends.
func Serve(c net.Conn, answer Answer) {
	defer c.Close()
	if !handshake(c) {
		return
	}
	var rb [nbdwire.RequestSize]byte
	for {
		if _, err := io.ReadFull(c, rb[:]); err != nil {
			return
		}
		r, err := nbdwire.DecodeRequest(rb[:])
		if err != nil {
			return
		}
		if r.Cmd == nbdwire.CmdWrite {
			if _, err := io.CopyN(io.Discard, c, int64(r.Length)); err != nil {
				return
			}
		}
		answer(c, r)
	}
}

func handshake(c net.Conn) bool {
	c.Write(nbdwire.ServerHello{Flags: nbdwire.HandshakeFixedNewstyle | nbdwire.HandshakeNoZeroes}.Append(nil))
	var b [nbdwire.OptHeaderSize]byte
	if _, err := io.ReadFull(c, b[:nbdwire.ClientFlagsSize]); err != nil {
		return false
	}
	for {
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return false
		}
		h, err := nbdwire.DecodeOptHeader(b[:])
		if err != nil {
			return false
		}
		if _, err := io.CopyN(io.Discard, c, int64(h.Length)); err != nil {
			return false
		}
		reply := func(typ nbdwire.ReplyType, data []byte) {
			c.Write(nbdwire.OptReplyHeader{Option: h.Option, Type: typ, Length: uint32(len(data))}.Append(nil))
			c.Write(data)
		}
		switch h.Option {
		case nbdwire.OptStructuredReply:
			reply(nbdwire.RepAck, nil)
		case nbdwire.OptGo:
			reply(nbdwire.RepInfo, nbdwire.ExportInfo{Size: Size, Flags: nbdwire.TransHasFlags | nbdwire.TransSendFlush}.Append(nil))
			reply(nbdwire.RepInfo, nbdwire.BlockSizeInfo{Min: 512, Preferred: 4096, Max: 1 << 20}.Append(nil))
			reply(nbdwire.RepAck, nil)
			return true
		default:
			reply(nbdwire.RepErrUnsup, nil)
		}
	}
}
