package tests

import (
	"bufio"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape fetches a Prometheus text endpoint and returns its samples by
// series ("name{labels}").
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scraping %s: bad line %q", url, line)
		}
		out[line[:i]] = v
	}
	return out
}

// TestMetrics scrapes attach's and serve's /metrics while I/O runs and
// checks the values move with it.
func TestMetrics(t *testing.T) {
	ownRunDir(t, "metrics")
	s := startServer(t, &export{Name: "disk", Size: 16 << 20})
	// serve's metrics: started again with --metrics-listen on the same files.
	s.proc.stop(t)
	serveMetrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	argv := append(s.proc.cmd.Args[:len(s.proc.cmd.Args):len(s.proc.cmd.Args)], "--metrics-listen", serveMetrics)
	s.proc = startProc(t, "dst serve", argv...)
	if err := s.proc.waitFor("listening", startTimeout, func() bool { return strings.Contains(s.proc.out.String(), "listening") }); err != nil {
		t.Fatal(err)
	}
	attachMetrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a := s.attach(t, "disk", "--name", "m1", "--metrics-listen", attachMetrics)

	cm := "http://" + attachMetrics + "/metrics"
	sm := "http://" + serveMetrics + "/metrics"
	before, sBefore := scrape(t, cm), scrape(t, sm)
	src := filepath.Join(t.TempDir(), "src")
	writeRandomFile(t, src, 4<<20)
	run(t, "nbdcopy", "--flush", src, a.uri())
	after, sAfter := scrape(t, cm), scrape(t, sm)

	const w = `dst_client_requests_total{attachment="m1",op="write"}`
	if after[w] <= before[w] || after[w] < 16 {
		t.Errorf("%s went from %v to %v after 4 MiB of writes", w, before[w], after[w])
	}
	const hc = `dst_client_request_duration_seconds_count{attachment="m1",op="write"}`
	if after[hc] != after[w] {
		t.Errorf("histogram count %v, requests %v", after[hc], after[w])
	}
	const inf = `dst_client_request_duration_seconds_bucket{attachment="m1",op="write",le="+Inf"}`
	if after[inf] != after[w] {
		t.Errorf("+Inf bucket %v, requests %v", after[inf], after[w])
	}
	if after[`dst_client_connected{attachment="m1"}`] != 1 || after[`dst_client_epoch{attachment="m1"}`] != 1 {
		t.Errorf("connected %v, epoch %v", after[`dst_client_connected{attachment="m1"}`], after[`dst_client_epoch{attachment="m1"}`])
	}
	if d := sAfter["dst_server_written_bytes_total"] - sBefore["dst_server_written_bytes_total"]; d != 4<<20 {
		t.Errorf("dst_server_written_bytes_total grew by %v, want %d", d, 4<<20)
	}
	if sAfter["dst_server_sessions"] != 1 || sAfter["dst_server_queue_connections"] < 1 || sAfter["dst_server_exports"] != 1 {
		t.Errorf("server gauges: sessions %v, queues %v, exports %v", sAfter["dst_server_sessions"],
			sAfter["dst_server_queue_connections"], sAfter["dst_server_exports"])
	}
	if sAfter["dst_server_requests_total"] <= sBefore["dst_server_requests_total"] {
		t.Errorf("dst_server_requests_total did not move: %v to %v", sBefore["dst_server_requests_total"], sAfter["dst_server_requests_total"])
	}
	// nbdcopy's 256 KiB writes took their buffers from the payload arena,
	// on both sides; a race build keeps payloads on the heap instead.
	race := raceBuilt(t)
	for who, m := range map[string]map[string]float64{"attach": after, "serve": sAfter} {
		reserved, used := m["dst_payload_arena_reserved_bytes"], m["dst_payload_arena_used_bytes"]
		switch {
		case race && (reserved != 0 || used != 0):
			t.Errorf("%s, built with -race: payload arena %v bytes reserved, %v used; want none", who, reserved, used)
		case !race && (reserved != 64<<20 || used < 256<<10 || used > reserved):
			t.Errorf("%s: payload arena %v bytes reserved, %v used; want 64 MiB, with 256 KiB or more used", who, reserved, used)
		}
		reserved, used = m["dst_payload_small_arena_reserved_bytes"], m["dst_payload_small_arena_used_bytes"]
		switch {
		case race && (reserved != 0 || used != 0):
			t.Errorf("%s, built with -race: small payload arena %v bytes reserved, %v used; want none", who, reserved, used)
		case !race && (reserved != 40<<20 || used > reserved):
			t.Errorf("%s: small payload arena %v bytes reserved, %v used; want 40 MiB, used within it", who, reserved, used)
		}
	}
	// After the attachment ends, the server's counters keep what it served.
	a.proc.stop(t)
	time.Sleep(200 * time.Millisecond)
	end := scrape(t, sm)
	if end["dst_server_written_bytes_total"] < sAfter["dst_server_written_bytes_total"] || end["dst_server_sessions"] != 0 {
		t.Errorf("after the session ended: written %v (was %v), sessions %v", end["dst_server_written_bytes_total"],
			sAfter["dst_server_written_bytes_total"], end["dst_server_sessions"])
	}
}
