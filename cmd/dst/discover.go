package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"

	"github.com/dstproject/dst/client"
	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/discover"
)

// discoverTimeout is how long dst waits for mDNS answers.
const discoverTimeout = 2 * time.Second

// eachServer calls try with cfg, or, when cfg.Server is "auto", with each
// server on the local network that announces one of the pinned keys,
// until one succeeds: the handshake proves which announcement was true.
func eachServer(ctx context.Context, log *slog.Logger, cfg *client.Config, try func(*client.Config) error) error {
	if cfg.Server != "auto" {
		return try(cfg)
	}
	pins := append([]crypto.PublicKey{cfg.ServerKey}, cfg.MoreServerKeys...)
	addrs, err := discover.Candidates(ctx, pins, discoverTimeout)
	if err != nil {
		return err
	}
	var errs []error
	for _, addr := range addrs {
		c := *cfg
		c.Server = addr
		if err := try(&c); err != nil {
			log.Warn("a server announcing the pinned key failed", "addr", addr, "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		cfg.Server = addr
		log.Info("found the server on the local network", "addr", addr)
		return nil
	}
	return fmt.Errorf("no server announcing the pinned key proved it holds it: %w", errors.Join(errs...))
}

// cmdDiscover lists the dst servers announced on the local network.
func cmdDiscover(ctx context.Context, args []string) error {
	fs := newFlagSet("discover", "[flags]")
	timeout := fs.Duration("timeout", discoverTimeout, "how long to wait for answers")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	found, err := discover.Browse(ctx, *timeout)
	if err != nil {
		return err
	}
	if len(found) == 0 {
		return errors.New("no dst server answered on the local network")
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "INSTANCE\tADDRESS\tPUBLIC KEY (as announced, unproven)\tPROTOCOL")
	for _, a := range found {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", a.Instance, a.Addr, a.Key, a.Version)
	}
	return w.Flush()
}
