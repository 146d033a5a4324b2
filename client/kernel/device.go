package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/internal/rawio"
)

// ErrNoDriver means the running kernel has no nbd generic-netlink family.
var ErrNoDriver = errors.New("kernel has no nbd driver: modprobe nbd")

// Config describes a device to connect or reconfigure.
type Config struct {
	// Index is the N of /dev/nbdN; -1 lets the kernel pick a free device
	// (Connect only).
	Index int
	// Export serves the kernel's requests; its size, logical block size and
	// flags configure the device.
	Export *nbd.Export
	// Queues is the number of sockets (the kernel's hardware queues). Zero
	// means 1. Without MultiConn on the export only 1 is safe: a FLUSH sent
	// on one socket must cover writes sent on the others.
	Queues int
	// Recheck is how long a request may wait for its reply before the
	// kernel looks at it again (the queue's io_timeout), rounded to
	// milliseconds; zero means DefaultRecheck. Where the kernel resends on
	// a look (RequeuesOnRecheck), its NBD timeout is set to zero, so a
	// late reply never costs the socket: a request whose socket has been
	// replaced since it was sent (its process died and a reconfigure
	// handed over new sockets) is resent on the new ones, and any other is
	// left to the engine's own deadline.
	Recheck time.Duration
	// Timeout is the kernel's NBD timeout on kernels that do not resend
	// at a recheck, rounded up to seconds; zero leaves the kernel's
	// default. Keep it longer than the engine's own I/O deadline so the
	// engine fails a request first: on this timeout the kernel declares
	// the socket dead. A request of a process that died waits this long.
	Timeout time.Duration
	// DeadConnTimeout is how long the kernel holds I/O for a reconfigure
	// after the sockets died.
	DeadConnTimeout time.Duration
	// Backend identifies the export, e.g. "dst:HOST:PORT/EXPORT"; the
	// kernel shows it in /sys/block/nbdN/backend and refuses a reconfigure
	// that names another.
	Backend string
	Logger  *slog.Logger
}

// Device is a /dev/nbdN this process serves.
type Device struct {
	Index int
	Path  string

	cfg     Config
	log     *slog.Logger
	conns   []net.Conn
	recheck time.Duration // the queue's io_timeout; 0: the NBD timeout applies
}

// Recheck is how long a request waits before the kernel looks at it and
// resends it if its socket was replaced, or zero where the kernel's NBD
// timeout (Config.Timeout) applies instead.
func (d *Device) Recheck() time.Duration { return d.recheck }

// Path returns the device node of index.
func Path(index int) string { return "/dev/nbd" + strconv.Itoa(index) }

// ParsePath returns N of /dev/nbdN (or nbdN).
func ParsePath(p string) (int, error) {
	s, ok := strings.CutPrefix(strings.TrimPrefix(p, "/dev/"), "nbd")
	n, err := strconv.Atoi(s)
	if !ok || err != nil || n < 0 || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("kernel: %q is not an nbd device (want /dev/nbdN)", p)
	}
	return n, nil
}

// Connect configures a device with fresh sockets.
func Connect(ctx context.Context, cfg *Config) (*Device, error) {
	return setup(ctx, cfg, cmdConnect)
}

// Reconfigure hands new sockets to a device that is still configured but
// whose connections died with the process that served them. The kernel
// resends the I/O it held.
func Reconfigure(ctx context.Context, cfg *Config) (*Device, error) {
	if cfg.Index < 0 {
		return nil, errors.New("kernel: reconfigure needs a device index")
	}
	return setup(ctx, cfg, cmdReconfigure)
}

func setup(ctx context.Context, cfg *Config, cmd command) (*Device, error) {
	safe, _ := SafeSockets()
	req, err := newRequest(cfg, RequeuesOnRecheck(), safe)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ours, theirs, err := socketpairs(req.fds)
	if err != nil {
		return nil, err
	}
	// The kernel takes its own reference to each socket it is given.
	defer closeAll(theirs)
	for i, f := range theirs {
		req.fds[i] = int(f.Fd())
	}
	index, err := execute(ctx, req, cmd)
	if err != nil {
		closeConns(ours)
		return nil, err
	}
	d := &Device{Index: index, Path: Path(index), cfg: *cfg, log: log, conns: ours}
	d.cfg.Index = index
	if req.recheck {
		recheck := cfg.Recheck
		if recheck <= 0 {
			recheck = DefaultRecheck
		}
		if err := setIOTimeout(index, recheck); err != nil {
			log.Warn("requests of a process that dies will wait 30 s to be resent, not "+recheck.String(), "err", err)
			recheck = 30 * time.Second
		}
		d.recheck = recheck
	}
	return d, nil
}

