// Command seqfloor measures how fast bytes can stream through the shape of
// a sequential copy on this machine when the processes do only the work
// each byte must get, and nothing else: no protocol, no requests, no
// replies, one long stream in 256 KiB chunks.
//
// It is the throughput counterpart of hopfloor.c. Each process of a shape
// is a stage that reads chunks from one place, works on them and writes
// them to the next:
//
//	read-dst    serve: pread, xxhash, seal  -TCP->  attach: open, xxhash  -unix->  client
//	read-relay  the same without the xxhash passes (nbdkit's nbd plugin in front of nbdkit-tls)
//	read-tls    server: pread, seal  -TCP->  client: open (nbdkit-tls and a TLS client)
//	write-dst   client: pread  -unix->  attach: xxhash, seal  -TCP->  serve: open, xxhash, pwrite
//	write-relay the same without the xxhash passes
//	write-tls   client: pread, seal  -TCP->  server: open, pwrite
//
// Sealing is AES-256-GCM from Go's standard library in records of 64 KiB,
// as dst's record layer does (crypto/CHANNEL.md); the checksum is xxhash64
// from github.com/cespare/xxhash/v2, as dst's. The result bounds a real
// copy of that shape from above: dst or nbdkit only add work to it.
//
// usage: seqfloor SHAPE FILE MIB
//
// It reads (read-*) or writes (write-*) FILE from its start, wrapping at
// its end, until MIB mebibytes have gone through, and prints
// "SHAPE MB/s CPU-s/GiB": the rate in 10^6 bytes per second, and the CPU
// time all its processes used per GiB. scripts/bench --floor runs it.
package main

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cespare/xxhash/v2"
)

const (
	chunkSize  = 256 << 10 // nbdcopy's request size
	recordSize = 64 << 10  // plaintext bytes per sealed record
	tagLen     = 16
)

// A stage is one process of a shape: where its chunks come from, what it
// does to each, and where they go. "file" is the copy's file, "next" and
// "prev" the sockets to the neighbouring stages, "null" nowhere.
type stage struct {
	in, out string
	ops     []string // in order: open, hash, seal
}

var shapes = map[string][]stage{
	"read-dst":    {{"file", "next", []string{"hash", "seal"}}, {"prev", "next", []string{"open", "hash"}}, {"prev", "null", nil}},
	"read-relay":  {{"file", "next", []string{"seal"}}, {"prev", "next", []string{"open"}}, {"prev", "null", nil}},
	"read-tls":    {{"file", "next", []string{"seal"}}, {"prev", "null", []string{"open"}}},
	"write-dst":   {{"file", "next", nil}, {"prev", "next", []string{"hash", "seal"}}, {"prev", "file", []string{"open", "hash"}}},
	"write-relay": {{"file", "next", nil}, {"prev", "next", []string{"seal"}}, {"prev", "file", []string{"open"}}},
	"write-tls":   {{"file", "next", []string{"seal"}}, {"prev", "file", []string{"open"}}},
}

func main() {
	if len(os.Args) == 6 && os.Args[1] == "stage" {
		if err := runStage(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "seqfloor: stage:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: seqfloor SHAPE FILE MIB; SHAPE is read-dst, read-relay, read-tls, write-dst, write-relay or write-tls")
		os.Exit(2)
	}
	st, ok := shapes[os.Args[1]]
	mib, err := strconv.Atoi(os.Args[3])
	if !ok || err != nil || mib <= 0 {
		fmt.Fprintf(os.Stderr, "seqfloor: want a known SHAPE and a positive MIB, got %q %q\n", os.Args[1], os.Args[3])
		os.Exit(2)
	}
	mbs, cpu, err := run(st, os.Args[2], int64(mib)<<20)
	if err != nil {
		fmt.Fprintln(os.Stderr, "seqfloor:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %.1f %.3f\n", os.Args[1], mbs, cpu.Seconds()/(float64(mib)/1024))
}

// run starts one process per stage, joined by TCP (to the last stage, the
// server's side) and unix socketpairs (between the others), and returns
// the rate from start to the last stage's end and the CPU time the stages
// used.
func run(st []stage, file string, total int64) (mbs float64, cpu time.Duration, err error) {
	// links[i] joins stage i to stage i+1: [0] is i's end, [1] is i+1's.
	links := make([][2]*os.File, len(st)-1)
	for i := range links {
		if i == len(links)-1 && strings.HasPrefix(os.Args[1], "write") || i == 0 && strings.HasPrefix(os.Args[1], "read") {
			links[i], err = tcpPair()
		} else {
			links[i], err = unixPair()
		}
		if err != nil {
			return 0, 0, err
		}
	}
	start := time.Now()
	cmds := make([]*exec.Cmd, len(st))
	for i, s := range st {
		var prev, next *os.File
		if i > 0 {
			prev = links[i-1][1]
		}
		if i < len(links) {
			next = links[i][0]
		}
		c := exec.Command(os.Args[0], "stage", s.in+">"+s.out, strings.Join(s.ops, ","), file, strconv.FormatInt(total, 10))
		c.Stderr = os.Stderr
		c.ExtraFiles = []*os.File{prev, next} // fds 3 and 4; nil ones stay closed
		if err := c.Start(); err != nil {
			return 0, 0, err
		}
		cmds[i] = c
	}
	for _, l := range links {
		l[0].Close()
		l[1].Close()
	}
	for _, c := range cmds {
		if werr := c.Wait(); werr != nil && err == nil {
			err = werr
		}
		cpu += c.ProcessState.UserTime() + c.ProcessState.SystemTime()
	}
	if err != nil {
		return 0, 0, err
	}
	return float64(total) / time.Since(start).Seconds() / 1e6, cpu, nil
}

// tcpPair returns the two ends of a TCP connection over loopback.
func tcpPair() ([2]*os.File, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return [2]*os.File{}, err
	}
	defer ln.Close()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return [2]*os.File{}, err
	}
	a, err := ln.Accept()
	if err != nil {
		return [2]*os.File{}, err
	}
	fd, err1 := d.(*net.TCPConn).File()
	fa, err2 := a.(*net.TCPConn).File()
	d.Close()
	a.Close()
	return [2]*os.File{fd, fa}, errors.Join(err1, err2)
}

