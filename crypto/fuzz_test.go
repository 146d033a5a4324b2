package crypto

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzServerHandshake feeds arbitrary client bytes to Server. It must never
// panic or hang, whatever arrives.
func FuzzServerHandshake(f *testing.F) {
	p := newTestPeers(CipherChaChaPoly)
	p.ccfg.Random = newDetRand("fuzz")
	p.ccfg.now = func() uint64 { return goldenTime }
	valid := fuzzMsg1(f, p.ccfg)
	f.Add(valid)                                               // valid handshake
	f.Add(valid[:preambleLen])                                 // preamble only
	f.Add(valid[:preambleLen+frameHeaderLen+40])               // truncated message
	f.Add(valid[:len(valid)-1])                                // one byte short
	f.Add(append(valid[:preambleLen:preambleLen], 0xff, 0xff)) // oversized frame length
	f.Add(append(valid[:preambleLen:preambleLen], 0, 0))       // zero frame length
	f.Add([]byte("DSTN\x01\x02\x00\x00"))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := *p.scfg
		cfg.Replay = NewReplayFilter() // so the valid seed can succeed each time
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := Server(ctx, &fuzzConn{memConn: memConn{eof: true}, in: bytes.NewReader(data)}, &cfg)
		if err == nil {
			c.Close()
		}
		if bytes.Equal(data, valid) && err != nil {
			t.Errorf("valid seed refused: %v", err)
		}
	})
}

// fuzzConn reads the fuzz input, then EOF, like a client that sent data and
// half-closed; it accepts and discards whatever the server writes.
type fuzzConn struct {
	memConn
	in *bytes.Reader
}

func (f *fuzzConn) Read(p []byte) (int, error) { return f.in.Read(p) }

func fuzzMsg1(f *testing.F, cfg *ClientConfig) []byte {
	cc, sc := net.Pipe()
	go func() {
		Client(context.Background(), cc, cfg)
	}()
	buf := make([]byte, preambleLen+frameHeaderLen+msg1Len)
	if _, err := io.ReadFull(sc, buf); err != nil {
		f.Fatal(err)
	}
	sc.Close()
	return buf
}
