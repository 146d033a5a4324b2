package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/dstproject/dst/client/kernel"
)

// Device states dst list prints.
const (
	stateServing = "connected" // configured, its dst attach runs
	stateDead    = "dead"      // configured, its dst attach died: waits for a restart
	stateForeign = "foreign"   // configured by another program
)

func cmdList(ctx context.Context, args []string) error {
	fs := newFlagSet("list", "")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	devs, err := kernel.List()
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "DEVICE\tEXPORT\tSERVER\tSTATE\tPID")
	for _, d := range devs {
		if !d.Connected {
			continue
		}
		path := kernel.Path(d.Index)
		s, err := states().Read(d.Index)
		if err != nil {
			fmt.Fprintf(w, "%s\t-\t-\t%s\t-\n", path, stateForeign)
			continue
		}
		state := stateServing
		if !s.Alive() {
			state = stateDead
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", path, s.Export, s.Server, state, s.PID)
	}
	return w.Flush()
}
