package tests

import (
	"encoding/json"
	"io"
	"net"
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
	runDir := ownRunDir(t, "dst status")
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

	// Bad input on the status socket gets an error and disturbs nothing.
	for _, bad := range []string{"\x00\x01garbage\r\n\r\n", "GET /status HTTP/1.1\r\nX: " + strings.Repeat("a", 1<<20) + "\r\n\r\n",
		"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		go c.Write([]byte(bad))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		reply, _ := io.ReadAll(io.LimitReader(c, 4096))
		c.Close()
		if !strings.HasPrefix(string(reply), "HTTP/1.1 4") {
			t.Errorf("status socket answered %.40q to %.40q; want a 4xx error", reply, bad)
		}
	}
	// A peer that is not root cannot connect at all: the socket is 0600.
	// (The run directory is opened up so that only the socket's mode can
	// refuse it.)
	if os.Geteuid() == 0 {
		requireTool(t, "setpriv")
		if err := os.Chmod(runDir, 0o755); err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(runDir, "dst") // where nobody may run it
		if data, err := os.ReadFile(dstBin); err != nil || os.WriteFile(bin, data, 0o755) != nil {
			t.Fatalf("copying dst: %v", err)
		}
		out, err := runErr("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", bin, "status", "st1")
		if err == nil || !strings.Contains(out, "permission denied") {
			t.Errorf("dst status as nobody: %v\n%s", err, out)
		}
	}
	run(t, "nbdcopy", "--flush", src, a.uri())
	if out := run(t, dstBin, "status", "st1", "--json"); !strings.Contains(out, `"state": "connected"`) {
		t.Errorf("after bad input: %s", out)
	}

	a.proc.stop(t)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("status socket after dst attach stopped: %v", err)
	}
}

// TestServeStatus: dst serve status lists the exports and the sessions,
// with the client's comment, epoch, queues and the bytes it moved.
func TestServeStatus(t *testing.T) {
	runDir := ownRunDir(t, "dst serve status")
	s := startServer(t, &export{Name: "disk", Size: 16 << 20}, &export{Name: "ro", Size: 1 << 20, ReadOnly: true})
	a := s.attach(t, "disk", "--connections", "2")
	src := filepath.Join(t.TempDir(), "src")
	writeRandomFile(t, src, 4<<20)
	run(t, "nbdcopy", "--flush", src, a.uri())
	run(t, "nbdcopy", a.uri(), filepath.Join(t.TempDir(), "back"))

	var st struct {
		Instance string
		Exports  []struct {
			Name     string
			ReadOnly bool `json:"read_only"`
			Queues   int
			Size     uint64
		}
		Sessions []struct {
			Comment, Remote, Client string
			Epoch                   uint64
			Queues                  int
			BytesRead               uint64 `json:"bytes_read"`
			BytesWritten            uint64 `json:"bytes_written"`
		}
	}
	out := run(t, dstBin, "serve", "status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("dst serve status --json: %v\n%s", err, out)
	}
	if len(st.Exports) != 2 || st.Exports[0].Name != "disk" || st.Exports[0].Queues != 2 || st.Exports[0].Size != 16<<20 ||
		!st.Exports[1].ReadOnly || st.Exports[1].Queues != 0 || len(st.Instance) != 32 {
		t.Errorf("exports %+v", st.Exports)
	}
	if len(st.Sessions) != 1 {
		t.Fatalf("sessions %+v, want 1", st.Sessions)
	}
	se := st.Sessions[0]
	if se.Comment != "" && se.Comment != "client" || se.Epoch != 1 || se.Queues != 2 ||
		se.BytesWritten != 4<<20 || se.BytesRead < 4<<20 || !strings.HasPrefix(se.Remote, "127.0.0.1:") {
		t.Errorf("session %+v: want epoch 1, 2 queues, 4 MiB written and read", se)
	}
	text := run(t, dstBin, "serve", "status")
	t.Logf("dst serve status:\n%s", text)
	for _, want := range []string{"instance " + st.Instance, "disk", "ro", "127.0.0.1:"} {
		if !strings.Contains(text, want) {
			t.Errorf("dst serve status lacks %q", want)
		}
	}
	s.proc.stop(t)
	if _, err := os.Stat(filepath.Join(runDir, "serve.sock")); !os.IsNotExist(err) {
		t.Errorf("status socket after dst serve stopped: %v", err)
	}
}

// ownRunDir prepares a test of what, a feature of dst's own: skipped with
// the nbdkit stand-in, it needs nbdcopy for I/O and gets a run directory
// (status sockets) of its own, which it returns.
func ownRunDir(t *testing.T, what string) string {
	t.Helper()
	if standin() {
		t.Skip(what + " is dst's own; the nbdkit stand-in has none")
	}
	requireTool(t, "nbdcopy")
	dir := shortTempDir(t)
	t.Setenv("DST_RUN_DIR", dir)
	return dir
}
