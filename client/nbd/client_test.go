package nbd_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/client/nbd/nbdtest"
	"github.com/dstproject/dst/internal/nbdwire"
)

var quietLog = slog.New(slog.DiscardHandler)

// tclient is a small NBD client for tests: raw handshake helpers, then
// concurrent requests matched to replies by cookie. It encodes with
// nbdwire, as the server does, so a wrong value there would fool both:
// nbdwire's golden and pinned tests, and the real clients of
// realclient_test.go, are what catch that.
type tclient struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader

	wmu  sync.Mutex
	wbuf []byte

	mu     sync.Mutex
	calls  map[uint64]*call
	next   uint64
	order  []uint64 // cookies in reply order, when recording
	record bool
	rerr   error
	closed chan struct{}
}

type call struct {
	cookie uint64
	read   []byte // destination of a successful read's data
	errno  nbdwire.Errno
	done   chan struct{}
}

func newCall() *call { return &call{done: make(chan struct{}, 1)} }

func newTClient(t testing.TB, nc net.Conn) *tclient {
	return &tclient{t: t, nc: nc, br: bufio.NewReaderSize(nc, 64<<10), calls: map[uint64]*call{}, closed: make(chan struct{})}
}

// hello reads the server greeting and answers with client flags.
func (c *tclient) hello(clientFlags nbdwire.ClientFlags) nbdwire.HandshakeFlags {
	c.t.Helper()
	var b [nbdwire.ServerHelloSize]byte
	c.mustRead(b[:])
	h, err := nbdwire.DecodeServerHello(b[:])
	if err != nil {
		c.t.Fatal(err)
	}
	c.mustWrite(clientFlags.Append(nil))
	return h.Flags
}

func (c *tclient) sendOption(opt nbdwire.Option, data []byte) {
	c.t.Helper()
	c.mustWrite(optBytes(opt, data))
}

func optBytes(opt nbdwire.Option, data []byte) []byte {
	b := nbdwire.OptHeader{Option: opt, Length: uint32(len(data))}.Append(nil)
	return append(b, data...)
}

type optReply struct {
	opt  nbdwire.Option
	typ  nbdwire.ReplyType
	data []byte
}

func (c *tclient) readOptReply() optReply {
	c.t.Helper()
	var b [nbdwire.OptReplyHeaderSize]byte
	c.mustRead(b[:])
	h, err := nbdwire.DecodeOptReplyHeader(b[:])
	if err != nil {
		c.t.Fatal(err)
	}
	r := optReply{opt: h.Option, typ: h.Type, data: make([]byte, h.Length)}
	c.mustRead(r.data)
	return r
}

func infoPayload(name string, infos ...nbdwire.InfoType) []byte {
	return nbdwire.InfoRequest{Name: name, Infos: infos}.Append(nil)
}

// exportInfo is what NBD_OPT_INFO/GO told us.
type exportInfo struct {
	size               uint64
	flags              uint16
	name, desc         string
	minB, prefB, maxB  uint32
	haveName, haveDesc bool
}

// infoGo sends INFO or GO and collects replies up to the final one, which it
// returns (ACK on success).
func (c *tclient) infoGo(opt nbdwire.Option, name string, infos ...nbdwire.InfoType) (exportInfo, optReply) {
	c.t.Helper()
	c.sendOption(opt, infoPayload(name, infos...))
	var ei exportInfo
	for {
		r := c.readOptReply()
		if r.opt != opt {
			c.t.Fatalf("reply for option %v, want %v", r.opt, opt)
		}
		if r.typ != nbdwire.RepInfo {
			return ei, r
		}
		t, err := nbdwire.DecodeInfoType(r.data)
		if err != nil {
			c.t.Fatal(err)
		}
		switch t {
		case nbdwire.InfoExport:
			x, err := nbdwire.DecodeExportInfo(r.data)
			if err != nil {
				c.t.Fatal(err)
			}
			ei.size, ei.flags = x.Size, uint16(x.Flags)
		case nbdwire.InfoName:
			ei.name, ei.haveName = string(r.data[nbdwire.InfoTypeSize:]), true
		case nbdwire.InfoDescription:
			ei.desc, ei.haveDesc = string(r.data[nbdwire.InfoTypeSize:]), true
		case nbdwire.InfoBlockSize:
			x, err := nbdwire.DecodeBlockSizeInfo(r.data)
			if err != nil {
				c.t.Fatal(err)
			}
			ei.minB, ei.prefB, ei.maxB = x.Min, x.Preferred, x.Max
		}
	}
}

// goTransmission negotiates export name with GO and starts the reply reader.
func (c *tclient) goTransmission(name string) exportInfo {
	c.t.Helper()
	c.hello(nbdwire.ClientFixedNewstyle | nbdwire.ClientNoZeroes)
	ei, r := c.infoGo(nbdwire.OptGo, name, nbdwire.InfoBlockSize)
	if r.typ != nbdwire.RepAck {
		c.t.Fatalf("GO %q: reply %v %q", name, r.typ, r.data)
	}
	go c.readLoop()
	return ei
}

func (c *tclient) mustRead(b []byte) {
	c.t.Helper()
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("read: %v", err)
	}
}