func unixPair() ([2]*os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return [2]*os.File{}, err
	}
	return [2]*os.File{os.NewFile(uintptr(fds[0]), "prev"), os.NewFile(uintptr(fds[1]), "next")}, nil
}

// runStage moves total bytes from its input to its output, chunk by chunk.
func runStage(args []string) error {
	inOut := strings.SplitN(args[0], ">", 2)
	ops := strings.FieldsFunc(args[1], func(r rune) bool { return r == ',' })
	file := args[2]
	total, err := strconv.ParseInt(args[3], 10, 64)
	if err != nil || len(inOut) != 2 {
		return fmt.Errorf("bad arguments %q", args)
	}
	var f *os.File
	if inOut[0] == "file" || inOut[1] == "file" {
		if f, err = os.OpenFile(file, os.O_RDWR, 0); err != nil {
			return err
		}
		defer f.Close()
	}
	size := int64(0)
	if f != nil {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		size = fi.Size() / chunkSize * chunkSize
		if size == 0 {
			return fmt.Errorf("%s is smaller than one chunk", file)
		}
	}
	prev, next := os.NewFile(3, "prev"), os.NewFile(4, "next")
	var in *bufio.Reader
	if inOut[0] == "prev" {
		in = bufio.NewReaderSize(prev, 2*(recordSize+tagLen+4)) // as dst's record reader
	}
	aead, err := newAEAD()
	if err != nil {
		return err
	}
	var sealN, openN uint64
	nonce := make([]byte, aead.NonceSize())
	chunk := make([]byte, chunkSize)
	sealed := make([]byte, 0, chunkSize+chunkSize/recordSize*(tagLen+4))
	var sum uint64
	for off := int64(0); off < total; off += chunkSize {
		switch {
		case inOut[0] == "file":
			if _, err := f.ReadAt(chunk, off%size); err != nil {
				return err
			}
		case slices.Contains(ops, "open"):
			for p := 0; p < chunkSize; p += recordSize {
				rec, err := in.Peek(4 + recordSize + tagLen)
				if err != nil {
					return err
				}
				binary.BigEndian.PutUint64(nonce[4:], openN)
				openN++
				if _, err := aead.Open(chunk[p:p], nonce, rec[4:], rec[:4]); err != nil {
					return err
				}
				in.Discard(len(rec))
			}
		default:
			if _, err := io.ReadFull(in, chunk); err != nil {
				return err
			}
		}
		if slices.Contains(ops, "hash") {
			sum ^= xxhash.Sum64(chunk)
		}
		out := chunk
		if slices.Contains(ops, "seal") {
			sealed = sealed[:0]
			for p := 0; p < chunkSize; p += recordSize {
				var hdr [4]byte
				binary.BigEndian.PutUint32(hdr[:], recordSize+tagLen)
				sealed = append(sealed, hdr[:]...)
				binary.BigEndian.PutUint64(nonce[4:], sealN)
				sealN++
				sealed = aead.Seal(sealed, nonce, chunk[p:p+recordSize], hdr[:])
			}
			out = sealed
		}
		switch inOut[1] {
		case "next":
			if _, err := next.Write(out); err != nil {
				return err
			}
		case "file":
			if _, err := f.WriteAt(out, off%size); err != nil {
				return err
			}
		}
	}
	_ = sum // kept so the checksum passes are work done, whatever a compiler may prove
	return nil
}

// newAEAD returns AES-256-GCM under a fixed key: both ends of a link use
// the same one, and what is measured does not depend on the key.
func newAEAD() (cipher.AEAD, error) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
