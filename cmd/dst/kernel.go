package main

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/dstproject/dst/client"
	"github.com/dstproject/dst/client/kernel"
	"github.com/dstproject/dst/internal/sdnotify"
	"github.com/dstproject/dst/wire"
)

// kernelTimeoutMargin is how much longer than --io-timeout the kernel waits
// for a request on kernels that need an NBD timeout (before 6.1; see
// kernel.RequeuesOnRecheck): the engine must fail a request first, because
// on its own timeout the kernel declares the socket dead.
const kernelTimeoutMargin = 30 * time.Second

// kernelOptions is what attach needs to serve a /dev/nbdN.
type kernelOptions struct {
	index           int // -1: --device auto
	queues          int
	queuesAsked     bool // --queues was given, not defaulted
	timeout         time.Duration
	deadConnTimeout time.Duration
	reconfigure     bool   // the device waits for us after a crash
	resume          string // then: the attachment id the crashed attach used, hex
	server, export  string // for the state file and the backend identifier
	name            string // for dst status; empty: the device's name
	startStatus     func(name, device string)
}

func newKernelOptions(device string, queues int, ioTimeout, deadConn time.Duration) (*kernelOptions, error) {
	k := &kernelOptions{index: -1, queues: queues, queuesAsked: queues != 0, deadConnTimeout: deadConn}
	if device != "auto" {
		i, err := kernel.ParsePath(device)
		if err != nil {
			return nil, usageError{err}
		}
		k.index = i
	}
	if k.queues == 0 {
		k.queues = defaultQueues()
	}
	if k.queues < 0 || k.queues > 64 {
		return nil, usagef("--queues %d: want 1 to 64", queues)
	}
	if ioTimeout > 0 {
		k.timeout = ioTimeout + kernelTimeoutMargin
	}
	if deadConn < 0 {
		return nil, usagef("--dead-conn-timeout must not be negative")
	}
	return k, nil
}

// defaultQueues is the number of kernel sockets a device gets when
// --queues is not given: one per CPU up to 4 where the kernel's nbd
// receive workers cannot starve each other (kernel.SafeSockets), one
// elsewhere. Either way the queue connections behind the device carry
// requests in parallel.
func defaultQueues() int {
	if safe, _ := kernel.SafeSockets(); safe {
		return min(runtime.NumCPU(), 4)
	}
	return 1
}

// kernelTimeoutAttr says how the kernel treats a request without a reply:
// rechecked (and resent if its socket was replaced) or timed out.
func kernelTimeoutAttr(dev *kernel.Device, timeout time.Duration) slog.Attr {
	if r := dev.Recheck(); r > 0 {
		return slog.Duration("kernel_recheck", r)
	}
	return slog.Duration("kernel_timeout", timeout)
}

func (k *kernelOptions) backend() string { return "dst:" + k.server + "/" + k.export }

// plan decides between connecting and reconfiguring a named device before
// anything is dialed (kernel.Decide). A reconfigure keeps the socket count
// the device was connected with; a different --queues is logged and
// ignored.
func (k *kernelOptions) plan(log *slog.Logger, server, export string) error {
	k.server, k.export = server, export
	if _, err := kernel.List(); errors.Is(err, kernel.ErrNoDriver) {
		loadDriver()
	}
	if k.index < 0 {
		return nil
	}
	st, err := kernel.Status(k.index)
	if errors.Is(err, os.ErrNotExist) {
		return nil // the kernel creates it on connect
	}
	if err != nil {
		return err
	}
	var saved *kernel.State
	var readErr error
	if st.Connected {
		saved, readErr = states().Read(k.index)
	}
	p, err := kernel.Decide(k.index, st.Connected, saved, readErr,
		kernel.Want{Server: server, Export: export, Queues: k.queues}, (*kernel.State).Alive)
	if err != nil {
		return err
	}
	if p.Queues != k.queues && k.queuesAsked {
		log.Warn("the device keeps the sockets it was connected with", "device", kernel.Path(k.index),
			"queues", p.Queues, "asked", k.queues)
	}
	k.reconfigure, k.queues = p.Reconfigure, p.Queues
	if k.reconfigure && saved != nil {
		k.resume = saved.Attachment
	}
	return nil
}

// resumeID is the attachment a takeover of the device continues: the
// crashed attach's, so that the server keeps its writer lease and fences
// its old sessions by epoch. Zero for a new attachment (and for k nil).
func (k *kernelOptions) resumeID() wire.Identity {
	var id wire.Identity
	if k == nil || k.resume == "" {
		return id
	}
	if b, err := hex.DecodeString(k.resume); err == nil && len(b) == len(id) {
		copy(id[:], b)
	}
	return id
}

