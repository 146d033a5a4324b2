package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/sdnotify"
	"github.com/dstproject/dst/server"
)

func cmdServe(ctx context.Context, args []string) error {
	fs := newFlagSet("serve", "[--config FILE] [--listen HOST:PORT --key FILE --authorized-keys FILE --export NAME=PATH[,ro]...]")
	config := fs.String("config", "", "TOML config `FILE` (flags given too override it)")
	listen := fs.String("listen", "", "address to listen on, `HOST:PORT` (default \":7700\")")
	keyFile := fs.String("key", "", "the server's private key `FILE`")
	authFile := fs.String("authorized-keys", "", "`FILE` of client public keys allowed to connect, one per line")
	var exports, ciphers listFlag
	fs.Var(&exports, "export", "export a file or block device: `NAME=PATH[,ro]` (repeatable)")
	fs.Var(&ciphers, "cipher", "allow only this `CIPHER` (aes-256-gcm, chacha20-poly1305; repeatable)")
	workers := fs.Int("workers", 0, "bound on concurrently running I/O requests (default 64)")
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
	if cfg.Listen == "" {
		cfg.Listen = ":7700"
	}
	if *keyFile != "" {
		k, err := crypto.LoadPrivateKey(*keyFile, keyPolicy)
		if err != nil {
			return err
		}
		cfg.PrivateKey = k
	}
	if *authFile != "" {
		a, err := crypto.LoadAuthorizedKeys(*authFile)
		if err != nil {
			return err
		}
		cfg.Authorized = a
	}
	for _, e := range exports {
		ec, err := server.ParseExportFlag(e)
		if err != nil {
			return usageError{err}
		}
		cfg.Exports = append(cfg.Exports, ec)
	}
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
	cfg.Logger = log
	switch {
	case cfg.PrivateKey.IsZero():
		return usagef("no server key: give --key FILE (make one with: dst keygen -o FILE)")
	case cfg.Authorized == nil:
		return usagef("no authorized keys: give --authorized-keys FILE with one client public key per line")
	case len(cfg.Exports) == 0:
		return usagef("nothing to export: give --export NAME=PATH[,ro]")
	}
	warnUnclamped(log, cfg.PrivateKey, cmp.Or(*keyFile, "key of "+*config))

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
	log.Info("listening", "addr", l.Addr().String(), "public_key", cfg.PrivateKey.Public().String(),
		"exports", names, "instance", info.Instance.String())
	notify(log, sdnotify.Ready)
	notify(log, func() error {
		return sdnotify.Status(fmt.Sprintf("serving %d exports on %s", len(names), l.Addr()))
	})
	go reloadOnHangup(ctx, log, srv, hup, func() (*crypto.AuthorizedKeys, error) {
		if *authFile != "" {
			return crypto.LoadAuthorizedKeys(*authFile)
		}
		c, err := server.LoadConfig(*config, keyPolicy)
		if err != nil {
			return nil, err
		}
		return c.Authorized, nil
	})
	return srv.Serve(ctx, l)
}

// reloadOnHangup re-reads the authorized keys on each SIGHUP that arrives
// on hup, as sshd and WireGuard's syncconf let one do: sessions of keys no
// longer listed end, new connections are checked against the new list. A
// file that fails to parse changes nothing.
func reloadOnHangup(ctx context.Context, log *slog.Logger, srv *server.Server, hup <-chan os.Signal,
	load func() (*crypto.AuthorizedKeys, error)) {
	for {
		select {
		case <-hup:
		case <-ctx.Done():
			return
		}
		notify(log, sdnotify.Reloading)
		a, err := load()
		if err != nil {
			log.Error("reloading authorized keys failed; keeping the current ones", "err", err)
		} else {
			srv.SetAuthorized(a)
			log.Info("reloaded authorized keys", "keys", a.Len())
		}
		notify(log, sdnotify.Ready) // after a failed reload too: systemd waits for it
	}
}

// notify tells systemd (Type=notify units) about a state change; outside
// systemd it does nothing. A failure is logged, never fatal.
func notify(log *slog.Logger, send func() error) {
	if err := send(); err != nil {
		log.Warn("telling systemd", "err", err)
	}
}
