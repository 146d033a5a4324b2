package sdnotify

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen starts a unixgram listener like systemd's notification socket and
// points NOTIFY_SOCKET at it.
func listen(t *testing.T, abstract bool) *net.UnixConn {
	t.Helper()
	name := filepath.Join(t.TempDir(), "notify")
	if abstract {
		name = "@dst-sdnotify-test-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return c
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _, err := c.ReadFromUnix(buf)
	if err != nil {
		t.Fatalf("no datagram: %v", err)
	}
	return string(buf[:n])
}

func TestMessages(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run("abstract="+strconv.FormatBool(abstract), func(t *testing.T) {
			c := listen(t, abstract)
			tests := []struct {
				send func() error
				want string
			}{
				{Ready, "READY=1"},
				{Stopping, "STOPPING=1"},
				{Watchdog, "WATCHDOG=1"},
				{func() error { return Status("serving 2 exports\non :7700") }, "STATUS=serving 2 exports on :7700"},
				{func() error { return Notify("READY=1\nSTATUS=x") }, "READY=1\nSTATUS=x"},
			}
			for _, tt := range tests {
				if err := tt.send(); err != nil {
					t.Fatal(err)
				}
				if got := recv(t, c); got != tt.want {
					t.Errorf("got %q, want %q", got, tt.want)
				}
			}
		})
	}
}

func TestReloading(t *testing.T) {
	c := listen(t, false)
	before := monotonicUsec()
	if err := Reloading(); err != nil {
		t.Fatal(err)
	}
	after := monotonicUsec()
	got := recv(t, c)
	first, rest, _ := strings.Cut(got, "\n")
	if first != "RELOADING=1" {
		t.Fatalf("first line %q, want RELOADING=1 (message %q)", first, got)
	}
	v, ok := strings.CutPrefix(rest, "MONOTONIC_USEC=")
	if !ok {
		t.Fatalf("no MONOTONIC_USEC in %q", got)
	}
	usec, err := strconv.ParseInt(v, 10, 64)
	if err != nil || usec < before || usec > after || usec == 0 {
		t.Fatalf("MONOTONIC_USEC=%q, want a number in [%d, %d]", v, before, after)
	}
}

func TestUnset(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Ready(); err != nil {
		t.Fatalf("Ready without NOTIFY_SOCKET: %v", err)
	}
}

func TestErrors(t *testing.T) {
	for _, addr := range []string{"vsock:2:1234", filepath.Join(t.TempDir(), "absent")} {
		t.Setenv("NOTIFY_SOCKET", addr)
		err := Ready()
		if err == nil {
			t.Errorf("NOTIFY_SOCKET=%q: no error", addr)
		} else if !strings.HasPrefix(err.Error(), "sdnotify: ") {
			t.Errorf("error %q lacks the package prefix", err)
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	tests := []struct {
		usec, pid string
		want      time.Duration
		ok        bool
	}{
		{"", "", 0, false},
		{"0", "", 0, false},
		{"junk", "", 0, false},
		{"-5", "", 0, false},
		{"30000000", "", 30 * time.Second, true},
		{"30000000", pid, 30 * time.Second, true},
		{"30000000", "1", 0, false}, // meant for another process
		{"18446744073709551615", "", 0, false},
	}
	for _, tt := range tests {
		t.Setenv("WATCHDOG_USEC", tt.usec)
		t.Setenv("WATCHDOG_PID", tt.pid)
		got, ok := WatchdogInterval()
		if got != tt.want || ok != tt.ok {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: got %v, %v; want %v, %v", tt.usec, tt.pid, got, ok, tt.want, tt.ok)
		}
	}
}
