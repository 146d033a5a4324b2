package client

import (
	"fmt"
	"github.com/dstproject/dst/wire"
	"sync"
	"testing"
)

// BenchmarkRead4K measures 4 KiB reads through an attachment and an
// in-process server over TCP loopback, at queue depths 1 and 32.
func BenchmarkRead4K(b *testing.B) {
	for _, qd := range []int{1, 32} {
		b.Run(fmt.Sprintf("QD%d", qd), func(b *testing.B) {
			env := newEnvTB(b, "tcp", 64<<20)
			a := env.attachTB(b, "disk", 2)
			defer a.Close()
			b.SetBytes(4096)
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			per := b.N / qd
			for w := 0; w < qd; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					buf := make([]byte, 4096)
					done := make(chan error, 1)
					cb := CompleteFunc(func(err error) { done <- err })
					for i := 0; i < per; i++ {
						off := uint64((w*per+i)%16384) * 4096
						a.Submit(Request{Cmd: wire.CmdRead, Offset: off, Length: 4096, Data: buf, Done: cb})
						if err := <-done; err != nil {
							b.Error(err)
							return
						}
					}
				}(w)
			}
			wg.Wait()
		})
	}
}
