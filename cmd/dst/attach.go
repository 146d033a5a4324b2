package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dstproject/dst/client"
	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/metrics"
	"github.com/dstproject/dst/internal/sdnotify"
	"golang.org/x/sys/unix"
)

// clientFlags are the flags every command that dials a server shares.
type clientFlags struct {
	key       *string
	serverKey *string
	cipher    *string
	timeout   *time.Duration
	keyMode   func(*slog.Logger) crypto.KeyModePolicy
}

func addClientFlags(fs *flag.FlagSet) *clientFlags {
	return &clientFlags{
		key: fs.String("key", "", "this client's private key `FILE`"),
		serverKey: fs.String("server-key", "", "the server's public `KEY` (base64), or @FILE; "+
			"several, comma-separated, while the server rotates its key"),
		cipher:  fs.String("cipher", "auto", "channel cipher: auto, aes-256-gcm, chacha20-poly1305"),
		timeout: fs.Duration("connect-timeout", 15*time.Second, "bound on connecting, handshake and autoconfiguration"),
		keyMode: keyModeFlag(fs),
	}
}

func (f *clientFlags) config(addr string, log *slog.Logger) (*client.Config, error) {
	if *f.key == "" {
		return nil, usagef("no client key: give --key FILE (make one with: dst keygen -o FILE)")
	}
	if *f.serverKey == "" {
		return nil, usagef("no server key: give --server-key KEY or @FILE (the server logs its public key at start)")
	}
	k, err := crypto.LoadPrivateKey(*f.key, f.keyMode(log))
	if err != nil {
		return nil, err
	}
	warnUnclamped(log, k, *f.key)
	var pins []crypto.PublicKey
	for _, s := range strings.Split(*f.serverKey, ",") {
		sk, err := crypto.LoadPublicKey(strings.TrimSpace(s))
		if err != nil {
			return nil, usageError{fmt.Errorf("--server-key: %w", err)}
		}
		pins = append(pins, sk)
	}
	c, err := crypto.ParseCipher(*f.cipher)
	if err != nil {
		return nil, usageError{err}
	}
	if _, _, err := net.SplitHostPort(addr); err != nil && addr != "auto" {
		return nil, usagef("server address %q: want HOST:PORT, or auto to find the server holding --server-key on the local network", addr)
	}
	return &client.Config{
		Server:         addr,
		PrivateKey:     k,
		ServerKey:      pins[0],
		MoreServerKeys: pins[1:],
		Cipher:         c,
		DialTimeout:    *f.timeout,
		Logger:         log,
	}, nil
}

