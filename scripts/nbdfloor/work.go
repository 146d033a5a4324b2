package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/internal/rawio"
	"github.com/dstproject/dst/server"
)

// The work pair (-work KEYFILE) is the same two processes doing the work
// dst must do to every byte and request, with none of dst's own machinery
// (its protocol, transaction table, deadlines, replay log, admission):
//
//   - the TCP link between them is dst's encrypted channel: a Noise IK
//     handshake (crypto.Client and crypto.Server, KEYFILE's key on both
//     ends), then every byte sealed and opened in crypto.Conn's records;
//   - the relay checksums (xxhash64) every byte it passes on, as attach
//     checksums every payload it sends or receives;
//   - the end reads and writes FILE through dst's own file backend
//     (server.File: preadv2 with RWF_NOWAIT first, as serve), checksums
//     every payload, and makes FLUSH and FUA durable.
//
// dst's figures against this pair's are what dst's machinery costs; this
// pair's against a peer's say whether the shape, with the work the design
// requires, can reach a target at all.

// workRelay passes each client of the unix socket at path on to addr over
// an encrypted channel.
func workRelay(path, addr string, key crypto.PrivateKey) error {
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	return workRelayFrom(l, addr, key)
}

// workRelayFrom passes each client l accepts on to addr over an encrypted
// channel that pins key's public half as the end's.
func workRelayFrom(l net.Listener, addr string, key crypto.PrivateKey) error {
	var sum atomic.Uint64
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			up, err := dialWork(addr, key)
			if err != nil {
				log.Print(err)
				c.Close()
				return
			}
			_ = rawio.GrowSendBuffer(c, nbd.SendBuffer)
			down := rawio.Wrap(c)
			go checksumPump(up, down, &sum)
			checksumPump(down, up, &sum)
		}()
	}
}

// dialWork dials addr and runs the handshake as attach does.
func dialWork(addr string, key crypto.PrivateKey) (*crypto.Conn, error) {
	s, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return crypto.Client(ctx, rawio.Wrap(s), &crypto.ClientConfig{PrivateKey: key, ServerKey: key.Public()})
}

// checksumPump copies r to w, checksumming every chunk on the way, until
// either ends; then it closes both, which ends the other direction too.
// The sums go to sum, so that no compiler can drop them.
func checksumPump(r, w net.Conn, sum *atomic.Uint64) {
	buf := make([]byte, 256<<10)
	var acc uint64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			acc ^= xxhash.Sum64(buf[:n])
			if _, werr := w.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	sum.Add(acc)
	r.Close()
	w.Close()
}

// workEnd serves FILE on addr over the encrypted channel.
func workEnd(addr, file string, key crypto.PrivateKey) error {
	f, err := server.OpenFile(file, false, nil)
	if err != nil {
		return err
	}
	size, err := f.Size()
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return serveWorkEnd(l, f, uint64(size), key)
}

// serveWorkEnd runs the handshake on each client l accepts and serves the
// file's export over the channel.
func serveWorkEnd(l net.Listener, f *server.File, size uint64, key crypto.PrivateKey) error {
	s := &nbd.Server{Exports: []*nbd.Export{{
		Name: "", Description: "nbdfloor -work: the file, over dst's channel, checksummed", Size: size,
		Flush: true, FUA: true, MultiConn: true, Device: &workDevice{f: f},
	}}}
	cfg := &crypto.ServerConfig{
		PrivateKey: key,
		Authorize: func(k crypto.PublicKey) error {
			if !k.Equal(key.Public()) {
				return fmt.Errorf("nbdfloor: unknown client key %v", k)
			}
			return nil
		},
		Replay: crypto.NewReplayFilter(),
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			cc, err := crypto.Server(ctx, rawio.Wrap(c), cfg)
			cancel()
			if err != nil {
				log.Print(err)
				return
			}
			s.ServeConn(context.Background(), cc)
		}()
	}
}

// workDevice runs each request on the file as the front end hands it
// over, on the front end's reader, as serve runs what the page cache
// serves; replies of requests that arrived together leave together.
type workDevice struct {
	f   *server.File
	sum atomic.Uint64 // the checksums, so that no compiler can drop them
}

func (d *workDevice) Submit(r *nbd.Request) { r.Complete(d.run(r)) }

func (d *workDevice) SubmitBatch(rs []*nbd.Request) {
	var conn interface{ Flush() }
	for _, r := range rs {
		if c := r.CompleteDeferred(d.run(r)); c != nil {
			conn = c
		}
	}
	if conn != nil {
		conn.Flush()
	}
}

// run does r's work: the I/O, and the checksum serve computes (of a READ's
// data before it is sent, of a WRITE's before it is written).
func (d *workDevice) run(r *nbd.Request) error {
	off := int64(r.Offset)
	switch r.Cmd {
	case nbdwire.CmdRead:
		if _, err := d.f.ReadAt(r.Data, off); err != nil && err != io.EOF {
			return err
		}
		d.sum.Add(xxhash.Sum64(r.Data))
	case nbdwire.CmdWrite:
		d.sum.Add(xxhash.Sum64(r.Data))
		if r.Flags&nbdwire.FlagFUA != 0 {
			return d.f.WriteAtFUA(r.Data, off)
		}
		_, err := d.f.WriteAt(r.Data, off)
		return err
	case nbdwire.CmdFlush:
		return d.f.Sync()
	}
	return nil
}
