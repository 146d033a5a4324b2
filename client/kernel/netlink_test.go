package kernel

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/internal/nbdwire"
)

// nla builds one netlink attribute by hand: length, type, data, padding.
func nla(typ uint16, data []byte) []byte {
	b := make([]byte, 4, 4+len(data)+3)
	nativeEndian.PutUint16(b[0:], uint16(4+len(data)))
	nativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func u8(v uint8) []byte   { return []byte{v} }
func u32(v uint32) []byte { return nativeEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return nativeEndian.AppendUint64(nil, v) }

const nested = 1 << 15 // NLA_F_NESTED

func cat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

// Pinned numbers of include/uapi/linux/nbd-netlink.h and nbd.h: they are
// kernel ABI and must never move.
func TestConstants(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"NBD_CMD_CONNECT", int(cmdConnect), 1},
		{"NBD_CMD_DISCONNECT", int(cmdDisconnect), 2},
		{"NBD_CMD_RECONFIGURE", int(cmdReconfigure), 3},
		{"NBD_CMD_STATUS", int(cmdStatus), 5},
		{"NBD_ATTR_INDEX", attrIndex, 1},
		{"NBD_ATTR_SIZE_BYTES", attrSizeBytes, 2},
		{"NBD_ATTR_BLOCK_SIZE_BYTES", attrBlockSizeBytes, 3},
		{"NBD_ATTR_TIMEOUT", attrTimeout, 4},
		{"NBD_ATTR_SERVER_FLAGS", attrServerFlags, 5},
		{"NBD_ATTR_CLIENT_FLAGS", attrClientFlags, 6},
		{"NBD_ATTR_SOCKETS", attrSockets, 7},
		{"NBD_ATTR_DEAD_CONN_TIMEOUT", attrDeadConnTimeout, 8},
		{"NBD_ATTR_DEVICE_LIST", attrDeviceList, 9},
		{"NBD_ATTR_BACKEND_IDENTIFIER", attrBackend, 10},
		{"NBD_CFLAG_DESTROY_ON_DISCONNECT", cflagDestroyOnDisconnect, 1},
		{"NBD_CFLAG_DISCONNECT_ON_CLOSE", cflagDisconnectOnClose, 2},
		{"NBD_FLAG_HAS_FLAGS", int(nbdwire.TransHasFlags), 1 << 0},
		{"NBD_FLAG_READ_ONLY", int(nbdwire.TransReadOnly), 1 << 1},
		{"NBD_FLAG_SEND_FLUSH", int(nbdwire.TransSendFlush), 1 << 2},
		{"NBD_FLAG_SEND_FUA", int(nbdwire.TransSendFUA), 1 << 3},
		{"NBD_FLAG_SEND_TRIM", int(nbdwire.TransSendTrim), 1 << 5},
		{"NBD_FLAG_SEND_WRITE_ZEROES", int(nbdwire.TransSendWriteZeroes), 1 << 6},
		{"NBD_FLAG_CAN_MULTI_CONN", int(nbdwire.TransCanMultiConn), 1 << 8},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

type nopDevice struct{}

func (nopDevice) Submit(r *nbd.Request) { r.Complete(nil) }

func TestConnectGolden(t *testing.T) {
	r := &request{
		index: 3, size: 64 << 20, blockSize: 512, timeout: 150, deadConnTimeout: 60,
		serverFlags: 0x16d, backend: "dst:h:1/x", fds: []int{7, 9},
	}
	got, err := r.encode(cmdConnect)
	if err != nil {
		t.Fatal(err)
	}
	sock := func(fd uint32) []byte { return nla(sockItem|nested, nla(sockFD, u32(fd))) }
	want := cat(
		nla(attrIndex, u32(3)),
		nla(attrSizeBytes, u64(64<<20)),
		nla(attrBlockSizeBytes, u64(512)),
		nla(attrServerFlags, u64(0x16d)),
		nla(attrClientFlags, u64(0)),
		nla(attrTimeout, u64(150)),
		nla(attrDeadConnTimeout, u64(60)),
		nla(attrBackend, []byte("dst:h:1/x\x00")),
		nla(attrSockets|nested, cat(sock(7), sock(9))),
	)
	if !bytes.Equal(got, want) {
		t.Fatalf("CONNECT attributes\n got %x\nwant %x", got, want)
	}

	got, err = r.encode(cmdReconfigure)
	if err != nil {
		t.Fatal(err)
	}
	want = cat(
		nla(attrIndex, u32(3)),
		nla(attrTimeout, u64(150)),
		nla(attrDeadConnTimeout, u64(60)),
		nla(attrBackend, []byte("dst:h:1/x\x00")),
		nla(attrSockets|nested, cat(sock(7), sock(9))),
	)
	if !bytes.Equal(got, want) {
		t.Fatalf("RECONFIGURE attributes\n got %x\nwant %x", got, want)
	}

	// With recheck, a zero timeout is sent, so that a reconfigure clears
	// the one an older dst set.
	r.timeout, r.recheck = 0, true
	got, err = r.encode(cmdReconfigure)
	if err != nil {
		t.Fatal(err)
	}
	want = cat(
		nla(attrIndex, u32(3)),
		nla(attrTimeout, u64(0)),
		nla(attrDeadConnTimeout, u64(60)),
		nla(attrBackend, []byte("dst:h:1/x\x00")),
		nla(attrSockets|nested, cat(sock(7), sock(9))),
	)
	if !bytes.Equal(got, want) {
		t.Fatalf("RECONFIGURE attributes with recheck\n got %x\nwant %x", got, want)
	}
}

func TestResizeGolden(t *testing.T) {
	got, err := encodeResize(3, 2<<30, "dst:h:7700/disk")
	if err != nil {
		t.Fatal(err)
	}
	// NBD_ATTR_INDEX, NBD_ATTR_SIZE_BYTES, NBD_ATTR_BACKEND_IDENTIFIER
	want := cat(nla(1, u32(3)), nla(2, u64(2<<30)), nla(10, []byte("dst:h:7700/disk\x00")))
	if !bytes.Equal(got, want) {
		t.Errorf("resize attributes\n got %x\nwant %x", got, want)
	}
	if _, err := encodeResize(-1, 4096, ""); err == nil {
		t.Error("a resize without a device index encoded")
	}
}

func TestEncodeRefuses(t *testing.T) {
	if _, err := (&request{index: -1, fds: []int{1}}).encode(cmdReconfigure); err == nil {
		t.Error("RECONFIGURE without an index encoded")
	}
	if _, err := (&request{index: 0}).encode(cmdConnect); err == nil {
		t.Error("CONNECT without sockets encoded")
	}
	b, err := (&request{index: -1, fds: []int{4}}).encode(cmdConnect)
	if err != nil {
		t.Fatal(err)
	}
	if nativeEndian.Uint16(b[2:]) == attrIndex {
		t.Error("CONNECT for any device carries an index")
	}
	if b, _ := encodeIndex(-1); len(b) != 0 {
		t.Errorf("STATUS of all devices: %x, want no attributes", b)
	}
	if b, _ := encodeIndex(2); !bytes.Equal(b, nla(attrIndex, u32(2))) {
		t.Errorf("DISCONNECT nbd2: %x", b)
	}
}

func TestDecodeIndex(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []byte
		want int
		ok   bool
	}{
		{"index", nla(attrIndex, u32(5)), 5, true},
		{"among others", cat(nla(attrSizeBytes, u64(1)), nla(attrIndex, u32(0))), 0, true},
		{"missing", nla(attrSizeBytes, u64(1)), 0, false},
		{"short", nla(attrIndex, []byte{1, 0}), 0, false},
		{"truncated", nla(attrIndex, u32(5))[:6], 0, false},
		{"empty", nil, 0, false},
	} {
		got, err := decodeIndex(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("%s: got %d, %v; want %d ok=%v", c.name, got, err, c.want, c.ok)
		}
	}
}