// loadDriver loads the nbd module where the kernel did not on the netlink
// family lookup (its modprobe may not know the family alias). Failure is
// left for the next netlink call to report.
func loadDriver() {
	if p, err := exec.LookPath("modprobe"); err == nil {
		exec.Command(p, "nbd").Run()
	}
}

// serveKernel hands the attachment to the kernel and serves it until the
// device is detached (nil), a signal asks for a clean detach (nil), or the
// connection to the server or a socket is lost (an error; the device then
// waits --dead-conn-timeout for a restarted dst attach).
func serveKernel(ctx context.Context, log *slog.Logger, a *client.Attachment, cfg *client.Config, k *kernelOptions) error {
	kc := &kernel.Config{
		Index:           k.index,
		Export:          a.NBDExport(),
		Queues:          k.queues,
		Timeout:         k.timeout,
		DeadConnTimeout: k.deadConnTimeout,
		Backend:         k.backend(),
		Logger:          log,
	}
	if safe, rel := kernel.SafeSockets(); !safe && k.queues > 1 {
		log.Warn("more than one socket per device can hang a fresh device on this kernel: the nbd driver's "+
			"receive work for one socket may wait behind another's until the kernel times out; "+
			"--queues 1 avoids it, and dst's --connections still carry requests in parallel",
			"kernel", rel, "queues", k.queues)
	}
	connect := kernel.Connect
	if k.reconfigure {
		connect = kernel.Reconfigure
	}
	dev, err := connect(ctx, kc)
	if err != nil {
		return err
	}
	st := &kernel.State{Device: dev.Path, Server: cfg.Server, Export: k.export, PID: os.Getpid(),
		Queues: k.queues, Started: time.Now().UTC().Format(time.RFC3339),
		Name: cmp.Or(k.name, k.export), Identity: a.Export().Identity.String(), Attachment: a.ID().String()}
	if err := states().Write(dev.Index, st); err != nil {
		log.Warn("cannot record the device; dst list and udev will not know it", "err", err)
	} else if err := triggerUdev(dev.Index); err != nil {
		log.Debug("no udev change event", "err", err)
	}
	if k.index < 0 {
		fmt.Println(dev.Path)
	}
	e := a.Export()
	name := k.name
	if name == "" {
		name = filepath.Base(dev.Path)
	}
	setLogContext(slog.String("attachment", name), slog.String("export", e.Name), slog.String("device", dev.Path))
	log.Info("ready", "device", dev.Path, "reconfigured", k.reconfigure, "export", e.Name, "size", e.Size,
		"flags", e.Flags.String(), "server", cfg.Server, "queues", k.queues,
		kernelTimeoutAttr(dev, k.timeout), "dead_conn_timeout", k.deadConnTimeout)

	notify(log, sdnotify.Ready)
	notify(log, func() error { return sdnotify.Status(fmt.Sprintf("attached %s at %s", e.Name, dev.Path)) })
	go reportFailure(ctx, log, a)
	go followSize(ctx, log, a, dev.Index, kc.Export.Size, k)
	k.startStatus(name, dev.Path)
	err = dev.Serve(ctx)
	if err != nil {
		return fmt.Errorf("%w; %s waits %v for dst attach to restart", err, dev.Path, k.deadConnTimeout)
	}
	states().Remove(dev.Index, os.Getpid())
	triggerUdev(dev.Index) // its /dev/dst links go
	log.Info("detached", "device", dev.Path)
	return nil
}

// followSize keeps the device's capacity at the export's size as it grows
// (client.Attachment.Resized). The device starts at size, or, when it was
// taken over (reconfigured), at whatever it was connected with: then it is
// resized at once in case the export grew meanwhile.
func followSize(ctx context.Context, log *slog.Logger, a *client.Attachment, index int, size uint64, k *kernelOptions) {
	reconfigured := k.reconfigure
	set := func() {
		n := a.Size()
		if n == size && !reconfigured {
			return
		}
		if err := kernel.Resize(ctx, index, n, k.backend()); err != nil {
			log.Error("the export grew but the device did not", "device", kernel.Path(index), "size", n, "err", err)
			return
		}
		if n != size {
			log.Info("device resized", "device", kernel.Path(index), "from", size, "to", n)
		}
		size, reconfigured = n, false
	}
	set()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.Resized():
			set()
		}
	}
}

// states is where device records are kept (kernel.Store): /run/dst, or
// DST_RUN_DIR (tests).
func states() kernel.Store { return kernel.Store{Dir: envOr("DST_RUN_DIR", "/run/dst")} }
