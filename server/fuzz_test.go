package server_test

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/server/servertest"
	"github.com/dstproject/dst/wire"
)

// FuzzQueueConn feeds a queue connection arbitrary bytes after its
// binding, as a hostile or broken client would: the server must answer or
// close, never panic or hang, and go on serving its other connections.
func FuzzQueueConn(f *testing.F) {
	req := func(r wire.Request, payload []byte) []byte {
		b := make([]byte, wire.RequestSize, wire.RequestSize+len(payload))
		r.Encode(b)
		return append(b, payload...)
	}
	data := make([]byte, 4096)
	f.Add(req(wire.Request{Cmd: wire.CmdRead, ID: 1, Length: 4096}, nil))
	f.Add(req(wire.Request{Cmd: wire.CmdWrite, ID: 2, Length: 4096, Checksum: wire.Checksum(data)}, data))
	f.Add(req(wire.Request{Cmd: wire.CmdWrite, ID: 3, Length: 4096, Checksum: 1}, data))
	f.Add(req(wire.Request{Cmd: wire.CmdWrite, ID: 4, Length: 4096}, data[:100]))
	f.Add(append(req(wire.Request{Cmd: wire.CmdFlush, ID: 5}, nil), req(wire.Request{Cmd: wire.CmdDisconnect, ID: 6}, nil)...))
	f.Add(req(wire.Request{Cmd: wire.CmdTrim, ID: 7, Offset: 1 << 40, Length: 4096}, nil))
	f.Add(req(wire.Request{Cmd: wire.CmdRead, ID: 8, Length: wire.MaxPayload}, nil))
	f.Add(req(wire.Request{Cmd: wire.CmdRead, ID: 9, Length: 4096}, nil)[:wire.RequestSize-1])
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	// The server logs what it refuses; a fuzzer's inputs are refused by
	// the million, and testing.F may not be logged to from a fuzz target.
	e := &env{t: f, mem: map[string]*servertest.MemBackend{"disk": servertest.NewMemBackend(1 << 20)}}
	e.start(&server.Config{Logger: slog.New(slog.DiscardHandler), Workers: 4,
		Exports: []server.ExportConfig{{Name: "disk", Path: "mem:disk", Backend: e.mem["disk"]}}})
	bind := e.cli.queueMsg("disk")
	f.Fuzz(func(t *testing.T, b []byte) {
		te := *e
		te.t = t
		conn, typ, _ := te.queue(e.key, bind)
		if typ != wire.MsgOpened {
			t.Fatalf("QUEUE answered with %v", typ)
		}
		wrote := make(chan struct{})
		go func() {
			conn.Write(b)
			conn.Write(req(wire.Request{Cmd: wire.CmdDisconnect, ID: 1 << 62}, nil))
			close(wrote)
		}()
		// The server answers and closes, or waits for bytes a length it
		// read promised; either way, once the client hangs up, the
		// connection must end.
		answered := make(chan struct{})
		go func() {
			io.Copy(io.Discard, conn)
			close(answered)
		}()
		select {
		case <-answered:
		case <-wrote:
			select {
			case <-answered:
			case <-time.After(50 * time.Millisecond):
			}
		case <-time.After(time.Second):
		}
		conn.Close()
		select {
		case <-e.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the server did not end the connection after %x and a hang-up", b)
		}
		<-answered
	})
}