func TestDecodeStatus(t *testing.T) {
	item := func(idx uint32, conn uint8) []byte {
		return nla(deviceItem|nested, cat(nla(deviceIndex, u32(idx)), nla(deviceConnected, u8(conn))))
	}
	in := nla(attrDeviceList|nested, cat(item(0, 1), item(1, 0), item(15, 1)))
	got, err := decodeStatus(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []DeviceStatus{{0, true}, {1, false}, {15, true}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	// The kernel's list also works without NLA_F_NESTED on the items.
	if got, err := decodeStatus(nla(attrDeviceList, nla(deviceItem, nla(deviceIndex, u32(2))))); err != nil || len(got) != 1 || got[0] != (DeviceStatus{2, false}) {
		t.Errorf("un-flagged nesting: %v, %v", got, err)
	}
	for name, bad := range map[string][]byte{
		"no index":        nla(attrDeviceList, nla(deviceItem, nla(deviceConnected, u8(1)))),
		"long connected":  nla(attrDeviceList, nla(deviceItem, cat(nla(deviceIndex, u32(1)), nla(deviceConnected, u32(1))))),
		"truncated item":  nla(attrDeviceList, nla(deviceItem, nla(deviceIndex, u32(1))[:5])),
		"truncated outer": in[:len(in)-3],
	} {
		if got, err := decodeStatus(bad); err == nil {
			t.Errorf("%s: decoded %v", name, got)
		}
	}
}

func TestNewRequest(t *testing.T) {
	e := &nbd.Export{Size: 1 << 30, MinBlockSize: 4096, Flush: true, FUA: true, Trim: true,
		WriteZeroes: true, MultiConn: true, Device: nopDevice{}}
	cfg := &Config{Index: 1, Export: e, Queues: 4, Timeout: 150 * time.Second,
		DeadConnTimeout: 1500 * time.Millisecond}
	r, err := newRequest(cfg, false, true)
	if err != nil {
		t.Fatal(err)
	}
	if r.size != 1<<30 || r.blockSize != 4096 || len(r.fds) != 4 || r.timeout != 150 || r.deadConnTimeout != 2 {
		t.Errorf("request %+v", r)
	}
	// Where the kernel resends at a recheck, no NBD timeout is set.
	if r, err := newRequest(cfg, true, true); err != nil || r.timeout != 0 || !r.recheck {
		t.Errorf("with recheck: %+v, %v", r, err)
	}
	// Unless several sockets on a kernel that can starve one keep it.
	if r, err := newRequest(cfg, true, false); err != nil || r.timeout != 150 || r.recheck {
		t.Errorf("with recheck, 4 sockets, rescuer not fixed: %+v, %v", r, err)
	}
	const want = 1 | 1<<2 | 1<<3 | 1<<5 | 1<<6 | 1<<8
	if r.serverFlags != want {
		t.Errorf("server flags %#x, want %#x", r.serverFlags, want)
	}

	e.MultiConn, e.ReadOnly, e.MinBlockSize = false, true, 0
	r, err = newRequest(&Config{Index: -1, Export: e, Queues: 4}, false, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.fds) != 1 || r.blockSize != 512 || r.serverFlags&2 == 0 || r.timeout != 0 {
		t.Errorf("without multi-conn: %+v", r)
	}

	e.MinBlockSize = 256
	if _, err := newRequest(&Config{Export: e}, false, true); err == nil {
		t.Error("block size 256 accepted")
	}
	if _, err := newRequest(&Config{}, false, true); err == nil {
		t.Error("no export accepted")
	}
}

func TestParsePath(t *testing.T) {
	for in, want := range map[string]int{"/dev/nbd0": 0, "nbd12": 12, "/dev/nbd7": 7} {
		if got, err := ParsePath(in); err != nil || got != want {
			t.Errorf("ParsePath(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"/dev/sda", "/dev/nbd", "/dev/nbd-1", "/dev/nbd01", "/dev/nbd1p1", "nbdx", "/tmp/nbd0"} {
		if got, err := ParsePath(in); err == nil {
			t.Errorf("ParsePath(%q) = %d, want an error", in, got)
		}
	}
	if Path(3) != "/dev/nbd3" {
		t.Error(Path(3))
	}
}

func TestNoDriver(t *testing.T) {
	// On a kernel without the nbd module (this build host) every call must
	// say so; where the driver exists, List must work.
	if _, err := List(); err != nil && !errors.Is(err, ErrNoDriver) {
		t.Logf("List: %v (no netlink here?)", err)
	}
	if ErrNoDriver.Error() != "kernel has no nbd driver: modprobe nbd" {
		t.Errorf("message %q", ErrNoDriver)
	}
}
