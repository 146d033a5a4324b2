package client_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/dstproject/dst/client"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/internal/verify"
	"github.com/dstproject/dst/server/servertest"
	"github.com/dstproject/dst/wire"
)

// crashServer is a server over one file on an address that stays the same
// across crashes (servertest.Restartable). With a volatile write cache, a
// crash (Stop) throws away every write not flushed, as a power loss
// would; a restart is a new server instance over the same file.
type crashServer struct{ *servertest.Restartable }

func newCrashServer(t *testing.T, size int64, volatile bool) *crashServer {
	t.Helper()
	return &crashServer{servertest.NewRestartable(t, servertest.RestartOptions{Size: size, Volatile: volatile})}
}

func (s *crashServer) attach(t *testing.T, replay int64) *client.Attachment {
	t.Helper()
	a, err := client.Attach(context.Background(), &client.AttachConfig{
		Config: client.Config{Server: s.Addr, PrivateKey: s.ClientKey, ServerKey: s.ServerKey.Public(),
			Logger: testsupport.Logger(t), DialTimeout: 5 * time.Second},
		Export:            "disk",
		IOTimeout:         20 * time.Second,
		KeepaliveInterval: 100 * time.Millisecond,
		KeepaliveTimeout:  time.Second,
		ReplayBuffer:      replay,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// deviceDisk drives an Attachment as a verify.Disk: one request at a time
// per call, waiting for its completion.
type deviceDisk struct{ d *client.Attachment }

// errStuck marks a request that never completed; the attachment's own
// deadline is shorter, so it means a lost completion.
var errStuck = errors.New("no completion within a minute")

func (x deviceDisk) do(cmd wire.Cmd, flags wire.ReqFlags, off int64, p []byte) error {
	ch := make(chan error, 1)
	x.d.Submit(client.Request{Cmd: cmd, Flags: flags, Offset: uint64(off), Length: uint32(len(p)), Data: p,
		Done: client.CompleteFunc(func(err error) { ch <- err })})
	select {
	case err := <-ch:
		return err
	case <-time.After(time.Minute):
		return errStuck
	}
}

func (x deviceDisk) ReadAt(p []byte, off int64) error { return x.do(wire.CmdRead, 0, off, p) }

func (x deviceDisk) WriteAt(p []byte, off int64, fua bool) error {
	var f wire.ReqFlags
	if fua {
		f = wire.FlagFUA
	}
	return x.do(wire.CmdWrite, f, off, p)
}

func (x deviceDisk) Flush() error { return x.do(wire.CmdFlush, 0, 0, nil) }

// crashRun is the outcome of a series of crash points.
type crashRun struct {
	points   int
	bad      int // crash points after which Verify found new violations
	violated int64
	rep      verify.Report
	stats    client.Stats
	took     time.Duration
}

// crashPoints runs a random write+flush workload, with fua percent of the
// writes FUA, on one attachment and crashes the server at random moments,
// up to points times or until budget is spent; after each crash and
// restart it reads every block back under RequireAcked. stopAtViolation
// ends the series at the first violation, which is all a run without
// replay needs to show.
func crashPoints(t *testing.T, replay int64, fua, points int, budget time.Duration, stopAtViolation bool) crashRun {
	s := newCrashServer(t, 4<<20, true)
	a := s.attach(t, replay)
	d := deviceDisk{a}
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	w := &verify.Workload{BlockSize: 4096, Blocks: 128, Depth: 8, Rule: verify.RequireAcked, Seed: seed,
		FlushPercent: 4, ReadPercent: 20, FUAPercent: fua}
	start := time.Now()
	var run crashRun
	for run.points < points && time.Since(start) < budget {
		w.Ops = int64(50 + r.IntN(400))
		done := make(chan error, 1)
		go func() { done <- w.Run(context.Background(), d) }()
		// Anywhere from before the first write to after the last.
		time.Sleep(time.Duration(r.IntN(40)) * time.Millisecond)
		s.Stop()
		s.Start()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		run.points++
		before := w.Report().Violated
		rep, err := w.Verify(d)
		if err != nil {
			t.Fatalf("crash point %d: %v", run.points, err)
		}
		if rep.Failed() > 0 {
			t.Fatalf("crash point %d: %d requests failed: %v %q", run.points, rep.Failed(), rep.Errors, rep.FirstErrors)
		}
		if rep.Violated > before {
			run.bad++
		}
		if stopAtViolation && rep.Violated > 0 {
			break
		}
	}
	run.took = time.Since(start)
	run.rep = w.Report()
	run.violated = run.rep.Violated
	run.stats = a.Stats()
	return run
}

// TestCrashConsistency: at every crash point of a server whose write cache
// dies with it, every write the client saw acknowledged must be on the
// disk afterwards, flushed or replayed. One series has plain writes only,
// the other some FUA writes among them. DST_CRASH_POINTS sets the number
// of crash points per series (100).
func TestCrashConsistency(t *testing.T) {
	points := 100
	if v := os.Getenv("DST_CRASH_POINTS"); v != "" {
		var err error
		if points, err = strconv.Atoi(v); err != nil {
			t.Fatalf("DST_CRASH_POINTS=%q: %v", v, err)
		}
	}
	for _, fua := range []int{0, 5} {
		t.Run(fmt.Sprintf("fua-%d%%", fua), func(t *testing.T) {
			run := crashPoints(t, 0, fua, points, 60*time.Second, false)
			t.Logf("replay on: %d crash points in %v, %d with violations, %d violations; workload %v; stats %+v",
				run.points, run.took.Round(time.Millisecond), run.bad, run.violated, &run.rep, run.stats)
			if run.violated > 0 {
				t.Errorf("acknowledged writes lost: %v", run.rep.Err())
			}
			if run.points < points/2 {
				t.Errorf("only %d of %d crash points ran within the time budget", run.points, points)
			}
			if run.stats.Replayed == 0 {
				t.Errorf("nothing was ever replayed: the crashes never hit unflushed writes")
			}
		})
	}
}

// TestCrashConsistencyWithoutReplay shows the check above can fail: with
// replay off, crashes lose acknowledged writes.
func TestCrashConsistencyWithoutReplay(t *testing.T) {
	run := crashPoints(t, -1, 5, 40, 20*time.Second, true)
	t.Logf("replay off: %d crash points in %v until a violation; %d violations; stats %+v",
		run.points, run.took.Round(time.Millisecond), run.violated, run.stats)
	if run.violated == 0 {
		t.Errorf("%d crash points without replay lost nothing: the check cannot tell", run.points)
	} else {
		t.Logf("first violation: %v", run.rep.Violations[0])
	}
}

// TestCrashReplayAfterFUA: a write acknowledged without FUA and then an
// overlapping one with FUA; after the server restarts, the block must hold
// the second. The replay log keeps only the first, so replaying it must
// not put it back over the second. With a plain file nothing was even
// lost: the restart alone must not change the block.
func TestCrashReplayAfterFUA(t *testing.T) {
	for _, volatile := range []bool{true, false} {
		t.Run(map[bool]string{true: "volatile", false: "plain"}[volatile], func(t *testing.T) {
			s := newCrashServer(t, 1<<20, volatile)
			d := deviceDisk{s.attach(t, 0)}
			older, newer := make([]byte, 4096), make([]byte, 4096)
			for i := range older {
				older[i], newer[i] = 'o', 'n'
			}
			if err := d.WriteAt(older, 0, false); err != nil {
				t.Fatal(err)
			}
			if err := d.WriteAt(newer, 0, true); err != nil {
				t.Fatal(err)
			}
			s.Stop()
			s.Start()
			got := make([]byte, 4096)
			if err := d.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if got[0] != 'n' {
				t.Fatalf("after the restart the block holds %q..., the write acknowledged before the FUA write "+
					"that replaced it", got[:8])
			}
		})
	}
}
