package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/internal/faultproxy"
	"github.com/dstproject/dst/internal/verify"
)

// The fault scenarios of issue 3: each runs a verifying workload through
// attach's NBD socket while the proxy or the test breaks the path to the
// server, then reads every block back. Writes the NBD client saw
// acknowledged must be there; errors must reach the NBD client only when
// a fault outlasted the deadline or the disk changed.

// waitFirstSuccess waits until td has seen an operation started after its
// mark succeed, and returns how long that took from the mark.
func waitFirstSuccess(t testing.TB, td *timedDisk, limit time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(limit)
	for td.sinceMark() < 0 {
		if time.Now().After(deadline) {
			last := "none"
			if p := td.lastErr.Load(); p != nil {
				last = *p
			}
			t.Fatalf("tests: no operation succeeded within %v of the fault: %d started after it, %d failed; last error: %s",
				limit, td.startedAfter.Load(), td.failedAfter.Load(), last)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return td.sinceMark()
}

// TestFaultCut cuts every connection three times while writes are in
// flight, the third time with new connections refused for a while, as
// when a restarting server's port is closed. Nothing may fail.
func TestFaultCut(t *testing.T) {
	e := newFaultEnv(t, false)
	c := e.startAttach()
	td := &timedDisk{d: c}
	w := faultWorkload(16, verify.RequireAcked)
	done := runAsync(t, w, td, 5*time.Second)
	var lat []time.Duration
	for i := range 3 {
		time.Sleep(time.Second)
		if i == 2 {
			e.proxy.Refuse(500 * time.Millisecond)
		}
		td.setMark()
		e.proxy.Cut()
		lat = append(lat, waitFirstSuccess(t, td, 10*time.Second))
	}
	<-done
	verifyClean(t, w, c, false)
	st := e.stopAttach()
	ps := e.proxy.Stats()
	t.Logf("cut to first completion of a request submitted after it: %v, %v; with 500ms of refused connections: %v",
		lat[0], lat[1], lat[2])
	t.Logf("attach's reconnect times (loss noticed to resumed): %v; longest request %v",
		e.reconnectTimes(), time.Duration(td.longest.Load()))
	t.Logf("attach: %v; proxy: %+v", st, ps)
	if st.Reconnects < 3 || st.Resent < 1 {
		t.Errorf("tests: %v: want at least 3 reconnects and a resent transaction", st)
	}
	if ps.Cut < 3 || ps.Refused < 1 {
		t.Errorf("tests: proxy %+v: want 3 cuts and a refused connection", ps)
	}
}

// TestFaultServerRestart kills serve with SIGKILL mid-workload and starts
// it again over the same file. With a plain file the page cache outlives
// the process, so even unflushed acknowledged writes must survive, and
// replay rewrites them anyway.
func TestFaultServerRestart(t *testing.T) {
	e := newFaultEnv(t, false)
	c := e.startAttach()
	td := &timedDisk{d: c}
	w := faultWorkload(16, verify.RequireFlushed)
	done := runAsync(t, w, td, 4*time.Second)
	time.Sleep(time.Second)
	e.killServe()
	td.setMark()
	time.Sleep(500 * time.Millisecond)
	e.startServe()
	back := waitFirstSuccess(t, td, 15*time.Second)
	<-done
	rep := verifyClean(t, w, c, false)
	w.Rule = verify.RequireAcked
	acked, err := w.Verify(c)
	if err != nil {
		t.Fatal(err)
	}
	if n := acked.Violated - rep.Violated; n > 0 {
		t.Errorf("tests: %d blocks lost acknowledged writes across the restart: %v", n, acked.Err())
	} else {
		t.Logf("require-acked holds too: %d blocks checked", acked.Checked-rep.Checked)
	}
	st := e.stopAttach()
	t.Logf("kill to first completion: %v (serve down for 500ms); reconnect times %v; attach: %v",
		back, e.reconnectTimes(), st)
	if st.Reconnects < 1 {
		t.Errorf("tests: %v: want a reconnect", st)
	}
}

// TestFaultStallShort stops all traffic for 3 s, longer than the
// keepalive timeout and shorter than the deadline: attach gives up on the
// session, redials (the redial stalls too) and resends, and nothing fails.
func TestFaultStallShort(t *testing.T) {
	e := newFaultEnv(t, false)
	c := e.startAttach()
	td := &timedDisk{d: c}
	w := faultWorkload(16, verify.RequireAcked)
	done := runAsync(t, w, td, 6*time.Second)
	time.Sleep(time.Second)
	e.proxy.Stall(faultproxy.Both)
	time.Sleep(3 * time.Second)
	td.setMark()
	e.proxy.Resume(faultproxy.Both)
	back := waitFirstSuccess(t, td, 10*time.Second)
	<-done
	verifyClean(t, w, c, false)
	st := e.stopAttach()
	t.Logf("resume to first completion %v; longest request %v; reconnect times %v; attach: %v",
		back, time.Duration(td.longest.Load()), e.reconnectTimes(), st)
	if st.Timeouts > 0 {
		t.Errorf("tests: %v: a stall shorter than the deadline timed transactions out", st)
	}
}

// zombieProbe is a write of a unique pattern to a block no workload uses,
// made while the path to the server is stalled.
type zombieProbe struct {
	block   int64
	pattern []byte
	err     error
	took    time.Duration
	done    chan struct{}
}

func startProbe(e *faultEnv, block int64, tag string) *zombieProbe {
	z := &zombieProbe{block: block, pattern: zombiePattern(tag), done: make(chan struct{})}
	go func() {
		defer close(z.done)
		start := time.Now()
		z.err = e.nbd.WriteAt(z.pattern, block*faultBlock, false)
		z.took = time.Since(start)
	}()
	return z
}

// TestFaultStallLong stalls the path for longer than the deadline, while
// the keepalive timeout is longer still: the session stays up, as it
// would with a server frozen with requests in its socket buffer. Every
// request in flight or submitted during the stall must fail with EIO, and
// no write reported failed may ever be applied: the probes written during
// the stall sit in the socket buffers, reach the server when the stall
// ends, and must be refused there as expired.
func TestFaultStallLong(t *testing.T) {
	e := newFaultEnv(t, false)
	c := e.startAttach("--io-timeout", "2s", "--keepalive-timeout", "10s")
	td := &timedDisk{d: c}
	w := faultWorkload(16, verify.RequireAcked)
	done := runAsync(t, w, td, 3500*time.Millisecond)
	time.Sleep(time.Second)
	e.proxy.Stall(faultproxy.Both)
	stallAt := time.Now()
	td.setMark()
	var probes []*zombieProbe
	for i := range 4 {
		probes = append(probes, startProbe(e, int64(faultBlocks+1+i), "in-flight"))
	}
	for _, z := range probes {
		select {
		case <-z.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("tests: probe write to block %d did not complete within 10s", z.block)
		}
		if !isEIO(z.err) {
			t.Errorf("tests: probe write to block %d: %v after %v, want EIO", z.block, z.err, z.took)
		}
	}
	time.Sleep(time.Until(stallAt.Add(5 * time.Second)))
	before := e.proxy.Stats()
	e.proxy.Resume(faultproxy.Both)
	rep := <-done
	// Let the server read and act on everything the stall held back.
	time.Sleep(3 * time.Second)
	after := e.proxy.Stats()

	for _, z := range probes {
		if bytes.Equal(e.fileBlock(z.block), z.pattern) {
			t.Errorf("tests: ZOMBIE WRITE: block %d holds the write that failed with EIO after %v", z.block, z.took)
		}
	}
	// The attachment recovers: reads work again, and show no probe either.
	buf := make([]byte, faultBlock)
	for _, z := range probes {
		if err := readRetry(c, buf, z.block*faultBlock, 10*time.Second); err != nil {
			t.Fatalf("tests: the attachment did not recover: read of block %d: %v", z.block, err)
		}
		if bytes.Equal(buf, z.pattern) {
			t.Errorf("tests: ZOMBIE WRITE: block %d reads back the write that failed", z.block)
		}
	}
	failedInStall := rep.Failed()
	after2 := runFor(t, w, c, 2*time.Second)
	if after2.Failed() != failedInStall {
		t.Errorf("tests: %d requests failed after the stall ended", after2.Failed()-failedInStall)
	}
	verifyClean(t, w, c, true)
	onlyEIO(t, rep)
	if rep.Errors["EIO"] == 0 {
		t.Errorf("tests: no request failed during a stall longer than the deadline")
	}
	log := e.serveLog()
	expired := strings.Count(log, "request expired before it could start; not applied")
	fenced := strings.Count(log, "fenced older sessions")
	// The probes were in the socket buffers: the proxy forwards them when
	// the stall ends, the session is still up, and the server must refuse
	// each one because its deadline, carried as expiry, has passed.
	refused := 0
	for _, z := range probes {
		if expiredAt(log, z.block*faultBlock) {
			refused++
		}
	}
	released := after.ClientToServer - before.ClientToServer
	t.Logf("in-flight probes the server logged as expired after the stall: %d of %d", refused, len(probes))
	if released < int64(len(probes))*faultBlock {
		t.Errorf("tests: only %d bytes reached the server after the stall: the probes were not in flight, "+
			"so the zombie check was not exercised", released)
	}
	if refused != len(probes) {
		t.Errorf("tests: the server refused %d of %d expired probes; each must be logged as expired", refused, len(probes))
	}
	st := e.stopAttach()
	t.Logf("probes: %d writes failed with EIO after %v..%v", len(probes), minTook(probes), maxTook(probes))
	t.Logf("workload requests failed with EIO: %d (started before the stall %d, during it %d)",
		rep.Errors["EIO"], td.failedBefore.Load(), td.failedAfter.Load())
	t.Logf("bytes the proxy forwarded after the stall ended: client-to-server %d, server-to-client %d",
		after.ClientToServer-before.ClientToServer, after.ServerToClient-before.ServerToClient)
	t.Logf("serve log: %d requests expired before they could start, %d fencing lines; attach: %v", expired, fenced, st)
	if st.Timeouts == 0 {
		t.Errorf("tests: %v: want timed-out transactions", st)
	}
}

// readRetry reads until a read succeeds or limit passes: while attach
// reconnects, reads can still run into the short deadline.
func readRetry(c verify.Disk, p []byte, off int64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		err := c.ReadAt(p, off)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// expiredAt reports whether serve logged a request at off as expired.
func expiredAt(log string, off int64) bool {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "request expired before it could start") &&
			strings.Contains(l, fmt.Sprintf(" offset=%d ", off)) {
			return true
		}
	}
	return false
}

func minTook(zs []*zombieProbe) time.Duration {
	m := zs[0].took
	for _, z := range zs {
		m = min(m, z.took)
	}
	return m
}

func maxTook(zs []*zombieProbe) time.Duration {
	m := zs[0].took
	for _, z := range zs {
		m = max(m, z.took)
	}
	return m
}

// TestFaultCorrupt flips one byte in the encrypted stream, once in each
// direction. The record fails authentication, the session ends, and the
// client resends on a new one: nothing fails.
func TestFaultCorrupt(t *testing.T) {
	for _, dir := range []faultproxy.Direction{faultproxy.ClientToServer, faultproxy.ServerToClient} {
		t.Run(dir.String(), func(t *testing.T) {
			e := newFaultEnv(t, false)
			// One queue connection beside the control connection,
			// whose keepalives add a few hundred bytes a second: the
			// proxy's byte count is about the queue connection's stream
			// offset, and the queue is the connection that reaches
			// the corrupted offset first.
			c := e.startAttach("--connections", "1")
			w := faultWorkload(16, verify.RequireAcked)
			done := runAsync(t, w, c, 4*time.Second)
			time.Sleep(time.Second)
			ps := e.proxy.Stats()
			if ps.Accepted != 2 {
				t.Fatalf("tests: %d connections so far, want 2 (control and queue): the stream offset would be unknown", ps.Accepted)
			}
			pos := ps.ClientToServer
			if dir == faultproxy.ServerToClient {
				pos = ps.ServerToClient
			}
			off := pos + 256<<10
			e.proxy.CorruptAt(dir, off, 0x20)
			deadline := time.Now().Add(3 * time.Second)
			for e.proxy.Stats().Corruptions == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			<-done
			verifyClean(t, w, c, false)
			st := e.stopAttach()
			ps = e.proxy.Stats()
			t.Logf("flipped the byte at %s offset %d; attach: %v; proxy: %+v", dir, off, st, ps)
			if ps.Corruptions != 1 {
				t.Fatalf("tests: %d bytes corrupted, want 1", ps.Corruptions)
			}
			if st.Reconnects < 1 {
				t.Errorf("tests: %v: a corrupted record did not end the session", st)
			}
			if e.serve.exited() {
				t.Errorf("tests: serve exited: %v", e.serve.err)
			}
		})
	}
}

// TestFaultIdentityChange restarts serve with a different file behind the
// same export name. Attach must refuse to carry on: pending and later
// requests fail with EIO, it says why, and the new file is not written.
func TestFaultIdentityChange(t *testing.T) {
	e := newFaultEnv(t, false)
	c := e.startAttach()
	w := faultWorkload(16, verify.RequireAcked)
	done := runAsync(t, w, c, 3*time.Second)
	time.Sleep(time.Second)
	e.killServe()
	e.newBackingFile()
	e.startServe()
	rep := <-done
	t.Logf("workload: %v", &rep)
	onlyEIO(t, rep)
	if rep.Errors["EIO"] == 0 {
		t.Errorf("tests: no request failed although the disk changed")
	}
	if err := c.WriteAt(zombiePattern("after"), 0, false); !isEIO(err) {
		t.Errorf("tests: write after the change: %v, want EIO", err)
	}
	if err := c.ReadAt(make([]byte, faultBlock), 0); !isEIO(err) {
		t.Errorf("tests: read after the change: %v, want EIO", err)
	}
	time.Sleep(time.Second) // anything still on its way to the new file
	data, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.IndexFunc(data, func(r rune) bool { return r != 0 }); i >= 0 {
		t.Errorf("tests: the new file was written at offset %d", i)
	}
	if e.att.exited() {
		t.Errorf("tests: attach exited (%v); it must keep failing requests instead", e.att.err)
	}
	out := e.att.out.String()
	var why []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "identity") {
			why = append(why, l)
		}
	}
	if len(why) == 0 {
		t.Errorf("tests: attach did not log the identity change")
	}
	st := e.stopAttach()
	t.Logf("attach: %v; its lines naming the identity:\n%s", st, strings.Join(why, "\n"))
}

