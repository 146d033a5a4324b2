package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dstproject/dst/client"
	"github.com/dstproject/dst/client/kernel"
	"github.com/dstproject/dst/internal/sdnotify"
)

// kernelTimeoutMargin is how much longer than --io-timeout the kernel waits
// for a request: the engine must fail a request first, because on its own
// timeout the kernel declares the socket dead.
const kernelTimeoutMargin = 30 * time.Second

// kernelOptions is what attach needs to serve a /dev/nbdN.
type kernelOptions struct {
	index           int // -1: --device auto
	queues          int
	timeout         time.Duration
	deadConnTimeout time.Duration
	reconfigure     bool   // the device waits for us after a crash
	server, export  string // for the state file and the backend identifier
}

func newKernelOptions(device string, queues int, ioTimeout, deadConn time.Duration) (*kernelOptions, error) {
	k := &kernelOptions{index: -1, queues: queues, deadConnTimeout: deadConn}
	if device != "auto" {
		i, err := kernel.ParsePath(device)
		if err != nil {
			return nil, usageError{err}
		}
		k.index = i
	}
	if k.queues == 0 {
		k.queues = min(runtime.NumCPU(), 4)
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

func (k *kernelOptions) backend() string { return "dst:" + k.server + "/" + k.export }

// plan decides between connecting and reconfiguring a named device before
// anything is dialed: a device still configured but served by nobody is
// one whose dst attach died, and gets its sockets back; any other
// configured device is refused.
func (k *kernelOptions) plan(server, export string) error {
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
	if !st.Connected {
		return nil
	}
	path := kernel.Path(k.index)
	s, err := readState(k.index)
	if err != nil {
		return fmt.Errorf("%s is attached by another program (no dst state: %v)", path, err)
	}
	if s.alive() {
		return fmt.Errorf("%s is served by dst attach (pid %d); run dst detach %s first", path, s.PID, path)
	}
	if s.Server != server || s.Export != export {
		return fmt.Errorf("%s waits for %s on %s, not %s on %s; run dst detach %s first",
			path, s.Export, s.Server, export, server, path)
	}
	k.reconfigure = true
	return nil
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
	connect := kernel.Connect
	if k.reconfigure {
		connect = kernel.Reconfigure
	}
	dev, err := connect(ctx, kc)
	if err != nil {
		return err
	}
	st := &deviceState{Device: dev.Path, Server: cfg.Server, Export: k.export, PID: os.Getpid(),
		Queues: k.queues, Started: time.Now().UTC().Format(time.RFC3339)}
	if err := writeState(dev.Index, st); err != nil {
		log.Warn("cannot record the device; dst list will not know it", "err", err)
	}
	if k.index < 0 {
		fmt.Println(dev.Path)
	}
	e := a.Export()
	log.Info("ready", "device", dev.Path, "reconfigured", k.reconfigure, "export", e.Name, "size", e.Size,
		"flags", e.Flags.String(), "server", cfg.Server, "queues", k.queues,
		"kernel_timeout", k.timeout, "dead_conn_timeout", k.deadConnTimeout)

	notify(log, sdnotify.Ready)
	notify(log, func() error { return sdnotify.Status(fmt.Sprintf("attached %s at %s", e.Name, dev.Path)) })
	go reportFailure(ctx, log, a)
	err = dev.Serve(ctx)
	if err != nil {
		return fmt.Errorf("%w; %s waits %v for dst attach to restart", err, dev.Path, k.deadConnTimeout)
	}
	removeState(dev.Index, os.Getpid())
	log.Info("detached", "device", dev.Path)
	return nil
}

// deviceState is /run/dst/nbdN.json: what dst list shows and what a
// restarted attach checks before reconfiguring.
type deviceState struct {
	Device  string `json:"device"`
	Server  string `json:"server"`
	Export  string `json:"export"`
	PID     int    `json:"pid"`
	Queues  int    `json:"queues"`
	Started string `json:"started"`
}

// stateDir holds the state files; DST_RUN_DIR moves it (tests).
func stateDir() string { return envOr("DST_RUN_DIR", "/run/dst") }

func statePath(index int) string {
	return filepath.Join(stateDir(), "nbd"+strconv.Itoa(index)+".json")
}

func writeState(index int, s *deviceState) error {
	if err := os.MkdirAll(stateDir(), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(index) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(index))
}

func readState(index int) (*deviceState, error) {
	b, err := os.ReadFile(statePath(index))
	if err != nil {
		return nil, err
	}
	var s deviceState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", statePath(index), err)
	}
	return &s, nil
}

// removeState removes the state file if it still names pid (0: any).
func removeState(index, pid int) {
	if s, err := readState(index); err == nil && (pid == 0 || s.PID == pid) {
		os.Remove(statePath(index))
	}
}

// alive reports whether the recorded process still runs and is a dst:
// after a reboot or a crash its pid may belong to something else.
func (s *deviceState) alive() bool {
	if s.PID <= 0 {
		return false
	}
	if err := syscall.Kill(s.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(s.PID) + "/comm")
	return err != nil || strings.HasPrefix(strings.TrimSpace(string(comm)), "dst")
}
