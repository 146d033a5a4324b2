// Command gofloor is a stage of hopfloor.c's chain written in Go: it
// passes the chain's token on as a process in the middle (fd 3 toward the
// first process, fd 4 toward the last) or turns it back as the last
// process (fd 3 only), and does nothing else. Run in the chain where dst
// attach and dst serve stand, it shows what Go's runtime costs a hop
// before any work is done, in two ways of waiting:
//
//	poller  the sockets in the runtime's poller, read and written with
//	        internal/rawio as dst's data path does; in the middle, one
//	        goroutine per direction, as attach has (the NBD reader sends,
//	        the queue connection's reader answers); at the end one, as
//	        serve's connection reader runs a lone request inline
//	block   blocking system calls on sockets the runtime does not poll,
//	        one goroutine taking the token down and back in turn: the
//	        least a Go process can do per hop, and no shape a block device
//	        could keep (nothing else could be read meanwhile)
//
// usage: gofloor poller|block middle|end PAYLOAD (GOMAXPROCS as the
// environment says)
//
// When the chain ends it prints to stderr what it used per round trip:
// "gofloor MODE ROLE: N round trips, CPU µs each, S voluntary switches
// each".
//
// scripts/bench --floor runs it under hopfloor.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/dstproject/dst/internal/rawio"
)

func main() {
	if len(os.Args) != 4 {
		fail(fmt.Errorf("usage: gofloor poller|block middle|end PAYLOAD"))
	}
	var middle bool
	switch os.Args[2] {
	case "middle":
		middle = true
	case "end":
	default:
		fail(fmt.Errorf("the stage is middle or end, not %q", os.Args[2]))
	}
	n, err := strconv.Atoi(os.Args[3])
	if err != nil || n < 1 || n > 1<<20 {
		fail(fmt.Errorf("PAYLOAD must be 1..1048576, not %q", os.Args[3]))
	}
	switch os.Args[1] {
	case "poller":
		up := conn(3)
		if !middle {
			relay(up, up, n, true)
		}
		down := conn(4)
		go relay(down, up, n, true)
		relay(up, down, n, false)
	case "block":
		block(n, middle)
	default:
		fail(fmt.Errorf("unknown mode %q", os.Args[1]))
	}
}

// conn puts fd in the runtime's poller, read and written as dst does.
func conn(fd int) net.Conn {
	c, err := net.FileConn(os.NewFile(uintptr(fd), "chain"))
	if err != nil {
		fail(err)
	}
	return rawio.Wrap(c)
}

// trips counts the tokens that came back from below (or, at the end, in).
var trips atomic.Int64

// relay passes tokens of n bytes from r to w until the chain ends, and
// counts them when count is set.
func relay(r io.Reader, w io.Writer, n int, count bool) {
	buf := make([]byte, n)
	for {
		if _, err := io.ReadFull(r, buf); err != nil {
			exit()
		}
		if _, err := w.Write(buf); err != nil {
			exit()
		}
		if count {
			trips.Add(1)
		}
	}
}

// exit prints what the process used per round trip, and exits.
func exit() {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		fail(err)
	}
	n := trips.Load()
	if n > 0 {
		cpu := float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e3 / float64(n)
		fmt.Fprintf(os.Stderr, "gofloor %s %s: %d round trips, %.1f µs CPU each, %.2f voluntary switches each\n",
			os.Args[1], os.Args[2], n, cpu, float64(ru.Nvcsw)/float64(n))
	}
	os.Exit(0)
}

// block takes each token down and back with blocking system calls.
func block(n int, middle bool) {
	buf := make([]byte, n)
	for {
		xfer(3, buf, true)
		if middle {
			xfer(4, buf, false)
			xfer(4, buf, true)
		}
		xfer(3, buf, false)
		trips.Add(1)
	}
}

func xfer(fd int, b []byte, reading bool) {
	for done := 0; done < len(b); {
		var k int
		var err error
		if reading {
			k, err = unix.Read(fd, b[done:])
		} else {
			k, err = unix.Write(fd, b[done:])
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil || k <= 0 {
			exit() // the chain is being torn down
		}
		done += k
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gofloor:", err)
	os.Exit(2)
}
