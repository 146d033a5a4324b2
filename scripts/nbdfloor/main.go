// Command nbdfloor is dst's shape with nothing in it, for the real NBD
// clients the bench runs: fio or nbdcopy talk NBD to a middle process that
// only passes their bytes on, over loopback TCP, to an end process that
// answers every request at once and stores nothing. No encryption, no
// checksums, no transactions, no storage. Whatever rate a workload reaches
// through it is the most that process shape allows that client on this
// machine; dst attach and dst serve stand where the two processes stand and
// only add work.
//
// It is the NBD-level counterpart of hopfloor.c's chain, whose ends are C
// loops passing a token: here the client is the benchmark's own, with its
// own costs per request, and the end speaks NBD.
//
// usage:
//
//	nbdfloor relay PATH ADDR   listen on the unix socket PATH; for each
//	                           client, dial ADDR and pass bytes both ways
//	                           unchanged, a goroutine per direction on the
//	                           runtime's poller through internal/rawio, as
//	                           attach waits (run it with GOMAXPROCS=1,
//	                           attach's default)
//	nbdfloor end ADDR SIZE     serve one export (the default, named "") of
//	                           SIZE bytes on TCP ADDR through dst's own NBD
//	                           front end (client/nbd); its device completes
//	                           each request on the front end's reader as it
//	                           arrives, and the replies of requests that
//	                           arrived together leave together, as serve's
//	                           do. Writes are dropped; a read gets whatever
//	                           its pooled buffer holds.
//
//	nbdfloor -work KEYFILE [-without PARTS] relay PATH ADDR
//	nbdfloor -work KEYFILE [-without PARTS] end ADDR FILE
//	                           the same pair doing the work dst must do
//	                           and nothing else of dst's: the link between
//	                           them is dst's encrypted channel (KEYFILE's
//	                           key on both ends), the relay checksums every
//	                           byte it passes, and the end serves FILE
//	                           through dst's file backend and checksums
//	                           every payload (work.go). -without leaves
//	                           out the parts named, comma-separated, of
//	                           channel, checksum and file, to measure what
//	                           each costs; give both the same
//
//	nbdfloor -work KEYFILE [-without PARTS] -retain MIB relay PATH ADDR
//	                           the work relay reading what the client
//	                           sends into a ring of MIB MiB of buffers
//	                           instead of one, so that every chunk lands in
//	                           memory last touched MIB MiB ago, as a WRITE's
//	                           payload does in attach, which keeps it until
//	                           the server answers and then in its replay
//	                           log until a FLUSH
//
// Both run until SIGTERM or SIGINT, and then exit 0 (the bench's way of
// stopping a process requires that). scripts/bench --floor runs the pairs
// as its "nbdfloor" and "workfloor" targets.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/rawio"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("nbdfloor: ")
	args := os.Args[1:]
	var w *work
	if len(args) > 0 && args[0] == "-work" {
		if len(args) < 2 {
			log.Fatal(usage)
		}
		k, err := crypto.LoadPrivateKey(args[1], crypto.KeyModePolicy{})
		if err != nil {
			log.Fatal(err)
		}
		w, args = fullWork(k), args[2:]
		if len(args) > 1 && args[0] == "-without" {
			if err := w.leaveOut(args[1]); err != nil {
				log.Fatal(err)
			}
			args = args[2:]
		}
		if len(args) > 1 && args[0] == "-retain" {
			if err := w.setRetain(args[1]); err != nil {
				log.Fatal(err)
			}
			args = args[2:]
		}
	}
	if len(args) != 3 {
		log.Fatal(usage)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-stop
		os.Exit(0)
	}()
	var err error
	switch {
	case args[0] == "relay" && w != nil:
		err = workRelay(args[1], args[2], w)
	case args[0] == "relay":
		err = relay(args[1], args[2])
	case args[0] == "end" && w != nil:
		err = workEnd(args[1], args[2], w)
	case args[0] == "end":
		size, perr := strconv.ParseUint(args[2], 10, 64)
		if perr != nil || size == 0 {
			log.Fatalf("SIZE must be a positive number of bytes, not %q", args[2])
		}
		err = end(args[1], size)
	default:
		log.Fatalf("unknown role %q: relay or end", args[0])
	}
	log.Fatal(err)
}

const usage = "usage: nbdfloor [-work KEYFILE [-without PARTS] [-retain MIB]] relay PATH ADDR | nbdfloor end ADDR SIZE | nbdfloor -work KEYFILE [-without PARTS] end ADDR FILE"

// relay passes each client of the unix socket at path on to addr.
func relay(path, addr string) error {
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	return relayFrom(l, addr)
}

// relayFrom passes each client l accepts on to addr.
func relayFrom(l net.Listener, addr string) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			s, err := net.Dial("tcp", addr)
			if err != nil {
				log.Print(err)
				c.Close()
				return
			}
			// attach asks the same of its NBD sockets (client/nbd SendBuffer).
			_ = rawio.GrowSendBuffer(c, nbd.SendBuffer)
			up, down := rawio.Wrap(c), rawio.Wrap(s)
			go pump(up, down)
			pump(down, up)
		}()
	}
}

// pump copies r to w until either ends, then closes both, which ends the
// other direction's pump too.
func pump(r, w net.Conn) {
	io.CopyBuffer(w, r, make([]byte, 256<<10))
	r.Close()
	w.Close()
}

// end serves an export of size bytes on addr whose device answers at once.
func end(addr string, size uint64) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return serveEnd(l, size)
}

// serveEnd serves the export on the clients l accepts.
func serveEnd(l net.Listener, size uint64) error {
	s := &nbd.Server{Exports: []*nbd.Export{{
		Name: "", Description: "nbdfloor: answers at once, stores nothing", Size: size,
		Flush: true, FUA: true, MultiConn: true, Device: device{},
	}}}
	if err := s.Serve(context.Background(), l); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// device completes every request as the front end hands it over.
type device struct{}

func (device) Submit(r *nbd.Request) { r.Complete(nil) }

// SubmitBatch completes the requests a client sent together, and writes
// their replies in one system call.
func (device) SubmitBatch(rs []*nbd.Request) {
	var conn interface{ Flush() }
	for _, r := range rs {
		if c := r.CompleteDeferred(nil); c != nil {
			conn = c
		}
	}
	if conn != nil {
		conn.Flush()
	}
}
