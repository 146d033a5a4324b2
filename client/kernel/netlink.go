package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// Names and numbers from include/uapi/linux/nbd-netlink.h.
const (
	familyName    = "nbd"
	familyVersion = 1
)

// command is an NBD_CMD_* of the netlink family (not the NBD wire command).
type command uint8

const (
	cmdConnect     command = 1
	cmdDisconnect  command = 2
	cmdReconfigure command = 3
	cmdLinkDead    command = 4
	cmdStatus      command = 5
)

var commandNames = map[command]string{
	cmdConnect:     "CONNECT",
	cmdDisconnect:  "DISCONNECT",
	cmdReconfigure: "RECONFIGURE",
	cmdLinkDead:    "LINK_DEAD",
	cmdStatus:      "STATUS",
}

func (c command) String() string {
	if s, ok := commandNames[c]; ok {
		return s
	}
	return fmt.Sprintf("command(%d)", uint8(c))
}

// Top-level attributes (NBD_ATTR_*).
const (
	attrIndex           = 1  // u32
	attrSizeBytes       = 2  // u64
	attrBlockSizeBytes  = 3  // u64
	attrTimeout         = 4  // u64, seconds
	attrServerFlags     = 5  // u64, NBD_FLAG_* transmission flags
	attrClientFlags     = 6  // u64, NBD_CFLAG_*
	attrSockets         = 7  // nested sockItem
	attrDeadConnTimeout = 8  // u64, seconds
	attrDeviceList      = 9  // nested deviceItem
	attrBackend         = 10 // string
)

// Nested attributes.
const (
	sockItem        = 1 // NBD_SOCK_ITEM, nested
	sockFD          = 1 // NBD_SOCK_FD, u32
	deviceItem      = 1 // NBD_DEVICE_ITEM, nested
	deviceIndex     = 1 // NBD_DEVICE_INDEX, u32
	deviceConnected = 2 // NBD_DEVICE_CONNECTED, u8
)

// Client flags (NBD_CFLAG_*, include/uapi/linux/nbd.h). dst sets neither:
// the device must outlive the process that configured it, so that a
// restarted process can reconfigure it.
const (
	cflagDestroyOnDisconnect = 1 << 0
	cflagDisconnectOnClose   = 1 << 1
)

// request is what a CONNECT or RECONFIGURE carries. A negative index asks
// the kernel for any free device (CONNECT only).
type request struct {
	index           int
	size, blockSize uint64
	timeout         uint64 // seconds; 0 leaves the kernel default, unless recheck
	recheck         bool   // timeout 0, sent; the queue's io_timeout set after
	deadConnTimeout uint64 // seconds
	serverFlags     uint64
	clientFlags     uint64
	backend         string
	fds             []int
}

// encode builds the attributes of a CONNECT (cmd == cmdConnect) or a
// RECONFIGURE. RECONFIGURE carries no size or flags: those stay as the
// device was connected with.
func (r *request) encode(cmd command) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	if r.index >= 0 {
		ae.Uint32(attrIndex, uint32(r.index))
	} else if cmd != cmdConnect {
		return nil, fmt.Errorf("kernel: %v needs a device index", cmd)
	}
	if cmd == cmdConnect {
		ae.Uint64(attrSizeBytes, r.size)
		ae.Uint64(attrBlockSizeBytes, r.blockSize)
		ae.Uint64(attrServerFlags, r.serverFlags)
		ae.Uint64(attrClientFlags, r.clientFlags)
	}
	// With recheck, no NBD timeout: on it the kernel would shut a socket
	// that is only slow. Zero is sent, not left out, so that a reconfigure
	// clears a timeout an older dst set.
	if r.timeout > 0 || r.recheck {
		ae.Uint64(attrTimeout, r.timeout)
	}
	if r.deadConnTimeout > 0 {
		ae.Uint64(attrDeadConnTimeout, r.deadConnTimeout)
	}
	if r.backend != "" {
		ae.String(attrBackend, r.backend)
	}
	if len(r.fds) == 0 {
		return nil, fmt.Errorf("kernel: %v without sockets", cmd)
	}
	ae.Nested(attrSockets, func(nae *netlink.AttributeEncoder) error {
		for _, fd := range r.fds {
			nae.Nested(sockItem, func(s *netlink.AttributeEncoder) error {
				s.Uint32(sockFD, uint32(fd))
				return nil
			})
		}
		return nil
	})
	return ae.Encode()
}

