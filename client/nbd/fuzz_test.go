package nbd_test

import (
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/internal/nbdwire"
)

func reqBytes(cmd nbdwire.Command, flags nbdwire.CmdFlags, cookie, off uint64, length uint32, payload []byte) []byte {
	b := nbdwire.Request{Flags: flags, Cmd: cmd, Cookie: cookie, Offset: off, Length: length}.Append(nil)
	return append(b, payload...)
}

// FuzzServeConn feeds arbitrary client streams to a server: it must neither
// panic nor hang, whatever the bytes.
func FuzzServeConn(f *testing.F) {
	flags := (nbdwire.ClientFixedNewstyle | nbdwire.ClientNoZeroes).Append(nil)
	goMem := optBytes(nbdwire.OptGo, infoPayload("", nbdwire.InfoBlockSize))
	valid := append(append([]byte{}, flags...), goMem...)
	valid = append(valid, reqBytes(nbdwire.CmdWrite, nbdwire.FlagFUA, 1, 0, 512, make([]byte, 512))...)
	valid = append(valid, reqBytes(nbdwire.CmdRead, 0, 2, 0, 4096, nil)...)
	valid = append(valid, reqBytes(nbdwire.CmdFlush, 0, 3, 0, 0, nil)...)
	valid = append(valid, reqBytes(nbdwire.CmdWriteZeroes, nbdwire.FlagNoHole, 4, 512, 512, nil)...)
	valid = append(valid, reqBytes(nbdwire.CmdDisc, 0, 5, 0, 0, nil)...)
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add(append(append([]byte{}, flags...), optBytes(nbdwire.OptList, nil)...))
	f.Add(append(append([]byte{}, flags...), optBytes(nbdwire.OptInfo, make([]byte, 70000))...))
	f.Add(append(append([]byte{}, flags...), optBytes(nbdwire.OptExportName, []byte("mem"))...))
	f.Add(append(append(append([]byte{}, flags...), goMem...), reqBytes(nbdwire.CmdWrite, 0, 1, 1<<64-1, 1<<31, nil)...))
	f.Add(append(append(append([]byte{}, flags...), goMem...), reqBytes(nbdwire.CmdRead, 0, 1, 1<<20, 1<<20, nil)...))

	f.Fuzz(func(t *testing.T, in []byte) {
		e, _ := memExport(64 << 10)
		e.MaxBlockSize = 64 << 10
		s := &nbd.Server{Exports: []*nbd.Export{e}, Logger: quietLog}
		cc, sc := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- s.ServeConn(t.Context(), sc) }()
		var wg sync.WaitGroup
		wg.Go(func() { io.Copy(io.Discard, cc) })
		wg.Go(func() {
			cc.Write(in) // returns early if the server hangs up
			cc.Close()
		})
		clientDone := make(chan struct{})
		go func() {
			<-done
			wg.Wait()
			close(clientDone)
		}()
		select {
		case <-clientDone:
		case <-time.After(10 * time.Second):
			buf := make([]byte, 1<<20)
			t.Fatalf("ServeConn hung on %x\n%s", in, buf[:runtime.Stack(buf, true)])
		}
	})
}
