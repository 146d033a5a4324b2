package tests

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/dstproject/dst/internal/nbdwire"
)

// rawNBD is a deliberately small NBD client (fixed newstyle, NBD_OPT_GO,
// simple replies) for sending requests that libnbd and qemu refuse to send:
// writes to read-only exports and ranges past the end. The byte layouts
// are internal/nbdwire's.
type rawNBD struct {
	c      net.Conn
	size   uint64
	flags  nbdwire.TransFlags
	cookie uint64
}

// dialRawNBD connects to a unix socket and negotiates export name with
// NBD_OPT_GO.
func dialRawNBD(sock, name string) (*rawNBD, error) {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	n := &rawNBD{c: c}
	if err := n.handshake(name); err != nil {
		c.Close()
		return nil, err
	}
	return n, nil
}

func (n *rawNBD) handshake(name string) error {
	var b [nbdwire.ServerHelloSize]byte
	if _, err := io.ReadFull(n.c, b[:]); err != nil {
		return fmt.Errorf("tests: nbd greeting: %w", err)
	}
	hello, err := nbdwire.DecodeServerHello(b[:])
	if err != nil {
		return fmt.Errorf("tests: nbd greeting: %w", err)
	}
	var flags nbdwire.ClientFlags
	if hello.Flags&nbdwire.HandshakeFixedNewstyle != 0 {
		flags |= nbdwire.ClientFixedNewstyle
	}
	if hello.Flags&nbdwire.HandshakeNoZeroes != 0 {
		flags |= nbdwire.ClientNoZeroes
	}
	req := nbdwire.InfoRequest{Name: name} // no info requests
	msg := flags.Append(nil)
	msg = nbdwire.OptHeader{Option: nbdwire.OptGo, Length: uint32(req.Len())}.Append(msg)
	if _, err := n.c.Write(req.Append(msg)); err != nil {
		return err
	}
	for {
		var b [nbdwire.OptReplyHeaderSize]byte
		if _, err := io.ReadFull(n.c, b[:]); err != nil {
			return fmt.Errorf("tests: nbd option reply: %w", err)
		}
		h, err := nbdwire.DecodeOptReplyHeader(b[:])
		if err != nil || h.Length > 1<<16 {
			return fmt.Errorf("tests: bad nbd option reply header %x: %v", b, err)
		}
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(n.c, data); err != nil {
			return fmt.Errorf("tests: nbd option reply: %w", err)
		}
		switch {
		case h.Type == nbdwire.RepAck:
			if n.size == 0 && n.flags == 0 {
				return errors.New("tests: NBD_OPT_GO acked without NBD_INFO_EXPORT")
			}
			return nil
		case h.Type == nbdwire.RepInfo:
			if t, err := nbdwire.DecodeInfoType(data); err != nil || t != nbdwire.InfoExport {
				continue
			}
			info, err := nbdwire.DecodeExportInfo(data)
			if err != nil {
				return fmt.Errorf("tests: %w", err)
			}
			n.size, n.flags = info.Size, info.Flags
		case h.Type.IsError():
			return fmt.Errorf("tests: NBD_OPT_GO %q refused: reply %v %q", name, h.Type, data)
		}
	}
}

// do sends one request and returns the reply's error value and read data.
func (n *rawNBD) do(cmd nbdwire.Command, off uint64, length uint32, payload []byte) (nbdwire.Errno, []byte, error) {
	n.cookie++
	req := nbdwire.Request{Cmd: cmd, Cookie: n.cookie, Offset: off, Length: length}
	if _, err := n.c.Write(append(req.Append(nil), payload...)); err != nil {
		return 0, nil, err
	}
	var b [nbdwire.SimpleReplySize]byte
	if _, err := io.ReadFull(n.c, b[:]); err != nil {
		return 0, nil, fmt.Errorf("tests: nbd reply to %v at %d+%d: %w", cmd, off, length, err)
	}
	rep, err := nbdwire.DecodeSimpleReply(b[:])
	if err != nil || rep.Cookie != n.cookie {
		return 0, nil, fmt.Errorf("tests: bad nbd reply %x to cookie %d: %v", b, n.cookie, err)
	}
	if cmd != nbdwire.CmdRead || rep.Errno != 0 {
		return rep.Errno, nil, nil
	}
	data := make([]byte, length)
	_, err = io.ReadFull(n.c, data)
	return 0, data, err
}

func (n *rawNBD) close() {
	_, _ = n.c.Write(nbdwire.Request{Cmd: nbdwire.CmdDisc}.Append(nil))
	n.c.Close()
}