// encodeIndex builds the attributes of a DISCONNECT or STATUS; a negative
// index (STATUS only) asks about every device.
func encodeIndex(index int) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	if index >= 0 {
		ae.Uint32(attrIndex, uint32(index))
	}
	return ae.Encode()
}

// encodeResize builds the attributes of a RECONFIGURE that only changes
// the device's size. A device connected with a backend identifier must be
// named by it again, or the kernel refuses (EINVAL, "must specify
// backend").
func encodeResize(index int, size uint64, backend string) ([]byte, error) {
	if index < 0 {
		return nil, fmt.Errorf("kernel: resizing needs a device index")
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(index))
	ae.Uint64(attrSizeBytes, size)
	if backend != "" {
		ae.String(attrBackend, backend)
	}
	return ae.Encode()
}

func message(cmd command, data []byte) genetlink.Message {
	return genetlink.Message{
		Header: genetlink.Header{Command: uint8(cmd), Version: familyVersion},
		Data:   data,
	}
}

// decodeIndex finds NBD_ATTR_INDEX in a CONNECT reply.
func decodeIndex(b []byte) (int, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0, fmt.Errorf("kernel: CONNECT reply: %w", err)
	}
	index := -1
	for ad.Next() {
		if ad.Type() == attrIndex {
			if n := len(ad.Bytes()); n != 4 {
				return 0, fmt.Errorf("kernel: CONNECT reply: index attribute of %d bytes", n)
			}
			index = int(ad.Uint32())
		}
	}
	if err := ad.Err(); err != nil {
		return 0, fmt.Errorf("kernel: CONNECT reply: %w", err)
	}
	if index < 0 {
		return 0, errors.New("kernel: CONNECT reply carries no device index")
	}
	return index, nil
}

// DeviceStatus is one device as NBD_CMD_STATUS reports it. Connected means
// the device has a configuration: it is serving, or its connections are
// dead and it waits for a reconfigure.
type DeviceStatus struct {
	Index     int
	Connected bool
}

// decodeStatus parses NBD_ATTR_DEVICE_LIST from a STATUS reply.
func decodeStatus(b []byte) ([]DeviceStatus, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, fmt.Errorf("kernel: STATUS reply: %w", err)
	}
	var out []DeviceStatus
	for ad.Next() {
		if ad.Type() != attrDeviceList {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				if list.Type() != deviceItem {
					continue
				}
				d, err := decodeDevice(list.Bytes())
				if err != nil {
					return err
				}
				out = append(out, d)
			}
			return nil
		})
	}
	if err := ad.Err(); err != nil {
		return nil, fmt.Errorf("kernel: STATUS reply: %w", err)
	}
	return out, nil
}

func decodeDevice(b []byte) (DeviceStatus, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return DeviceStatus{}, err
	}
	d := DeviceStatus{Index: -1}
	for ad.Next() {
		switch ad.Type() {
		case deviceIndex:
			if n := len(ad.Bytes()); n != 4 {
				return DeviceStatus{}, fmt.Errorf("device index attribute of %d bytes", n)
			}
			d.Index = int(ad.Uint32())
		case deviceConnected:
			if n := len(ad.Bytes()); n != 1 {
				return DeviceStatus{}, fmt.Errorf("device connected attribute of %d bytes", n)
			}
			d.Connected = ad.Uint8() != 0
		}
	}
	if err := ad.Err(); err != nil {
		return DeviceStatus{}, err
	}
	if d.Index < 0 {
		return DeviceStatus{}, errors.New("device item without an index")
	}
	return d, nil
}

// nativeEndian is the byte order of netlink attributes.
var nativeEndian = binary.NativeEndian