// newRequest builds cfg's netlink request; recheck says whether the kernel
// resends at a recheck (RequeuesOnRecheck), safeSockets whether it may be
// given several sockets (SafeSockets).
func newRequest(cfg *Config, recheck, safeSockets bool) (*request, error) {
	e := cfg.Export
	if e == nil || e.Device == nil {
		return nil, errors.New("kernel: no export to serve")
	}
	queues := max(cfg.Queues, 1)
	if queues > 1 && !e.MultiConn {
		queues = 1
	}
	bs := uint64(e.MinBlockSize)
	if bs == 0 {
		bs = 512
	}
	if bs < 512 || bs > uint64(os.Getpagesize()) || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("kernel: block size %d is not a power of two from 512 to the page size", bs)
	}
	r := &request{
		index:           cfg.Index,
		size:            e.Size,
		blockSize:       bs,
		timeout:         seconds(cfg.Timeout),
		deadConnTimeout: seconds(cfg.DeadConnTimeout),
		serverFlags:     uint64(e.TransmissionFlags()),
		backend:         cfg.Backend,
		fds:             make([]int, queues),
	}
	// Several sockets where the kernel can starve one's receiver keep the
	// NBD timeout: it is what ends a starved socket's wait (rescuer.go).
	if recheck && (queues == 1 || safeSockets) {
		r.timeout, r.recheck = 0, true
	}
	return r, nil
}

// DefaultRecheck is Config.Recheck's default.
const DefaultRecheck = 5 * time.Second

// RequeuesOnRecheck reports whether the running kernel's nbd driver, with
// no NBD timeout set, resends a timed-out request whose socket was
// replaced rather than only logging it ("Possible stuck request"). Shown
// in the QEMU guest on Debian's 6.1 (tests/vm TestVMAttachKill); older
// kernels keep an NBD timeout (Config.Timeout).
func RequeuesOnRecheck() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	return atLeast(unix.ByteSliceToString(u.Release[:]), 6, 1)
}

// setIOTimeout sets how long the block layer lets a request of device
// index wait before the driver's timeout handler sees it. A connect or
// reconfigure resets it to 30 s, so it is set after each.
func setIOTimeout(index int, d time.Duration) error {
	ms := max(d.Milliseconds(), 1)
	p := fmt.Sprintf("/sys/block/nbd%d/queue/io_timeout", index)
	if err := os.WriteFile(p, []byte(strconv.FormatInt(ms, 10)), 0); err != nil {
		return fmt.Errorf("kernel: setting the request timeout: %w", err)
	}
	return nil
}

// seconds rounds d up: a timeout must never shrink to zero, which means
// none at all.
func seconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Second - 1) / time.Second)
}

// socketpairs makes len(fds) connected pairs: ours become net.Conns,
// theirs stay files for the kernel.
func socketpairs(fds []int) (ours []net.Conn, theirs []*os.File, err error) {
	for range fds {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			closeConns(ours)
			closeAll(theirs)
			return nil, nil, fmt.Errorf("kernel: socketpair: %w", err)
		}
		// The kernel sends its requests, a WRITE's data included, on
		// its end; ours gets the same in serveTransmission. If it cannot
		// grow, the default still works, only with more wake-ups.
		_ = rawio.GrowSendBufferFd(p[1], nbd.SendBuffer)
		theirs = append(theirs, os.NewFile(uintptr(p[1]), "nbd-kernel"))
		f := os.NewFile(uintptr(p[0]), "nbd-serve")
		c, err := net.FileConn(f)
		f.Close() // FileConn dups it
		if err != nil {
			closeConns(ours)
			closeAll(theirs)
			return nil, nil, fmt.Errorf("kernel: socketpair: %w", err)
		}
		ours = append(ours, c)
	}
	return ours, theirs, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func closeConns(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// execute sends a CONNECT or RECONFIGURE and returns the device index.
func execute(ctx context.Context, req *request, cmd command) (int, error) {
	data, err := req.encode(cmd)
	if err != nil {
		return 0, err
	}
	c, fam, err := dial(ctx)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if cmd == cmdReconfigure {
		if _, err := c.Execute(message(cmd, data), fam, netlink.Request|netlink.Acknowledge); err != nil {
			return 0, fmt.Errorf("kernel: reconfiguring %s: %w", Path(req.index), explainErrno(err))
		}
		return req.index, nil
	}
	msgs, err := c.Execute(message(cmd, data), fam, netlink.Request)
	if err != nil {
		if req.index >= 0 {
			return 0, fmt.Errorf("kernel: connecting %s: %w", Path(req.index), explainErrno(err))
		}
		return 0, fmt.Errorf("kernel: connecting a free nbd device: %w", explainErrno(err))
	}
	if len(msgs) == 0 {
		return 0, errors.New("kernel: CONNECT got no reply")
	}
	return decodeIndex(msgs[0].Data)
}

// explainErrno adds what the nbd driver means by its usual refusals.
func explainErrno(err error) error {
	switch {
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("device is in use (already connected): %w", err)
	case errors.Is(err, unix.ENOSPC):
		return fmt.Errorf("device has no dead connection to replace: %w", err)
	}
	return err
}

// dial opens a generic netlink socket and resolves the nbd family; the
// kernel loads the nbd module on that lookup where it can.
func dial(ctx context.Context) (*genetlink.Conn, uint16, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, 0, fmt.Errorf("kernel: generic netlink: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	f, err := c.GetFamily(familyName)
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, 0, ErrNoDriver
		}
		return nil, 0, fmt.Errorf("kernel: looking up the nbd netlink family: %w", err)
	}
	return c, f.ID, nil
}

