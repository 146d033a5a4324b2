package tests

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestFioVerify runs fio's nbd engine with data verification at queue depth
// 32, so many requests are in flight on one connection at once.
func TestFioVerify(t *testing.T) {
	requireFioNBD(t)
	s := startServer(t, &export{Name: "disk", Size: 96 << 20})
	a := s.attach(t, "disk")
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"randwrite-4k-qd32", []string{"--rw=randwrite", "--bs=4k"}},
		{"randrw-mixed-qd32", []string{"--rw=randrw", "--bsrange=512-128k", "--rwmixread=50"}},
		{"write-1m-qd8", []string{"--rw=write", "--bs=1m", "--iodepth=8"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--iodepth=32", "--size=64m", "--output-format=json"}, tc.args...)
			out := run(t, fioVerify(a.uri(), args...)...)
			checkFio(t, out)
		})
	}
	s.alive(t)
}

// TestFioBusyPoll: dst attach --busy-poll carries fio's verified random
// reads and writes at queue depth one, and its status shows the polling
// (rounds, some ended by the data they waited for).
func TestFioBusyPoll(t *testing.T) {
	ownRunDir(t, "--busy-poll")
	requireFioNBD(t)
	s := startServer(t, &export{Name: "disk", Size: 16 << 20})
	a := s.attach(t, "disk", "--busy-poll", "200us", "--name", "bp")
	out := run(t, fioVerify(a.uri(), "--iodepth=1", "--size=8m", "--rw=randrw", "--bs=4k",
		"--output-format=json")...)
	checkFio(t, out)

	out = run(t, dstBin, "status", "--json", "bp")
	var sts []struct {
		BusyPoll *struct{ Rounds, Data, Other, Expired uint64 } `json:"busy_poll"`
	}
	if err := json.Unmarshal([]byte(out), &sts); err != nil || len(sts) != 1 {
		t.Fatalf("tests: dst status --json bp: %v\n%s", err, out)
	}
	bp := sts[0].BusyPoll
	if bp == nil || bp.Rounds == 0 || bp.Data+bp.Other == 0 {
		t.Fatalf("tests: busy_poll %+v: want rounds of polling, some ended by data\n%s", bp, out)
	}
	t.Logf("busy_poll after fio: %+v", *bp)
	if out := run(t, dstBin, "status", "bp"); !strings.Contains(out, "busy polling") {
		t.Errorf("tests: dst status bp does not show the polling:\n%s", out)
	}
	s.alive(t)
}

// fioVerify returns the command line of a fio job through fio's nbd engine
// at uri that reads back and checks (crc32c) every block it writes, failing
// at the first bad one, and saves no verify state file in the working
// directory; args give the workload and the output format.
func fioVerify(uri string, args ...string) []string {
	return append([]string{"fio", "--name=v", "--ioengine=nbd", "--uri=" + uri,
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0"}, args...)
}

// requireFioNBD skips (fails, in CI) a test when fio lacks its nbd engine.
func requireFioNBD(t *testing.T) {
	t.Helper()
	requireTool(t, "fio")
	if out, _ := runErr("fio", "--enghelp"); !strings.Contains(" "+strings.Join(strings.Fields(out), " ")+" ", " nbd ") {
		if ci() {
			t.Fatalf("tests: fio --enghelp does not list the nbd engine:\n%s", out)
		}
		t.Skip("tests: fio has no nbd engine")
	}
}

// checkFio fails unless fio's JSON report shows every job without error and
// with I/O actually done.
func checkFio(t testing.TB, out string) {
	t.Helper()
	// fio's nbd engine prints "fio: connected to NBD server" before the JSON.
	i := strings.Index(out, "{")
	if i < 0 {
		t.Fatalf("tests: no JSON in fio output:\n%s", out)
	}
	var rep struct {
		Jobs []struct {
			Name  string `json:"jobname"`
			Error int    `json:"error"`
			Read  struct {
				IOBytes int64   `json:"io_bytes"`
				IOPS    float64 `json:"iops"`
			} `json:"read"`
			Write struct {
				IOBytes int64   `json:"io_bytes"`
				IOPS    float64 `json:"iops"`
			} `json:"write"`
		} `json:"jobs"`
	}
	dec := json.NewDecoder(strings.NewReader(out[i:]))
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("tests: fio JSON: %v\n%s", err, out)
	}
	if len(rep.Jobs) == 0 {
		t.Fatalf("tests: fio ran no jobs:\n%s", out)
	}
	for _, j := range rep.Jobs {
		if j.Error != 0 {
			t.Errorf("tests: fio job %s: error %d", j.Name, j.Error)
		}
		if j.Write.IOBytes == 0 {
			t.Errorf("tests: fio job %s wrote nothing", j.Name)
		}
		if j.Read.IOBytes == 0 {
			t.Errorf("tests: fio job %s read nothing (verify did not run?)", j.Name)
		}
		t.Logf("fio %s: read %d B (%.0f IOPS), write %d B (%.0f IOPS)", j.Name,
			j.Read.IOBytes, j.Read.IOPS, j.Write.IOBytes, j.Write.IOPS)
	}
	if strings.Contains(out, "verify: bad") || strings.Contains(out, "fio: pid=") {
		t.Errorf("tests: fio reported problems:\n%s", out)
	}
}
