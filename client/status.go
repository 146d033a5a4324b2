package client

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/internal/rawio"
	"github.com/dstproject/dst/wire"
)

// Attachment states, as Status reports them.
const (
	StateConnected    = "connected"
	StateReconnecting = "reconnecting"
	StateFailed       = "failed" // for good: the export's identity changed
	StateClosed       = "closed"
)

// Status is what an attachment is doing, for operators (dst status).
type Status struct {
	Server     string    `json:"server"`
	Export     string    `json:"export"`
	Identity   string    `json:"identity"`   // the export's, hex
	Size       uint64    `json:"size"`       // the export's, bytes
	Attachment string    `json:"attachment"` // this attachment's id, hex
	State      string    `json:"state"`
	Since      time.Time `json:"since"`           // when State began
	Error      string    `json:"error,omitempty"` // why the connection was lost, or the attachment failed
	Epoch      uint64    `json:"epoch"`
	Queues     int       `json:"queues"` // queue connections per session
	InFlight   int       `json:"in_flight"`
	// RTT is the round-trip time of the last keepalive (PING to PONG) on
	// the current session; zero while there is none.
	RTT time.Duration `json:"rtt_ns"`
	// Replay is the progress of a replay to a restarted server, while
	// one runs.
	Replay *ReplayStatus `json:"replay,omitempty"`
	// BusyPoll counts the rounds of polling before sleeping and how they
	// ended (AttachConfig.BusyPoll), when it is on.
	BusyPoll *rawio.PollStats `json:"busy_poll,omitempty"`
	Stats    Stats            `json:"stats"`
	// Latency holds percentiles of completed requests since the attach,
	// per operation: read, write, flush, other (trim, write zeroes).
	Latency map[string]Percentiles `json:"latency"`
}

// ReplayStatus is how far a replay to a restarted server has come.
type ReplayStatus struct {
	Writes    int64 `json:"writes"`
	Done      int64 `json:"done"`
	Bytes     int64 `json:"bytes"`
	DoneBytes int64 `json:"done_bytes"`
}

// Percentiles of request latency, from the submission to the completion.
// Each is the upper bound of its histogram bucket (buckets are a quarter
// octave wide, so within 25%).
type Percentiles struct {
	Count uint64        `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
	P999  time.Duration `json:"p99_9_ns"`
}

// stateTracker keeps the attachment's state for Status.
type stateTracker struct {
	mu    sync.Mutex
	state string
	since time.Time
	err   string
}

func (s *stateTracker) set(state string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == StateFailed || s.state == StateClosed {
		return // final
	}
	s.state, s.since, s.err = state, time.Now(), ""
	if err != nil {
		s.err = err.Error()
	}
}

func (s *stateTracker) get() (string, time.Time, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state, s.since, s.err
}

// Status reports the attachment's state, counters and latencies.
func (a *Attachment) Status() Status {
	st := Status{
		Server:     a.cfg.Server,
		Export:     a.export.Name,
		Identity:   a.export.Identity.String(),
		Size:       a.Size(),
		Attachment: a.id.String(),
		Epoch:      a.epoch.Load(),
		Queues:     a.cfg.Connections,
		Stats:      a.Stats(),
		Latency:    a.latency.percentiles(),
		Replay:     a.replaying.status(),
	}
	if a.poller != nil {
		ps := a.poller.Stats()
		st.BusyPoll = &ps
	}
	st.State, st.Since, st.Error = a.state.get()
	a.table.mu.Lock()
	st.InFlight = len(a.table.pending)
	g := a.table.gen
	a.table.mu.Unlock()
	if g != nil {
		st.RTT = time.Duration(g.sess.rtt.Load())
	}
	return st
}

// Latency histograms: buckets a quarter octave wide over microseconds,
// counted with atomics on the completion path.
const latencyBuckets = 160 // up to 2^40 µs

// Operations with a histogram each.
const (
	latRead = iota
	latWrite
	latFlush
	latOther
	latOps
)

var latencyOps = [latOps]string{"read", "write", "flush", "other"}

type latencies struct {
	counts [latOps][latencyBuckets]atomic.Uint64
	sums   [latOps]atomic.Int64 // nanoseconds
}

func latencyOp(cmd wire.Cmd) int {
	switch cmd {
	case wire.CmdRead:
		return latRead
	case wire.CmdWrite:
		return latWrite
	case wire.CmdFlush:
		return latFlush
	}
	return latOther
}

// record counts one request of cmd that took d.
func (l *latencies) record(cmd wire.Cmd, d time.Duration) {
	op := latencyOp(cmd)
	l.counts[op][bucketOf(uint64(max(d, 0)/time.Microsecond))].Add(1)
	l.sums[op].Add(int64(d))
}

// bucketOf maps v to its bucket: values below 4 have their own; above,
// each octave [2^k, 2^(k+1)) is split in four by the two bits after the
// leading one.
func bucketOf(v uint64) int {
	if v < 4 {
		return int(v)
	}
	n := bits.Len64(v)
	b := (n-2)*4 + int(v>>(n-3)&3)
	return min(b, latencyBuckets-1)
}

// bucketUpper is the smallest value above bucket b.
func bucketUpper(b int) uint64 {
	if b < 4 {
		return uint64(b) + 1
	}
	n, sub := b/4+2, uint64(b%4)
	return (5 + sub) << (n - 3)
}

func (l *latencies) percentiles() map[string]Percentiles {
	out := make(map[string]Percentiles, latOps)
	for op := range latOps {
		var counts [latencyBuckets]uint64
		var total uint64
		for b := range counts {
			counts[b] = l.counts[op][b].Load()
			total += counts[b]
		}
		p := Percentiles{Count: total}
		if total > 0 {
			p.P50 = quantile(&counts, total, 0.5)
			p.P99 = quantile(&counts, total, 0.99)
			p.P999 = quantile(&counts, total, 0.999)
		}
		out[latencyOps[op]] = p
	}
	return out
}

// quantile returns the upper bound of the bucket holding the q-th value.
func quantile(counts *[latencyBuckets]uint64, total uint64, q float64) time.Duration {
	rank := uint64(q*float64(total-1)) + 1
	var seen uint64
	for b, c := range counts {
		seen += c
		if seen >= rank {
			return time.Duration(bucketUpper(b)) * time.Microsecond
		}
	}
	return 0
}

// Histogram is a latency histogram for export (e.g. to Prometheus):
// Counts[i] requests took at most Bounds[i]; Bounds are powers of two
// microseconds, from 4 µs to about 134 s.
type Histogram struct {
	Bounds []time.Duration
	Counts []uint64 // cumulative
	Count  uint64
	Sum    time.Duration
}

// Latencies returns a histogram per operation (read, write, flush, other).
func (a *Attachment) Latencies() map[string]Histogram {
	out := make(map[string]Histogram, latOps)
	for op := range latOps {
		var h Histogram
		var cum uint64
		for b := range latencyBuckets {
			cum += a.latency.counts[op][b].Load()
			if b%4 == 3 && b <= 103 { // an octave's end: 2^k µs
				h.Bounds = append(h.Bounds, time.Duration(bucketUpper(b))*time.Microsecond)
				h.Counts = append(h.Counts, cum)
			}
		}
		h.Count, h.Sum = cum, time.Duration(a.latency.sums[op].Load())
		out[latencyOps[op]] = h
	}
	return out
}
