package tests

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/verify"
)

// TestEvents: dst events --json, started before the faults, shows every
// connection the fault proxy cuts as "lost" then "reconnected", in order,
// and a server killed and restarted as "lost", "server-restarted",
// "replaying" (with progress every tenth), "replayed" and "reconnected";
// then "closed" when attach stops.
func TestEvents(t *testing.T) {
	t.Setenv("DST_RUN_DIR", shortTempDir(t))
	e := newFaultEnv(t, false)
	c := e.startAttach("--name", "ev")
	ev := startProc(t, "dst events", dstBin, "events", "--json", "ev")
	time.Sleep(300 * time.Millisecond) // subscribed before the first fault

	td := &timedDisk{d: c}
	w := faultWorkload(16, verify.RequireAcked)
	done := runAsync(t, w, td, 6*time.Second)
	for range 2 {
		time.Sleep(time.Second)
		td.setMark()
		e.proxy.Cut()
		waitFirstSuccess(t, td, 10*time.Second)
	}
	time.Sleep(500 * time.Millisecond)
	e.killServe()
	td.setMark()
	time.Sleep(300 * time.Millisecond)
	e.startServe()
	waitFirstSuccess(t, td, 15*time.Second)
	<-done
	verifyClean(t, w, c, false)
	e.stopAttach()
	if err := ev.waitFor("dst events to end with its attachment", 10*time.Second, ev.exited); err != nil {
		t.Fatal(err)
	}

	var types, progress []string
	for _, line := range strings.Split(strings.TrimSpace(ev.out.String()), "\n") {
		var x struct {
			Name, Type, Detail string
			Epoch              uint64
			Count              int
			Time               time.Time
		}
		if err := json.Unmarshal([]byte(line), &x); err != nil {
			t.Fatalf("dst events printed %q: %v", line, err)
		}
		if x.Name != "ev" || x.Time.IsZero() {
			t.Errorf("event %+v", x)
		}
		if x.Type == "replayed" && x.Count == 0 || x.Type == "lost" && x.Detail == "" {
			t.Errorf("event %+v lacks its count or detail", x)
		}
		switch x.Type {
		case "reconnect-failed": // as many as attempts; not counted
		case "replay-progress": // one per tenth reached; checked below
			progress = append(progress, x.Detail)
		default:
			types = append(types, x.Type)
		}
	}
	got := strings.Join(types, " ")
	t.Logf("events: %s", got)
	want := "lost reconnected lost reconnected lost server-restarted replaying replayed reconnected closed"
	if got != want {
		t.Errorf("events\n got %s\nwant %s", got, want)
	}
	// The replay's progress: tenths, rising, ending at 100%.
	t.Logf("replay progress: %s", strings.Join(progress, " "))
	last := 0
	for _, p := range progress {
		n, err := strconv.Atoi(strings.TrimSuffix(p, "%"))
		if err != nil || n <= last || n%10 != 0 {
			t.Errorf("replay progress %q after %d%%", p, last)
		}
		last = n
	}
	if last != 100 {
		t.Errorf("replay progress ended at %d%%, want 100%%", last)
	}
}