func cmdAttach(ctx context.Context, args []string) error {
	fs := newFlagSet("attach", "[flags] HOST:PORT EXPORT {/dev/nbdN | --device auto | --nbd-listen unix:PATH|tcp:HOST:PORT}")
	cf := addClientFlags(fs)
	listen := fs.String("nbd-listen", "", "serve the export as an NBD server on `unix:PATH or tcp:HOST:PORT`")
	device := fs.String("device", "", "attach the export as kernel block device `/dev/nbdN`, or auto for a free one (printed on stdout)")
	conns := fs.Int("connections", client.DefaultConnections(),
		"queue connections to the server, each a TCP connection with its own encrypted channel\n(spreads crypto over cores); default two per CPU, up to 4")
	queues := fs.Int("queues", 0, "with a kernel device: its sockets (hardware queues); default 1 on kernels before 7.0\n(see README, Known issues), else the number of CPUs up to 4")
	ioTimeout := fs.Duration("io-timeout", 120*time.Second, "fail a request with EIO when it has no reply after this long; 0 waits forever")
	keepalive := fs.Duration("keepalive", time.Second, "how often each connection to the server is probed")
	keepaliveTimeout := fs.Duration("keepalive-timeout", 5*time.Second, "declare a connection dead and redial when it has not answered for this long")
	replay := sizeFlag(256 << 20)
	fs.Var(&replay, "replay-buffer", "bound on acknowledged, unflushed write `SIZE` kept to replay to a restarted server (e.g. 64MiB, 1GiB; 0 turns replay off)")
	procs := fs.Int("procs", 0, "`N` threads run attach's Go code at once (GOMAXPROCS); default 1, and 2 while bulk\ntransfers run (64 KiB requests and more, several in flight), or $GOMAXPROCS if set")
	busyPoll := fs.Duration("busy-poll", 0, "poll the sockets for up to `DURATION` (e.g. 50us) before sleeping while requests come\none at a time: faster one-at-a-time I/O for a CPU kept busy meanwhile; default 0, off")
	deadConn := fs.Duration("dead-conn-timeout", 60*time.Second, "with a device: how long the kernel holds I/O for a restarted dst attach")
	metricsListen := fs.String("metrics-listen", "", "answer Prometheus scrapes at `HOST:PORT`/metrics (default off)")
	name := fs.String("name", "", "`NAME` of this attachment for dst status (its socket is <run dir>/attach/NAME.sock);\ndefault the device's name (nbd0), or with --nbd-listen the export's")
	readOnly := fs.Bool("read-only", false, "attach for reading only: no writer lease is taken, so this may join an export\nanother attachment writes; writes fail")
	takeOver := fs.Bool("take-over", false, "take the export's writer lease from the attachment holding it (the server fences\nthat one first); only when that client is gone for good")
	logger := logFlag(fs)
	pos, err := parse(fs, args, 2, 3)
	if err != nil {
		return err
	}
	if len(pos) == 3 {
		if *device != "" {
			return usagef("the device is given twice: %s and --device %s", pos[2], *device)
		}
		*device = pos[2]
	}
	switch {
	case *device == "" && *listen == "":
		return usagef("nowhere to serve the export: give a device (/dev/nbdN or --device auto) or --nbd-listen unix:PATH|tcp:HOST:PORT")
	case *device != "" && *listen != "":
		return usagef("give either a device or --nbd-listen, not both")
	}
	if *name != "" && !validName.MatchString(*name) {
		return usagef("--name %q: want letters, digits, '.', '_' or '-', at most 64, starting with a letter or digit", *name)
	}
	n, bulkProcs, err := attachProcs(*procs, os.Getenv("GOMAXPROCS"), runtime.NumCPU())
	if err != nil {
		return err
	}
	runtime.GOMAXPROCS(n)
	if *busyPoll < 0 || *busyPoll > maxBusyPoll {
		return usagef("--busy-poll %v: give 0 (off) to %v", *busyPoll, maxBusyPoll)
	}
	if *conns < 1 || *conns > 64 {
		return usagef("--connections %d: give 1 to 64", *conns)
	}
	var kopt *kernelOptions
	if *device != "" {
		if kopt, err = newKernelOptions(*device, *queues, *ioTimeout, *deadConn); err != nil {
			return err
		}
	} else if *queues != 0 {
		return usagef("--queues sets a kernel device's sockets; with --nbd-listen, give --connections")
	}
	log := logger()
	reservePayloadMemory(log)
	var bulkLoad func(on bool)
	if bulkProcs > 0 {
		bulkLoad = func(on bool) {
			p := n
			if on {
				p = bulkProcs
			}
			runtime.GOMAXPROCS(p)
			log.Debug("bulk transfers", "on", on, "procs", p)
		}
	}
	cfg, err := cf.config(pos[0], log)
	if err != nil {
		return err
	}
	if kopt != nil {
		if err := kopt.plan(log, pos[0], pos[1]); err != nil {
			return err
		}
	}
	var network, address string
	if *listen != "" {
		if network, address, err = parseListen(*listen); err != nil {
			return usageError{err}
		}
	}

	// Bound before attaching, so that a taken port is an error at once.
	var ml net.Listener
	if *metricsListen != "" {
		if ml, err = net.Listen("tcp", *metricsListen); err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		defer ml.Close()
	}

	var a *client.Attachment
	err = eachServer(ctx, log, cfg, func(cfg *client.Config) (err error) {
		a, err = client.Attach(ctx, &client.AttachConfig{
			Config:            *cfg,
			Export:            pos[1],
			Connections:       *conns,
			IOTimeout:         *ioTimeout,
			KeepaliveInterval: *keepalive,
			KeepaliveTimeout:  *keepaliveTimeout,
			ReplayBuffer:      replay.replayBuffer(),
			ReadOnly:          *readOnly,
			TakeOver:          *takeOver,
			Resume:            kopt.resumeID(),
			BusyPoll:          *busyPoll,
			BulkLoad:          bulkLoad,
		})
		return err
	})
	if err != nil {
		return explain(err, cfg)
	}
	// The status socket outlives the attachment by a moment, so that
	// dst events sees it close.
	stopStatus := func() {}
	startStatus := func(name, device string) {
		stopStatus = serveStatus(log, name, device, a)
		if ml == nil {
			return
		}
		log.Info("metrics", "addr", ml.Addr().String())
		go func() {
			if err := metrics.Serve(ctx, ml, metrics.NewClient(a, name)); err != nil {
				log.Error("metrics endpoint failed", "err", err)
			}
		}()
	}
	defer func() {
		a.Close()
		stopStatus()
		st := a.Stats()
		log.Info("transaction stats", "reconnects", st.Reconnects, "resent", st.Resent, "replayed", st.Replayed,
			"timeouts", st.Timeouts, "checksum_retries", st.ChecksumRetries)
	}()
	if kopt != nil {
		kopt.name, kopt.startStatus = *name, startStatus
		return serveKernel(ctx, log, a, cfg, kopt)
	}

	l, err := listenNBD(network, address)
	if err != nil {
		return err
	}
	defer l.Close()
	e := a.Export()
	if *name == "" {
		*name = e.Name
	}
	setLogContext(slog.String("attachment", *name), slog.String("export", e.Name), slog.String("nbd", *listen))
	log.Info("ready", "export", e.Name, "size", e.Size, "flags", e.Flags.String(),
		"server", cfg.Server, "cipher", a.Cipher().String(), "nbd", *listen)
	srv := &nbd.Server{Exports: []*nbd.Export{a.NBDExport()}, Logger: log}
	notify(log, sdnotify.Ready)
	notify(log, func() error { return sdnotify.Status(fmt.Sprintf("attached %s at %s", e.Name, *listen)) })
	go reportFailure(ctx, log, a)
	startStatus(*name, *listen)
	return srv.Serve(ctx, l)
}

