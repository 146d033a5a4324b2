package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/dstproject/dst/client"
)

func cmdInfo(ctx context.Context, args []string) error {
	fs := newFlagSet("info", "[flags] HOST:PORT")
	cf := addClientFlags(fs)
	logger := logFlag(fs)
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	cfg, err := cf.config(pos[0], logger())
	if err != nil {
		return err
	}
	var s *client.Session
	err = eachServer(ctx, logger(), cfg, func(cfg *client.Config) (err error) {
		s, err = client.Dial(ctx, cfg)
		return err
	})
	if err != nil {
		return explain(err, cfg)
	}
	defer s.Close()
	info := s.Info()
	fmt.Printf("server:   %s (%s)\n", info.Server, cfg.Server)
	fmt.Printf("instance: %s\n", info.Instance)
	fmt.Printf("protocol: %d\n", info.Version)
	fmt.Printf("cipher:   %s\n", s.Cipher())
	fmt.Printf("exports:  %d\n\n", len(info.Exports))
	w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tSIZE\tBYTES\tLOGICAL\tPHYSICAL\tMAX_TRANSFER\tFLAGS\tIDENTITY")
	for _, e := range info.Exports {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", e.Name, human(e.Size), e.Size,
			e.LogicalBlock, e.PhysicalBlock, e.MaxTransfer, e.Flags, e.Identity)
	}
	return w.Flush()
}

func human(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
