package tests

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStatus: a running dst attach answers dst status (JSON and text) on
// its own socket under the run directory, dst list shows an attachment
// served as an NBD socket, and the socket goes with the process.
func TestStatus(t *testing.T) {
	if standin() {
		t.Skip("dst status is dst's own; the nbdkit stand-in has none")
	}
	requireTool(t, "nbdcopy")
	runDir := shortTempDir(t)
	t.Setenv("DST_RUN_DIR", runDir)
	s := startServer(t, &export{Name: "disk", Size: 16 << 20})
	a := s.attach(t, "disk", "--name", "st1")
	src := filepath.Join(t.TempDir(), "src")
	writeRandomFile(t, src, 4<<20)
	run(t, "nbdcopy", "--flush", src, a.uri())

	sock := filepath.Join(runDir, "attach", "st1.sock")
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("status socket %s: %v, %v; want mode 0600", sock, fi, err)
	}
	var sts []struct {
		Name, Device, Server, Export, State, Identity string
		PID                                           int
		Epoch                                         uint64
		RTT                                           int64 `json:"rtt_ns"`
		Latency                                       map[string]struct {
			Count uint64
			P50   int64 `json:"p50_ns"`
			P999  int64 `json:"p99_9_ns"`
		}
	}
	out, err := runErr(dstBin, "status", "--json")
	if err != nil {
		t.Fatalf("dst status --json: %v\n%s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &sts); err != nil {
		t.Fatalf("dst status --json: %v\n%s", err, out)
	}
	if len(sts) != 1 {
		t.Fatalf("dst status --json: %d attachments, want 1\n%s", len(sts), out)
	}
	st := sts[0]
	if st.Name != "st1" || st.Device != "unix:"+a.sock || st.Server != s.addr || st.Export != "disk" ||
		st.State != "connected" || st.PID != a.proc.cmd.Process.Pid || st.Epoch != 1 || len(st.Identity) != 32 {
		t.Errorf("status %+v", st)
	}
	w := st.Latency["write"]
	if w.Count == 0 || w.P50 <= 0 || w.P999 < w.P50 || st.Latency["flush"].Count == 0 {
		t.Errorf("latency %+v: want the writes and the flush counted", st.Latency)
	}
	deadline := time.Now().Add(5 * time.Second)
	for st.RTT == 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		out = run(t, dstBin, "status", "--json")
		json.Unmarshal([]byte(out), &sts)
		st = sts[0]
	}
	if st.RTT <= 0 {
		t.Errorf("no keepalive round-trip time after 5 s: %+v", st)
	}

	text := run(t, dstBin, "status", "st1")
	t.Logf("dst status st1:\n%s", text)
	for _, want := range []string{"st1", "connected since", "export disk", "write latency", "not yet durable"} {
		if !strings.Contains(text, want) {
			t.Errorf("dst status st1 lacks %q:\n%s", want, text)
		}
	}
	if out, err := runErr(dstBin, "status", "nosuch"); err == nil || !strings.Contains(out, "no dst attach answers for nosuch") {
		t.Errorf("dst status nosuch: %v\n%s", err, out)
	}
	list, _ := runErr(dstBin, "list") // without an nbd driver it also says so, and still lists
	if !strings.Contains(list, "unix:"+a.sock) || !strings.Contains(list, "connected") {
		t.Errorf("dst list does not show the NBD socket attachment:\n%s", list)
	}

	a.proc.stop(t)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("status socket after dst attach stopped: %v", err)
	}
}
