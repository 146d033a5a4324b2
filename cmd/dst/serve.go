package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/discover"
	"github.com/dstproject/dst/internal/metrics"
	"github.com/dstproject/dst/internal/sdnotify"
	"github.com/dstproject/dst/server"
)

func cmdServe(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "status" {
		return cmdServeStatus(ctx, args[1:])
	}
	fs := newFlagSet("serve", "[--config FILE] [--listen HOST:PORT --key FILE --authorized-keys FILE --export NAME=PATH[,ro]...]")
	config := fs.String("config", "", "TOML config `FILE` (flags given too override it)")
	listen := fs.String("listen", "", "address to listen on, `HOST:PORT` (default \":7700\")")
	var keyFiles listFlag
	fs.Var(&keyFiles, "key", "the server's private key `FILE`; repeat it while rotating keys: the first is current, "+
		"clients may pin any")
	authFile := fs.String("authorized-keys", "", "`FILE` of client public keys allowed to connect, one per line")
	var exports, ciphers listFlag
	fs.Var(&exports, "export", "export a file or block device, or another NBD server's export: `NAME=PATH[,ro]` or\nNAME=nbd+unix:///EXPORT?socket=SOCKET or NAME=nbd://HOST[:PORT]/EXPORT, with ,connections=N\nfor N connections to an upstream announcing multi-conn (repeatable)")
	fs.Var(&ciphers, "cipher", "allow only this `CIPHER` (aes-256-gcm, chacha20-poly1305; repeatable)")
	workers := fs.Int("workers", 0, "bound on concurrently running I/O requests (default 64)")
	perKey := fs.Int("max-sessions-per-key", 0, "bound on the sessions one client key may hold at once (default 64)")
	metricsListen := fs.String("metrics-listen", "", "answer Prometheus scrapes at `HOST:PORT`/metrics (default off)")
	announce := fs.Bool("announce", false, "advertise this server on the local network (mDNS, _dst._tcp) with its public key,\nfor dst attach --server-key KEY auto")
	statusSock := fs.String("status-socket", "", "answer dst serve status on the unix socket `PATH` (default <run dir>/serve.sock, i.e.\n/run/dst/serve.sock; none: no socket)")
	keyMode := keyModeFlag(fs)
	logger := logFlag(fs)
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	// Catch SIGHUP before anything says the server is up (the log line,
	// READY): until signal.Notify, a SIGHUP kills the process, and
	// `systemctl reload` may come the moment READY is sent. A SIGHUP
	// during start-up waits in hup and reloads once serving. (main has
	// caught SIGINT and SIGTERM before calling any command.)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	log := logger()
	keyPolicy := keyMode(log)
	reservePayloadMemory(log)

	cfg := &server.Config{}
	if *config != "" {
		c, err := server.LoadConfig(*config, keyPolicy)
		if err != nil {
			return err
		}
		cfg = c
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	if *metricsListen != "" {
		cfg.MetricsListen = *metricsListen
	}
	if cfg.Listen == "" {
		cfg.Listen = ":7700"
	}
	if len(keyFiles) > 0 {
		k, more, err := loadServerKeys(keyFiles, keyPolicy)
		if err != nil {
			return err
		}
		cfg.PrivateKey, cfg.MoreKeys = k, more
		if cfg.UpstreamID == "" {
			// Upstream exports' identities derive from an id kept beside
			// the key when there is no configuration file.
			cfg.UpstreamID = filepath.Join(filepath.Dir(keyFiles[0]), "upstream-id")
		}
	}
	if *authFile != "" {
		a, err := crypto.LoadAuthorizedKeys(*authFile)
		if err != nil {
			return err
		}
		cfg.Authorized = a
	}
	var flagExports []server.ExportConfig
	for _, e := range exports {
		ec, err := server.ParseExportFlag(e)
		if err != nil {
			return usageError{err}
		}
		flagExports = append(flagExports, ec)
	}
	cfg.Exports = append(cfg.Exports, flagExports...)
	if len(ciphers) > 0 {
		cfg.Ciphers = nil
		for _, c := range ciphers {
			ci, err := crypto.ParseCipher(c)
			if err != nil {
				return usageError{err}
			}
			cfg.Ciphers = append(cfg.Ciphers, ci)
		}
	}
	if *workers > 0 {
		cfg.Workers = *workers
	}
	if *perKey < 0 {
		return usagef("--max-sessions-per-key %d: want a positive number", *perKey)
	}
	if *perKey > 0 {
		cfg.MaxSessionsPerKey = *perKey
	}
	cfg.Logger = log
	switch {
	case cfg.PrivateKey.IsZero():
		return usagef("no server key: give --key FILE (make one with: dst keygen -o FILE)")
	case cfg.Authorized == nil:
		return usagef("no authorized keys: give --authorized-keys FILE with one client public key per line")
	case len(cfg.Exports) == 0:
		return usagef("nothing to export: give --export NAME=PATH[,ro]")
	}
	warnUnclamped(log, cfg.PrivateKey, cmp.Or(strings.Join(keyFiles, ", "), "key of "+*config))

	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	l, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.Listen, err)
	}
	info := srv.Info()
	names := make([]string, len(info.Exports))
	for i, e := range info.Exports {
		names[i] = e.Name
	}
	logClientKeys(log, cfg.Authorized)
	for _, k := range cfg.MoreKeys {
		log.Info("also answering to a key of a rotation", "public_key", k.Public().String())
	}
	if cfg.MetricsListen != "" {
		ml, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		log.Info("metrics", "addr", ml.Addr().String())
		go func() {
			if err := metrics.Serve(ctx, ml, metrics.NewServer(srv)); err != nil {
				log.Error("metrics endpoint failed", "err", err)
			}
		}()
	}
	if *announce || cfg.Announce {
		stop, err := announceServer(log, l.Addr().(*net.TCPAddr), cfg.PrivateKey.Public())
		if err != nil {
			return err
		}
		defer stop()
	}
	switch *statusSock {
	case "none":
	case "":
		*statusSock = serveStatusPath()
		fallthrough
	default:
		defer serveMux(log, *statusSock, statusMux(func() any { return srv.Status() }))()
	}
	// "listening" is the line scripts and tests wait for, as systemd waits
	// for READY: the keys, metrics and status socket come before it.
	log.Info("listening", "addr", l.Addr().String(), "public_key", cfg.PrivateKey.Public().String(),
		"exports", names, "instance", info.Instance.String())
	notify(log, sdnotify.Ready)
	notify(log, func() error {
		return sdnotify.Status(fmt.Sprintf("serving %d exports on %s", len(names), l.Addr()))
	})
	go reloadOnHangup(ctx, log, srv, hup, func() (*reloaded, error) {
		var r reloaded
		if *config != "" {
			c, err := server.LoadConfig(*config, keyPolicy)
			if err != nil {
				return nil, err
			}
			r.authorized, r.key, r.more = c.Authorized, c.PrivateKey, c.MoreKeys
			// The file's exports, then those of --export, which stay.
			r.exports = append(c.Exports, flagExports...)
		}
		if *authFile != "" {
			a, err := crypto.LoadAuthorizedKeys(*authFile)
			if err != nil {
				return nil, err
			}
			r.authorized = a
		}
		if len(keyFiles) > 0 {
			k, more, err := loadServerKeys(keyFiles, keyPolicy)
			if err != nil {
				return nil, err
			}
			r.key, r.more = k, more
		}
		return &r, nil
	})
	// On SIGTERM or SIGINT, clients hear that the server is stopping
	// before their sessions end; the deferred Close then waits for what
	// is in flight.
	serveCtx, stopServe := context.WithCancel(context.Background())
	defer stopServe()
	go func() {
		<-ctx.Done()
		srv.NotifyShutdown("dst serve is stopping", time.Second)
		stopServe()
	}()
	return srv.Serve(serveCtx, l)
}