// Resize sets the capacity of a connected /dev/nbdN to size bytes: a
// RECONFIGURE with only a size (Linux 5.3 and later). The kernel tells udev
// (a change uevent with RESIZE=1), and a file system on the device can
// then be grown (resize2fs, xfs_growfs). backend is the identifier the
// device was connected with (Config.Backend).
func Resize(ctx context.Context, index int, size uint64, backend string) error {
	data, err := encodeResize(index, size, backend)
	if err != nil {
		return err
	}
	c, fam, err := dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Execute(message(cmdReconfigure, data), fam, netlink.Request|netlink.Acknowledge); err != nil {
		return fmt.Errorf("kernel: resizing %s to %d bytes: %w", Path(index), size, err)
	}
	return nil
}

// Disconnect disconnects /dev/nbdN: the kernel sends NBD_CMD_DISC on each
// live socket, shuts them down and fails what is still queued.
func Disconnect(index int) error {
	data, err := encodeIndex(index)
	if err != nil {
		return err
	}
	c, fam, err := dial(context.Background())
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Execute(message(cmdDisconnect, data), fam, netlink.Request|netlink.Acknowledge); err != nil {
		return fmt.Errorf("kernel: disconnecting %s: %w", Path(index), err)
	}
	return nil
}

// Status reports one device.
func Status(index int) (DeviceStatus, error) {
	if index < 0 {
		return DeviceStatus{}, fmt.Errorf("kernel: status of device %d", index)
	}
	ds, err := status(index)
	if err != nil {
		return DeviceStatus{}, err
	}
	for _, d := range ds {
		if d.Index == index {
			return d, nil
		}
	}
	return DeviceStatus{}, fmt.Errorf("kernel: %s: %w", Path(index), os.ErrNotExist)
}

// List reports every nbd device the kernel has.
func List() ([]DeviceStatus, error) { return status(-1) }

func status(index int) ([]DeviceStatus, error) {
	data, err := encodeIndex(index)
	if err != nil {
		return nil, err
	}
	c, fam, err := dial(context.Background())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	msgs, err := c.Execute(message(cmdStatus, data), fam, netlink.Request)
	if err != nil {
		return nil, fmt.Errorf("kernel: nbd status: %w", err)
	}
	var out []DeviceStatus
	for _, m := range msgs {
		ds, err := decodeStatus(m.Data)
		if err != nil {
			return nil, err
		}
		out = append(out, ds...)
	}
	return out, nil
}

// Serve serves every socket of d until the device is disconnected (by
// Disconnect from any process: nil), a socket fails (its error; the kernel
// then waits DeadConnTimeout for a reconfigure), or ctx is done. When ctx
// is done Serve disconnects the device itself and returns nil once the
// kernel has closed the sockets: a clean detach.
func (d *Device) Serve(ctx context.Context) error {
	// The engine gets its own context: cancelling ctx must first tell the
	// kernel, which then ends each socket with NBD_CMD_DISC.
	sctx, stop := context.WithCancel(context.Background())
	defer stop()
	errc := make(chan error, len(d.conns))
	var wg sync.WaitGroup
	for _, c := range d.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- nbd.ServeTransmission(sctx, c, d.cfg.Export, d.log)
		}()
	}
	var first error
	detached := false
	select {
	case first = <-errc:
		detached = first == nil || !d.connected()
	case <-ctx.Done():
		if err := Disconnect(d.Index); err != nil {
			d.log.Warn("kernel: disconnect failed; closing the sockets", "device", d.Path, "err", err)
		}
		detached = true
	}
	if !detached {
		stop() // a socket failed: end the others too, the process restarts
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		stop()
		<-done
	}
	if detached {
		return nil
	}
	return fmt.Errorf("kernel: serving %s: %w", d.Path, first)
}

// connected asks the kernel whether d still has a configuration.
func (d *Device) connected() bool {
	s, err := Status(d.Index)
	return err != nil || s.Connected
}

// Disconnect disconnects d; Serve then returns nil.
func (d *Device) Disconnect() error { return Disconnect(d.Index) }

// Close closes this process's ends of the sockets without telling the
// kernel, as a crash would: the device waits for a reconfigure.
func (d *Device) Close() error {
	closeConns(d.conns)
	return nil
}
