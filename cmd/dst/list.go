package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/dstproject/dst/client"
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
	// What each running dst attach says of itself, by device.
	live := map[string]*attachmentStatus{}
	if sts, err := allStatus(ctx); err == nil {
		for _, st := range sts {
			live[st.Device] = st
		}
	}
	devs, err := kernel.List()
	if err != nil {
		if len(live) == 0 {
			return err
		}
		// No nbd driver, say; the NBD sockets are still worth listing.
		fmt.Fprintf(os.Stderr, "dst: kernel devices not listed: %v\n", err)
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
		} else if st := live[path]; st != nil && st.PID == s.PID && st.State != client.StateConnected {
			state = st.State // reconnecting, failed
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", path, s.Export, s.Server, state, s.PID)
		delete(live, path)
	}
	// Attachments served as NBD sockets (--nbd-listen).
	var rest []*attachmentStatus
	for _, st := range live {
		if !strings.HasPrefix(st.Device, "/dev/") {
			rest = append(rest, st)
		}
	}
	sort.Slice(rest, func(i, j int) bool { return rest[i].Device < rest[j].Device })
	for _, st := range rest {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\n", st.Device, st.Export, st.Server, st.State, st.PID)
	}
	return w.Flush()
}
