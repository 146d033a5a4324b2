package tests

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// A deliberately small NBD client (fixed newstyle, NBD_OPT_GO, simple
// replies) for sending requests that libnbd and qemu refuse to send:
// writes to read-only exports and ranges past the end. Layout from
// NetworkBlockDevice/nbd doc/proto.md.
const (
	nbdMagic        = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic     = 0x49484156454f5054 // "IHAVEOPT"
	nbdRepMagic     = 0x3e889045565a9
	nbdRequestMagic = 0x25609513
	nbdReplyMagic   = 0x67446698

	nbdFlagFixedNewstyle = 1 << 0
	nbdFlagNoZeroes      = 1 << 1

	nbdOptGo   = 7
	nbdRepAck  = 1
	nbdRepInfo = 3
	nbdInfoExp = 0

	nbdFlagReadOnly = 1 << 1

	nbdCmdRead  = 0
	nbdCmdWrite = 1
	nbdCmdDisc  = 2
	nbdCmdFlush = 3

	nbdEPERM  = 1
	nbdEINVAL = 22
	nbdENOSPC = 28
)

type rawNBD struct {
	c      net.Conn
	size   uint64
	flags  uint16
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
	var hello [18]byte
	if _, err := io.ReadFull(n.c, hello[:]); err != nil {
		return fmt.Errorf("tests: nbd greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != nbdMagic || binary.BigEndian.Uint64(hello[8:]) != nbdOptMagic {
		return fmt.Errorf("tests: nbd greeting %x is not fixed newstyle", hello)
	}
	flags := binary.BigEndian.Uint16(hello[16:]) & (nbdFlagFixedNewstyle | nbdFlagNoZeroes)
	opt := make([]byte, 4+16+4+len(name)+2)
	binary.BigEndian.PutUint32(opt[0:], uint32(flags))
	binary.BigEndian.PutUint64(opt[4:], nbdOptMagic)
	binary.BigEndian.PutUint32(opt[12:], nbdOptGo)
	binary.BigEndian.PutUint32(opt[16:], uint32(4+len(name)+2))
	binary.BigEndian.PutUint32(opt[20:], uint32(len(name)))
	copy(opt[24:], name) // then zero info requests
	if _, err := n.c.Write(opt); err != nil {
		return err
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(n.c, h[:]); err != nil {
			return fmt.Errorf("tests: nbd option reply: %w", err)
		}
		typ, length := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if binary.BigEndian.Uint64(h[0:]) != nbdRepMagic || length > 1<<16 {
			return fmt.Errorf("tests: bad nbd option reply header %x", h)
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(n.c, data); err != nil {
			return fmt.Errorf("tests: nbd option reply: %w", err)
		}
		switch {
		case typ == nbdRepAck:
			if n.size == 0 && n.flags == 0 {
				return errors.New("tests: NBD_OPT_GO acked without NBD_INFO_EXPORT")
			}
			return nil
		case typ == nbdRepInfo && len(data) >= 12 && binary.BigEndian.Uint16(data) == nbdInfoExp:
			n.size = binary.BigEndian.Uint64(data[2:])
			n.flags = binary.BigEndian.Uint16(data[10:])
		case typ&(1<<31) != 0:
			return fmt.Errorf("tests: NBD_OPT_GO %q refused: reply %#x %q", name, typ, data)
		}
	}
}

// do sends one request and returns the reply's error value and read data.
func (n *rawNBD) do(cmd uint16, off uint64, length uint32, payload []byte) (uint32, []byte, error) {
	n.cookie++
	req := make([]byte, 28, 28+len(payload))
	binary.BigEndian.PutUint32(req[0:], nbdRequestMagic)
	binary.BigEndian.PutUint16(req[6:], cmd)
	binary.BigEndian.PutUint64(req[8:], n.cookie)
	binary.BigEndian.PutUint64(req[16:], off)
	binary.BigEndian.PutUint32(req[24:], length)
	if _, err := n.c.Write(append(req, payload...)); err != nil {
		return 0, nil, err
	}
	var h [16]byte
	if _, err := io.ReadFull(n.c, h[:]); err != nil {
		return 0, nil, fmt.Errorf("tests: nbd reply to cmd %d at %d+%d: %w", cmd, off, length, err)
	}
	if binary.BigEndian.Uint32(h[0:]) != nbdReplyMagic || binary.BigEndian.Uint64(h[8:]) != n.cookie {
		return 0, nil, fmt.Errorf("tests: bad nbd reply %x to cookie %d", h, n.cookie)
	}
	errno := binary.BigEndian.Uint32(h[4:])
	if cmd != nbdCmdRead || errno != 0 {
		return errno, nil, nil
	}
	data := make([]byte, length)
	_, err := io.ReadFull(n.c, data)
	return 0, data, err
}

func (n *rawNBD) close() {
	req := make([]byte, 28)
	binary.BigEndian.PutUint32(req[0:], nbdRequestMagic)
	binary.BigEndian.PutUint16(req[6:], nbdCmdDisc)
	_, _ = n.c.Write(req)
	n.c.Close()
}