// TestFaultVolatileCrash kills a serve whose export has a volatile write
// cache: acknowledged writes not yet flushed die with it. With replay,
// attach writes them again and every one is there; without, some are
// lost, which shows the check can fail.
func TestFaultVolatileCrash(t *testing.T) {
	for _, replay := range []bool{true, false} {
		name := map[bool]string{true: "replay", false: "no-replay"}[replay]
		t.Run(name, func(t *testing.T) {
			e := newFaultEnv(t, true)
			var extra []string
			if !replay {
				extra = []string{"--replay-buffer", "0"}
			}
			c := e.startAttach(extra...)
			w := faultWorkload(16, verify.RequireAcked)
			w.FlushPercent, w.ReadPercent, w.FUAPercent = 1, 20, 5
			if !replay {
				// The control must lose something: a crash landing just
				// after a FLUSH could find nothing unflushed to lose.
				w.FlushPercent = 0
			}
			// The workload stops issuing at the crash, so that what the
			// crash lost is not overwritten before Verify reads it; what
			// was in flight completes after the restart.
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			done := runUntil(t, ctx, w, c, 3*time.Second)
			time.Sleep(1500 * time.Millisecond)
			e.killServe()
			stop()
			time.Sleep(200 * time.Millisecond)
			e.startServe()
			<-done
			rep, err := w.Verify(c)
			if err != nil {
				t.Fatal(err)
			}
			st := e.stopAttach()
			t.Logf("workload: %v", &rep)
			t.Logf("attach: %v", st)
			if rep.Failed() > 0 {
				t.Errorf("tests: %d errors reached the NBD client: %v %q", rep.Failed(), rep.Errors, rep.FirstErrors)
			}
			if replay {
				if err := rep.Err(); err != nil {
					t.Errorf("tests: acknowledged writes lost despite replay: %v", err)
				}
				if st.Replayed == 0 {
					t.Errorf("tests: %v: nothing replayed", st)
				}
				return
			}
			if rep.Violated == 0 {
				t.Errorf("tests: without replay the crash lost no acknowledged write: the check cannot tell")
			} else {
				t.Logf("without replay: %d violations (lost acknowledged writes), as expected; first: %v",
					rep.Violated, rep.Violations[0])
			}
		})
	}
}

// TestPausedAttachKeepsSession stops dst attach (SIGSTOP) for four times
// its keepalive timeout, twice, as a host that pauses its VM or real-time
// tasks that take its CPUs would: the server answered every PING
// meanwhile, so attach keeps its session (no reconnect) and serves at
// once. Before attach spared a tick that came late, it gave up its session
// after every such pause (4 of 4 by hand, and this test).
func TestPausedAttachKeepsSession(t *testing.T) {
	e := newFaultEnv(t, false)
	c := e.startAttach()
	p := bytes.Repeat([]byte{0x5a}, faultBlock)
	if err := c.WriteAt(p, 0, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, faultBlock)
	for range 2 {
		if err := e.att.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * time.Second) // faultAttachArgs: --keepalive-timeout 1s
		if err := e.att.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // ten keepalive intervals
		if err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("tests: a read after the pause: %v, data right %v", err, bytes.Equal(got, p))
		}
	}
	if st := e.stopAttach(); st.Reconnects != 0 {
		t.Errorf("tests: attach: %v; it gave up a session whose server answered while it was paused", st)
	}
}
