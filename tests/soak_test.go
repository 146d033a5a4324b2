package tests

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
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

// streamTracker follows where in its stream the newest proxied connection
// is, so a corruption can be aimed past the handshake of the connection
// carrying traffic. It polls the proxy's counters: the base it records for
// a new connection may include a few milliseconds of that connection's
// bytes, so an aimed offset may fall behind the connection's position;
// the proxy then applies it to the next connection at the same offset,
// which is just as far from its handshake.
type streamTracker struct {
	p    *faultproxy.Proxy
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	accepted int64
	base     faultproxy.Stats
}

func trackStreams(p *faultproxy.Proxy) *streamTracker {
	s := &streamTracker{p: p, stop: make(chan struct{}), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *streamTracker) loop() {
	defer close(s.done)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		st := s.p.Stats()
		s.mu.Lock()
		if st.Accepted != s.accepted {
			s.accepted, s.base = st.Accepted, st
		}
		s.mu.Unlock()
	}
}

// position is the newest connection's offset in dir's stream, about.
func (s *streamTracker) position(dir faultproxy.Direction) int64 {
	st := s.p.Stats()
	s.mu.Lock()
	defer s.mu.Unlock()
	if dir == faultproxy.ServerToClient {
		return st.ServerToClient - s.base.ServerToClient
	}
	return st.ClientToServer - s.base.ClientToServer
}

func (s *streamTracker) close() {
	close(s.stop)
	<-s.done
}

// soakFault injects one kind of fault; it returns when the fault is over
// from the test's side (the attachment may still be recovering).
type soakFault struct {
	name   string
	inject func(e *faultEnv, tr *streamTracker, n int)
}

var soakFaults = []soakFault{
	{"cut", func(e *faultEnv, _ *streamTracker, _ int) { e.proxy.Cut() }},
	{"stall", func(e *faultEnv, _ *streamTracker, _ int) {
		// Past the keepalive timeout, well within the deadline.
		e.proxy.Stall(faultproxy.Both)
		time.Sleep(2 * time.Second)
		e.proxy.Resume(faultproxy.Both)
	}},
	{"restart", func(e *faultEnv, _ *streamTracker, _ int) {
		e.killServe()
		time.Sleep(300 * time.Millisecond)
		e.startServe()
	}},
	{"corrupt", func(e *faultEnv, tr *streamTracker, n int) {
		dir := faultproxy.ClientToServer
		if n%2 == 1 {
			dir = faultproxy.ServerToClient
		}
		e.proxy.CorruptAt(dir, tr.position(dir)+256<<10, 0x10)
	}},
	{"refuse", func(e *faultEnv, _ *streamTracker, _ int) {
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
	tr := trackStreams(e.proxy)
	defer tr.close()
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
		f.inject(e, tr, n/len(soakFaults))
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
}
