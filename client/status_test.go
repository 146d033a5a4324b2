package client

import (
	"context"
	"testing"
	"time"

	"github.com/dstproject/dst/wire"
)

func TestLatencyBuckets(t *testing.T) {
	// Every value lies below its bucket's upper bound and at or above the
	// previous bucket's, and a bucket is at most a quarter octave wide.
	for v := uint64(0); v < 1<<20; v += 1 + v/64 {
		b := bucketOf(v)
		if up := bucketUpper(b); v >= up || up > v+v/4+1 {
			t.Fatalf("value %d in bucket %d whose upper bound is %d", v, b, up)
		}
		if b > 0 && v < bucketUpper(b-1) {
			t.Fatalf("value %d in bucket %d, but below bucket %d's upper bound %d", v, b, b-1, bucketUpper(b-1))
		}
	}
	if b := bucketOf(1 << 62); b != latencyBuckets-1 {
		t.Fatalf("a huge value in bucket %d, want the last", b)
	}
}

func TestLatencyPercentiles(t *testing.T) {
	var l latencies
	for i := range 1000 {
		d := 100 * time.Microsecond
		if i >= 990 {
			d = 10 * time.Millisecond // the slowest 1%
		}
		l.record(wire.CmdRead, d)
	}
	l.record(wire.CmdTrim, time.Millisecond)
	p := l.percentiles()
	r := p["read"]
	if r.Count != 1000 {
		t.Fatalf("read count %d", r.Count)
	}
	within := func(name string, got, want time.Duration) {
		if got < want || got > want+want/4 {
			t.Errorf("%s = %v, want %v to %v", name, got, want, want+want/4)
		}
	}
	within("p50", r.P50, 100*time.Microsecond)
	within("p99", r.P99, 100*time.Microsecond) // the 990th value of 1000
	within("p99.9", r.P999, 10*time.Millisecond)
	if p["other"].Count != 1 || p["write"].Count != 0 || p["write"].P50 != 0 {
		t.Errorf("other %+v, write %+v", p["other"], p["write"])
	}
}

// TestStatus: Status follows the attachment through I/O, the server's
// loss (reconnecting, with why) and Close.
func TestStatus(t *testing.T) {
	env := newEnv(t, "pipe", 1<<20)
	cfg := &AttachConfig{Config: *env.config(), Export: "disk", Connections: 2,
		KeepaliveInterval: 20 * time.Millisecond, KeepaliveTimeout: 300 * time.Millisecond}
	a, err := Attach(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for range 10 {
		if err := do(a, wire.CmdWrite, 0, 0, 4096, make([]byte, 4096)); err != nil {
			t.Fatal(err)
		}
	}
	if err := do(a, wire.CmdRead, 0, 0, 4096, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.Status().RTT == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st := a.Status()
	if st.State != StateConnected || st.Export != "disk" || st.Queues != 2 || st.Epoch != 1 ||
		st.Identity != a.Export().Identity.String() || st.InFlight != 0 || st.RTT <= 0 || st.RTT > time.Second {
		t.Fatalf("status %+v", st)
	}
	if w, r := st.Latency["write"], st.Latency["read"]; w.Count != 10 || r.Count != 1 || w.P50 <= 0 || w.P999 < w.P50 {
		t.Fatalf("latency %+v", st.Latency)
	}
	if st.Stats.ReplayEntries != 10 {
		t.Errorf("replay entries %d, want 10 unflushed writes", st.Stats.ReplayEntries)
	}

	env.srv.Close()
	for a.Status().State != StateReconnecting && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	st = a.Status()
	if st.State != StateReconnecting || st.Error == "" || time.Since(st.Since) > 5*time.Second {
		t.Fatalf("after the server closed: %+v", st)
	}
	a.Close()
	if st := a.Status(); st.State != StateClosed {
		t.Fatalf("after Close: state %q", st.State)
	}
}