// reportFailure logs once if the attachment fails for good (the disk
// behind the export name changed). attach keeps serving then, failing
// every request with EIO: exiting would let a restart attach the other
// disk under whatever is mounted on this one.
func reportFailure(ctx context.Context, log *slog.Logger, a *client.Attachment) {
	select {
	case <-a.Lost():
		log.Error("the attachment has failed for good: every request now fails with EIO; "+
			"detach, then check what happened to the export on the server", "err", a.Err())
	case <-ctx.Done():
	}
}

// parseListen splits unix:PATH or tcp:HOST:PORT.
func parseListen(s string) (network, address string, err error) {
	network, address, ok := strings.Cut(s, ":")
	if !ok || address == "" || (network != "unix" && network != "tcp") {
		return "", "", fmt.Errorf("--nbd-listen %q: want unix:PATH or tcp:HOST:PORT", s)
	}
	return network, address, nil
}

// listenNBD listens on the NBD socket, replacing a stale unix socket that
// nobody answers on.
func listenNBD(network, address string) (net.Listener, error) {
	if network == "tcp" {
		l, err := net.Listen(network, address)
		if err != nil {
			return nil, fmt.Errorf("--nbd-listen: %w", err)
		}
		return l, nil
	}
	if fi, err := os.Lstat(address); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("--nbd-listen: %s exists and is not a socket", address)
		}
		if c, err := net.Dial("unix", address); err == nil {
			c.Close()
			return nil, fmt.Errorf("--nbd-listen: %s is in use by another process", address)
		}
		os.Remove(address)
	}
	l, err := listenPrivateUnix(address)
	if err != nil {
		return nil, fmt.Errorf("--nbd-listen: %w", err)
	}
	return l, nil
}