func (c *tclient) mustWrite(b []byte) {
	c.t.Helper()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// start sends one request; cl is completed when its reply arrives.
func (c *tclient) start(cl *call, cmd nbdwire.Command, flags nbdwire.CmdFlags, off uint64, length uint32, payload []byte) error {
	c.mu.Lock()
	if c.rerr != nil {
		c.mu.Unlock()
		return c.rerr
	}
	c.next++
	cl.cookie = c.next
	c.calls[cl.cookie] = cl
	c.mu.Unlock()

	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := nbdwire.Request{Flags: flags, Cmd: cmd, Cookie: cl.cookie, Offset: off, Length: length}.Append(c.wbuf[:0])
	c.wbuf = b
	if len(payload) > 0 {
		bufs := net.Buffers{b, payload}
		_, err := bufs.WriteTo(c.nc)
		return err
	}
	_, err := c.nc.Write(b)
	return err
}

// wait returns the errno of a started call, or an error if the connection
// ended first.
func (c *tclient) wait(cl *call) (nbdwire.Errno, error) {
	select {
	case <-cl.done:
		return cl.errno, nil
	case <-c.closed:
		select {
		case <-cl.done:
			return cl.errno, nil
		default:
		}
		return 0, c.rerr
	}
}

// do runs one request synchronously. read receives a read's data.
func (c *tclient) do(cmd nbdwire.Command, flags nbdwire.CmdFlags, off uint64, length uint32, payload, read []byte) (nbdwire.Errno, error) {
	cl := newCall()
	cl.read = read
	if err := c.start(cl, cmd, flags, off, length, payload); err != nil {
		return 0, err
	}
	return c.wait(cl)
}

func (c *tclient) mustDo(cmd nbdwire.Command, flags nbdwire.CmdFlags, off uint64, length uint32, payload, read []byte) nbdwire.Errno {
	c.t.Helper()
	e, err := c.do(cmd, flags, off, length, payload, read)
	if err != nil {
		c.t.Fatalf("%v off=%d len=%d: %v", cmd, off, length, err)
	}
	return e
}

func (c *tclient) readLoop() {
	err := c.readReplies()
	c.mu.Lock()
	c.rerr = err
	c.mu.Unlock()
	close(c.closed)
}

func (c *tclient) readReplies() error {
	var h [nbdwire.SimpleReplySize]byte
	for {
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return err
		}
		rep, err := nbdwire.DecodeSimpleReply(h[:])
		if err != nil {
			return err
		}
		errno, cookie := rep.Errno, rep.Cookie
		c.mu.Lock()
		cl := c.calls[cookie]
		delete(c.calls, cookie)
		if c.record {
			c.order = append(c.order, cookie)
		}
		c.mu.Unlock()
		if cl == nil {
			return fmt.Errorf("reply for unknown cookie %d", cookie)
		}
		if errno == 0 && cl.read != nil {
			if _, err := io.ReadFull(c.br, cl.read); err != nil {
				return err
			}
		}
		cl.errno = errno
		cl.done <- struct{}{}
	}
}

// disc sends NBD_CMD_DISC.
func (c *tclient) disc() {
	c.t.Helper()
	if err := c.start(newCall(), nbdwire.CmdDisc, 0, 0, 0, nil); err != nil {
		c.t.Fatalf("send DISC: %v", err)
	}
}

// waitClosed waits for the server to close the connection.
func (c *tclient) waitClosed(d time.Duration) error {
	select {
	case <-c.closed:
		return c.rerr
	case <-time.After(d):
		return errors.New("connection still open")
	}
}

// testServer runs Server.ServeConn on one end of a connection.
type testServer struct {
	cli    *tclient
	cancel context.CancelFunc
	done   chan error
}

type connKind string

const (
	kindUnix connKind = "unix" // the writev path
	kindPipe connKind = "pipe" // the coalescing path
)

func startConn(t testing.TB, kind connKind, s *nbd.Server) *testServer {
	t.Helper()
	if s.Logger == nil {
		s.Logger = quietLog
	}
	var cc, sc net.Conn
	switch kind {
	case kindPipe:
		cc, sc = net.Pipe()
	case kindUnix:
		cc, sc = unixPair(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{cli: newTClient(t, cc), cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- s.ServeConn(ctx, sc) }()
	t.Cleanup(func() {
		cc.Close()
		cancel()
		select {
		case <-ts.done:
		case <-time.After(10 * time.Second):
			t.Errorf("ServeConn did not return")
		}
	})
	return ts
}

// wait returns ServeConn's result.
func (ts *testServer) wait(t testing.TB) error {
	t.Helper()
	select {
	case err := <-ts.done:
		ts.done <- err // keep it for Cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("ServeConn did not return")
		return nil
	}
}

func unixPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	cc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return cc, r.c
}

// memExport is a writable export over a fresh MemDevice with every feature.
func memExport(size int) (*nbd.Export, *nbdtest.MemDevice) {
	d := nbdtest.NewMemDevice(size)
	return &nbd.Export{
		Name: "mem", Description: "test disk", Size: uint64(size),
		Flush: true, FUA: true, Trim: true, WriteZeroes: true, MultiConn: true,
		Device: d,
	}, d
}
