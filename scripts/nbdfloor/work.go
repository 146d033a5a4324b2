package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"strings"
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
//
// -without leaves parts of the work out (both processes must be given the
// same), to say what each part costs the pair: "channel" links them by
// plain TCP, "checksum" skips the xxhash64 sums, "file" answers every
// request at once as nbdfloor's end does, dropping writes.

// work is the work the pair does: each part is done when true.
type work struct {
	key      crypto.PrivateKey
	channel  bool // the link is dst's encrypted channel
	checksum bool // every payload is checksummed on both sides
	file     bool // the end reads and writes its file
	// retain is how many bytes of what the client sends the relay reads
	// into a ring, one buffer after another, as attach keeps payloads;
	// 0 is one buffer, reused.
	retain int
}

// setRetain sets retain from a number of MiB.
func (w *work) setRetain(mib string) error {
	n, err := strconv.Atoi(mib)
	if err != nil || n < 1 || n > 4096 {
		return fmt.Errorf("-retain: want a number of MiB from 1 to 4096, not %q", mib)
	}
	w.retain = n << 20
	return nil
}

// fullWork is all the work, with key on both ends of the channel.
func fullWork(key crypto.PrivateKey) *work {
	return &work{key: key, channel: true, checksum: true, file: true}
}

// leaveOut turns off the parts named in list ("channel", "checksum",
// "file", separated by commas).
func (w *work) leaveOut(list string) error {
	for part := range strings.SplitSeq(list, ",") {
		switch part {
		case "channel":
			w.channel = false
		case "checksum":
			w.checksum = false
		case "file":
			w.file = false
		default:
			return fmt.Errorf("-without: unknown part %q (want channel, checksum or file)", part)
		}
	}
	return nil
}

// workRelay passes each client of the unix socket at path on to addr,
// doing w's share of the work.
func workRelay(path, addr string, w *work) error {
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	return workRelayFrom(l, addr, w)
}

// workRelayFrom passes each client l accepts on to addr, over an encrypted
// channel that pins w.key's public half as the end's unless w leaves the
// channel out, and checksums what it passes unless w leaves that out.
func workRelayFrom(l net.Listener, addr string, w *work) error {
	var sum atomic.Uint64
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			up, err := dialWork(addr, w)
			if err != nil {
				log.Print(err)
				c.Close()
				return
			}
			_ = rawio.GrowSendBuffer(c, nbd.SendBuffer)
			down := rawio.Wrap(c)
			go checksumPump(up, down, w.checksum, 0, &sum)
			checksumPump(down, up, w.checksum, w.retain, &sum)
		}()
	}
}

// dialWork dials addr and runs the handshake as attach does, unless w
// leaves the channel out.
func dialWork(addr string, w *work) (net.Conn, error) {
	s, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if !w.channel {
		return rawio.Wrap(s), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return crypto.Client(ctx, rawio.Wrap(s), &crypto.ClientConfig{PrivateKey: w.key, ServerKey: w.key.Public()})
}

// checksumPump copies r to w, checksumming every chunk on the way if
// checksum is set, until either ends; then it closes both, which ends the
// other direction too. With retain > 0 it reads each chunk into the next
// of a ring of buffers holding about retain bytes. The sums go to sum, so
// that no compiler can drop them.
func checksumPump(r, w net.Conn, checksum bool, retain int, sum *atomic.Uint64) {
	const size = 256 << 10
	ring := make([][]byte, max(1, retain/size))
	for i := range ring {
		ring[i] = make([]byte, size)
	}
	var acc uint64
	for next := 0; ; next = (next + 1) % len(ring) {
		buf := ring[next]
		n, err := r.Read(buf)
		if n > 0 {
			if checksum {
				acc ^= xxhash.Sum64(buf[:n])
			}
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

// workEnd serves FILE on addr, doing w's share of the work.
func workEnd(addr, file string, w *work) error {
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
	return serveWorkEnd(l, f, uint64(size), w)
}

// serveWorkEnd runs the handshake on each client l accepts and serves the
// file's export over the channel, or leaves out what w leaves out.
func serveWorkEnd(l net.Listener, f *server.File, size uint64, w *work) error {
	s := &nbd.Server{Exports: []*nbd.Export{{
		Name: "", Description: "nbdfloor -work: the file, over dst's channel, checksummed", Size: size,
		Flush: true, FUA: true, MultiConn: true, Device: &workDevice{f: f, checksum: w.checksum, file: w.file},
	}}}
	cfg := &crypto.ServerConfig{
		PrivateKey: w.key,
		Authorize: func(k crypto.PublicKey) error {
			if !k.Equal(w.key.Public()) {
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
			if !w.channel {
				s.ServeConn(context.Background(), rawio.Wrap(c))
				return
			}
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
	f        *server.File
	checksum bool          // checksum every payload
	file     bool          // do the I/O; else answer at once and drop writes
	sum      atomic.Uint64 // the checksums, so that no compiler can drop them
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

// run does r's work: the checksum serve computes (of a WRITE's data before
// it is written, of a READ's after it is read), and the I/O.
func (d *workDevice) run(r *nbd.Request) error {
	if r.Cmd == nbdwire.CmdWrite {
		d.checksumOf(r.Data)
	}
	err := d.io(r)
	if r.Cmd == nbdwire.CmdRead && err == nil {
		d.checksumOf(r.Data)
	}
	return err
}

func (d *workDevice) checksumOf(b []byte) {
	if d.checksum {
		d.sum.Add(xxhash.Sum64(b))
	}
}

// io runs r on the file, or does nothing if d leaves the file out.
func (d *workDevice) io(r *nbd.Request) error {
	if !d.file {
		return nil
	}
	off := int64(r.Offset)
	switch r.Cmd {
	case nbdwire.CmdRead:
		if _, err := d.f.ReadAt(r.Data, off); err != nil && err != io.EOF {
			return err
		}
	case nbdwire.CmdWrite:
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
