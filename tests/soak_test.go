package tests

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/faultproxy"
	"github.com/dstproject/dst/internal/verify"
)

// defaultSoak is the soak's length unless DST_SOAK_DURATION says otherwise
// (scripts/test --long sets 20 minutes). The end-to-end suite runs twice
// (once with a -race dst), so CI keeps it at two minutes or less.
const defaultSoak = 2 * time.Minute

// soakInterval is the time from one fault to the next; soakQuiet is the
// fault-free end of the run, so the last fault's requests complete before
// the workload stops.
const (
	soakInterval = 3 * time.Second
	soakQuiet    = 3 * time.Second
)

// soakFault injects one kind of fault; it returns when the fault is over
// from the test's side (the attachment may still be recovering).
type soakFault struct {
	name   string
	inject func(e *faultEnv, n int)
}

var soakFaults = []soakFault{
	{"cut", func(e *faultEnv, _ int) { e.proxy.Cut() }},
	{"stall", func(e *faultEnv, _ int) {
		// Past the keepalive timeout, well within the deadline.
		e.proxy.Stall(faultproxy.Both)
		time.Sleep(2 * time.Second)
		e.proxy.Resume(faultproxy.Both)
	}},
	{"restart", func(e *faultEnv, _ int) {
		e.killServe()
		time.Sleep(300 * time.Millisecond)
		e.startServe()
	}},
	{"corrupt", func(e *faultEnv, n int) {
		dir := faultproxy.ClientToServer
		if n%2 == 1 {
			dir = faultproxy.ServerToClient
		}
		// A byte past the handshakes of connections opening now, on
		// whichever connection carries it.
		e.proxy.CorruptSoon(dir, 256<<10, 0x10)
	}},
	{"refuse", func(e *faultEnv, _ int) {
		e.proxy.Refuse(1500 * time.Millisecond)
		e.proxy.Cut()
	}},
}

func soakDuration(t *testing.T) time.Duration {
	v := os.Getenv("DST_SOAK_DURATION")
	if v == "" {
		return defaultSoak
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 2*soakQuiet {
		t.Fatalf("tests: DST_SOAK_DURATION=%q: want a duration of at least %v", v, 2*soakQuiet)
	}
	return d
}

// TestSoak runs QD32 mixed random I/O with verification for
// DST_SOAK_DURATION (2 minutes) while a fault strikes every few seconds,
// rotating among cut, stall, server SIGKILL and restart, a corrupted
// byte, and refused connections. No error may reach the NBD client and
// every acknowledged write must read back.
func TestSoak(t *testing.T) {
	dur := soakDuration(t)
	e := newFaultEnv(t, false)
	c := e.startAttach()
	w := faultWorkload(32, verify.RequireAcked)
	w.Blocks = 1024
	start := time.Now()
	done := runAsync(t, w, c, dur)

	faults := make(map[string]int)
	for n := 0; ; n++ {
		next := start.Add(time.Duration(n+1) * soakInterval)
		if next.After(start.Add(dur - soakQuiet)) {
			break
		}
		time.Sleep(time.Until(next))
		f := soakFaults[n%len(soakFaults)]
		f.inject(e, n/len(soakFaults))
		faults[f.name]++
	}
	<-done
	took := time.Since(start)
	rep := verifyClean(t, w, c, false)
	if e.serve.exited() {
		t.Errorf("tests: serve exited: %v", e.serve.err)
	}
	st := e.stopAttach()
	ps := e.proxy.Stats()
	recon := e.reconnectTimes()
	slices.Sort(recon)

	var kinds []string
	total := 0
	for _, f := range soakFaults {
		kinds = append(kinds, fmt.Sprintf("%s=%d", f.name, faults[f.name]))
		total += faults[f.name]
	}
	t.Logf("proxy: %+v (corruptions asked %d)", ps, faults["corrupt"])
	if len(recon) > 0 {
		t.Logf("reconnect times (loss noticed to resumed): min %v, median %v, max %v over %d",
			recon[0], recon[len(recon)/2], recon[len(recon)-1], len(recon))
	}
	ops := rep.Reads.Issued + rep.Writes.Issued + rep.Flushes.Issued
	t.Logf("SOAK: %v, %d ops (%d reads, %d writes, %d flushes, %.0f ops/s), faults %d (%s), "+
		"reconnects %d, resent %d, replayed %d, timeouts %d, checksum retries %d, "+
		"errors at the NBD client %d, violations %d, blocks verified %d",
		took.Round(time.Second), ops, rep.Reads.Issued, rep.Writes.Issued, rep.Flushes.Issued,
		float64(ops)/took.Seconds(), total, strings.Join(kinds, " "),
		st.Reconnects, st.Resent, st.Replayed, st.Timeouts, st.ChecksumRetries,
		rep.Failed(), rep.Violated, rep.Checked)
	if total == 0 {
		t.Errorf("tests: the soak injected no fault")
	}
	if st.Reconnects == 0 {
		t.Errorf("tests: %v: no reconnect during the soak", st)
	}
	// Each corruption strikes the next 256 KiB of traffic, and traffic
	// flows for the quiet end after the last fault.
	if asked := int64(faults["corrupt"]); ps.Corruptions != asked {
		t.Errorf("tests: %d of %d corruptions reached a stream", ps.Corruptions, asked)
	}
}
