package crypto

import (
	"io"
	"strconv"
	"testing"
)

// BenchmarkThroughput measures Write on one end and Read on the other, both
// running at once, as yamux uses the channel.
func BenchmarkThroughput(b *testing.B) {
	for _, ct := range connTypes {
		for _, c := range ciphers {
			for _, size := range []int{4 << 10, 64 << 10} {
				b.Run(ct.name+"/"+c.String()+"/"+strconv.Itoa(size>>10)+"KiB", func(b *testing.B) {
					cl, sv := mustPair(b, ct.pair, newTestPeers(c))
					msg := make([]byte, size)
					b.SetBytes(int64(size))
					b.ReportAllocs()
					b.ResetTimer()
					done := make(chan error, 1)
					go func() {
						buf := make([]byte, 64<<10)
						var err error
						for left := b.N * size; left > 0 && err == nil; {
							var n int
							n, err = sv.Read(buf[:min(len(buf), left)])
							left -= n
						}
						done <- err
					}()
					for range b.N {
						if _, err := cl.Write(msg); err != nil {
							b.Fatal(err)
						}
					}
					if err := <-done; err != nil {
						b.Fatal(err)
					}
				})
			}
		}
	}
}

// BenchmarkRecord measures seal+open alone, without a socket.
func BenchmarkRecord(b *testing.B) {
	for _, c := range ciphers {
		for _, size := range []int{4 << 10, 64 << 10} {
			b.Run(c.String()+"/"+strconv.Itoa(size>>10)+"KiB", func(b *testing.B) {
				w, r, _ := memPair(b, c, 0)
				msg := make([]byte, size)
				buf := make([]byte, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for range b.N {
					if _, err := w.Write(msg); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(r, buf); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkHandshake(b *testing.B) {
	p := newTestPeers(CipherChaChaPoly)
	b.ReportAllocs()
	for range b.N {
		cc, sc := connTypes[0].pair(b)
		cl, sv := handshake(b.Context(), cc, sc, p.ccfg, p.scfg)
		if cl.err != nil || sv.err != nil {
			b.Fatal(cl.err, sv.err)
		}
		cl.conn.Close()
		sv.conn.Close()
	}
}
