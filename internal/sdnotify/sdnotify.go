package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Notify sends state, newline-separated VAR=VALUE assignments such as
// "READY=1", to the service manager. Without $NOTIFY_SOCKET it does nothing.
//
// The socket is a unix datagram socket named by a path, or by "@name" in
// the abstract namespace (Go's net package maps a leading '@' to the
// abstract namespace, as systemd means it).
func Notify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if addr[0] != '/' && addr[0] != '@' {
		// Newer systemd may also pass "vsock:..." for VMs; dst never runs so.
		return fmt.Errorf("sdnotify: unsupported NOTIFY_SOCKET %q", addr)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sdnotify: send %q: %w", firstLine(state), err)
	}
	return nil
}

// Ready tells systemd that start-up (or a reload) is finished: for
// Type=notify, the unit is active and units ordered after it start now.
func Ready() error { return Notify("READY=1") }

// Stopping tells systemd that the service is shutting down, so a slow
// drain is not mistaken for a hang.
func Stopping() error { return Notify("STOPPING=1") }

// Status sets the one-line status systemctl status shows.
func Status(msg string) error {
	return Notify("STATUS=" + strings.ReplaceAll(msg, "\n", " "))
}

// Reloading tells systemd that a reload has begun; send Ready when it is
// done. MONOTONIC_USEC lets systemd tell this reload from an earlier one,
// which Type=notify-reload requires.
func Reloading() error {
	return Notify("RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(monotonicUsec(), 10))
}

// Watchdog sends a watchdog keep-alive; see WatchdogInterval.
func Watchdog() error { return Notify("WATCHDOG=1") }

// WatchdogInterval reports the watchdog period systemd expects keep-alives
// within (WatchdogSec=), if a watchdog is enabled for this process. Callers
// should send Watchdog at about half of it.
func WatchdogInterval() (time.Duration, bool) {
	usec, err := strconv.ParseUint(os.Getenv("WATCHDOG_USEC"), 10, 63)
	if err != nil || usec == 0 {
		return 0, false
	}
	// WATCHDOG_PID guards against a child inheriting the parent's setting.
	if p := os.Getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(os.Getpid()) {
		return 0, false
	}
	if usec > uint64(1<<63-1)/uint64(time.Microsecond) {
		return 0, false
	}
	return time.Duration(usec) * time.Microsecond, true
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, the clock systemd
// compares MONOTONIC_USEC against.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
