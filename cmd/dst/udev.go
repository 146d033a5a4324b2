package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/dstproject/dst/client/kernel"
)

// Stable device names. The udev rule scripts/udev/60-dst.rules runs
// "dst udev nbdN" on every add or change event of an nbd device; for a
// device a live dst attach serves, it prints udev properties from the
// attach's state file, and the rule makes /dev/dst/NAME and
// /dev/disk/by-id/dst-IDENTITY from them. dst attach sends the device a
// change event once its state file is written and again after it is
// removed, so the links appear on attach and go on detach: udev drops a
// device's links that its latest event no longer names.

// cmdUdev prints the udev properties of an nbd device (IMPORT{program}).
func cmdUdev(_ context.Context, args []string) error {
	fs := newFlagSet("udev", "nbdN")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	index, err := kernel.ParsePath(pos[0])
	if err != nil {
		return usageError{err}
	}
	return udevProperties(os.Stdout, states(), index)
}

// udevProperties writes DST_* properties of device index, or nothing when
// no live dst attach serves it.
func udevProperties(w io.Writer, st kernel.Store, index int) error {
	s, err := st.Read(index)
	if err != nil || !s.Alive() {
		return nil // not ours, or no longer: no properties, no links
	}
	var b strings.Builder
	prop := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%s=%s\n", k, v)
		}
	}
	// Names go into paths under /dev: only the safe ones.
	if validName.MatchString(s.Name) {
		prop("DST_NAME", s.Name)
	}
	if validIdentity(s.Identity) {
		prop("DST_IDENTITY", s.Identity)
	}
	if validName.MatchString(s.Export) {
		prop("DST_EXPORT", s.Export)
	}
	_, err = io.WriteString(w, b.String())
	return err
}

func validIdentity(s string) bool {
	if len(s) != 32 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// triggerUdev asks the kernel to send a change event for /dev/nbdN, as
// udevadm trigger does, so udev runs its rules (and dst udev) again.
// Without udev nothing listens, and nothing is lost.
func triggerUdev(index int) error {
	p := filepath.Join("/sys/block", "nbd"+strconv.Itoa(index), "uevent")
	return os.WriteFile(p, []byte("change"), 0)
}

// resolveDevice turns a link such as /dev/dst/NAME into the /dev/nbdN it
// names; anything else is returned as given.
func resolveDevice(p string) string {
	if _, err := kernel.ParsePath(p); err == nil {
		return p
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}