// listenPrivateUnix listens on a unix socket at path that only this user
// can connect to, from the moment path exists: the socket is the disk, with
// no authentication of its own. bind(2) creates the socket under the
// umask, and a chmod afterwards leaves a moment in which another user can
// connect and keep the connection. So the socket is bound in a new
// directory of mode 0700 next to path, where nobody else can reach it,
// given mode 0600 there, and only then linked to path. link(2), unlike
// rename(2), fails if something appeared at path meanwhile, as bind would.
func listenPrivateUnix(path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".dst-nbd-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) > len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("socket path %s is too long: it is first bound as %s, and a unix socket path has at most %d bytes",
			path, tmp, len(unix.RawSockaddrUnix{}.Path))
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false) // the socket lives at path, not tmp
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	if err := os.Link(tmp, path); err != nil {
		l.Close()
		return nil, err
	}
	return &unixListener{UnixListener: l, path: path}, nil
}

// unixListener is a unix socket listener whose socket was moved to path;
// Close removes it there.
type unixListener struct {
	*net.UnixListener
	path   string
	unlink sync.Once
}

func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	l.unlink.Do(func() { os.Remove(l.path) })
	return err
}

// explain turns common attach failures into what the user should do.
func explain(err error, cfg *client.Config) error {
	switch {
	case errors.Is(err, crypto.ErrHandshake):
		return fmt.Errorf("cannot complete the handshake with %s.\n"+
			"  The server may be overloaded or not reachable, or may not accept this client's key; its log says which.\n"+
			"  If it does not authorize this client's key %s: add that line to its authorized keys file;\n"+
			"  if its key is not %s: check --server-key against the key the server logs at start.\n"+
			"  detail: %w", cfg.Server, cfg.PrivateKey.Public(), cfg.ServerKey, err)
	}
	return err
}

// maxBusyPoll bounds --busy-poll: a wake-up costs tens of microseconds,
// so polling for longer than this only burns the CPU.
const maxBusyPoll = 10 * time.Millisecond

// attachProcs returns the GOMAXPROCS attach runs with, and the one it
// takes while bulk transfers run (0: the same). --procs when given, or else
// $GOMAXPROCS when set, fixes both. Otherwise attach runs with one P, and
// two while bulk transfers run on a machine with two CPUs or more.
//
// A request costs attach a few tens of microseconds of CPU, and with more
// than one P the runtime wakes a spinning thread each time a socket makes a
// goroutine runnable: on the 2-vCPU development VM one P took attach from
// 3.8-4.0 context switches per QD1 request to 2.7-2.8 and its CPU per
// request down by a fifth to a third. A sequential copy instead seals and
// opens large payloads in two goroutines, which one P runs in turn: two
// made nbdcopy's 1 GiB writes 1.12 times as fast and its reads 1.09 times
// (scripts/PERFORMANCE.md).
func attachProcs(flagValue int, env string, ncpu int) (n, bulk int, err error) {
	switch {
	case flagValue < 0 || flagValue > 1024:
		return 0, 0, usagef("--procs %d: give 1 to 1024", flagValue)
	case flagValue > 0:
		return flagValue, 0, nil
	case env == "":
		if ncpu >= 2 {
			return 1, 2, nil
		}
		return 1, 0, nil
	}
	n, err = strconv.Atoi(env)
	if err != nil || n < 1 {
		return 0, 0, fmt.Errorf("GOMAXPROCS=%q: want a positive integer", env)
	}
	return n, 0, nil
}