// loadServerKeys loads the server's key files: the first is the current
// key, the others those of a rotation in progress.
func loadServerKeys(files []string, policy crypto.KeyModePolicy) (crypto.PrivateKey, []crypto.PrivateKey, error) {
	var keys []crypto.PrivateKey
	for _, f := range files {
		k, err := crypto.LoadPrivateKey(f, policy)
		if err != nil {
			return crypto.PrivateKey{}, nil, err
		}
		keys = append(keys, k)
	}
	return keys[0], keys[1:], nil
}

// reloaded is what a reload reads again.
type reloaded struct {
	authorized *crypto.AuthorizedKeys
	key        crypto.PrivateKey
	more       []crypto.PrivateKey
	exports    []server.ExportConfig // nil: no config file, the exports stay
}

// reloadOnHangup re-reads the authorized keys, the server's own keys and
// the config file's exports, and looks at once for exports that grew, on
// each SIGHUP that arrives on hup, as sshd and WireGuard's syncconf let one
// do: sessions of client keys no longer listed end, new connections are
// checked against the new list and answered under the new server keys
// (live sessions keep theirs), exports come and go (server.SetExports). A
// file that fails to load changes nothing.
func reloadOnHangup(ctx context.Context, log *slog.Logger, srv *server.Server, hup <-chan os.Signal,
	load func() (*reloaded, error)) {
	for {
		select {
		case <-hup:
		case <-ctx.Done():
			return
		}
		notify(log, sdnotify.Reloading)
		r, err := load()
		if err == nil {
			err = srv.SetKeys(r.key, r.more)
		}
		if err != nil {
			log.Error("reloading keys failed; keeping the current ones", "err", err)
		} else {
			srv.SetAuthorized(r.authorized)
			pubs := []string{r.key.Public().String()}
			for _, k := range r.more {
				pubs = append(pubs, k.Public().String())
			}
			log.Info("reloaded authorized keys", "keys", r.authorized.Len(), "server_keys", pubs)
			logClientKeys(log, r.authorized)
			if r.exports != nil {
				if _, err := srv.SetExports(r.exports); err != nil {
					log.Error("reloading exports failed; keeping the current ones", "err", err)
				}
			}
		}
		srv.CheckSizes()            // an export that grew is served at its new size now
		notify(log, sdnotify.Ready) // after a failed reload too: systemd waits for it
	}
}

// announceServer advertises the server at addr on the local network: at
// its address, or at every interface's when it listens on all.
func announceServer(log *slog.Logger, addr *net.TCPAddr, key crypto.PublicKey) (func(), error) {
	ips := []net.IP{addr.IP}
	if addr.IP.IsUnspecified() {
		ips = discover.LocalIPs()
	}
	stop, err := discover.Announce(key, addr.Port, ips)
	if err != nil {
		return nil, fmt.Errorf("--announce: %w", err)
	}
	log.Info("announcing on the local network", "service", discover.Service, "addresses", ips, "port", addr.Port)
	return stop, nil
}

// logClientKeys logs what each authorized client key may open.
func logClientKeys(log *slog.Logger, a *crypto.AuthorizedKeys) {
	for _, k := range a.Keys() {
		comment, _ := a.Contains(k)
		acc, _ := a.Access(k)
		log.Info("client key", "key", k.String(), "comment", comment, "access", acc.String())
	}
}

// notify tells systemd (Type=notify units) about a state change; outside
// systemd it does nothing. A failure is logged, never fatal.
func notify(log *slog.Logger, send func() error) {
	if err := send(); err != nil {
		log.Warn("telling systemd", "err", err)
	}
}
