package main

import (
	"os"
	"strings"
	"testing"

	"github.com/dstproject/dst/client/kernel"
)

// TestUdevProperties: a device a live dst attach serves gets its name,
// identity and export as udev properties; a name unsafe in a path is left
// out; a device without a state file, or whose attach is gone, gets none,
// so udev removes its links.
func TestUdevProperties(t *testing.T) {
	st := kernel.Store{Dir: t.TempDir()}
	props := func(index int) string {
		var b strings.Builder
		if err := udevProperties(&b, st, index); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	const id = "0123456789abcdef0123456789abcdef"
	// This test's process is alive, and its comm starts with "dst".
	if err := st.Write(0, &kernel.State{Device: "/dev/nbd0", Export: "disk0", Name: "data",
		Identity: id, PID: os.Getpid()}); err != nil {
		t.Fatal(err)
	}
	if got, want := props(0), "DST_NAME=data\nDST_IDENTITY="+id+"\nDST_EXPORT=disk0\n"; got != want {
		t.Errorf("live attach: %q, want %q", got, want)
	}
	if err := st.Write(1, &kernel.State{Device: "/dev/nbd1", Export: "../x y", Name: "../etc",
		Identity: "not hex", PID: os.Getpid()}); err != nil {
		t.Fatal(err)
	}
	if got := props(1); got != "" {
		t.Errorf("unsafe names gave %q", got)
	}
	if got := props(2); got != "" {
		t.Errorf("no state file gave %q", got)
	}
	if err := st.Write(3, &kernel.State{Device: "/dev/nbd3", Export: "disk0", Name: "data",
		Identity: id, PID: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	if got := props(3); got != "" {
		t.Errorf("an attach that is gone gave %q", got)
	}
}
