// Package metrics exports dst's counters to Prometheus: a collector for an
// attachment and one for a server, read at each scrape from what the
// client and server packages already count (their Status), so the data
// path pays nothing for them.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/dstproject/dst/client"
	"github.com/dstproject/dst/internal/bufpool"
	"github.com/dstproject/dst/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Serve answers /metrics on l with the collectors, and the Go runtime's and
// the process's own, until ctx ends.
func Serve(ctx context.Context, l net.Listener, cs ...prometheus.Collector) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(arenaGauges()...)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: 16 << 10}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// arenaGauges report the process's payload arenas (internal/bufpool): the
// address space each reserved, and how much of it buffers have taken,
// which stays with the process (part of its resident memory).
func arenaGauges() []prometheus.Collector {
	var cs []prometheus.Collector
	for _, a := range []struct {
		name, holds string
		usage       func() (size, used int)
	}{
		{"dst_payload_arena", "payload buffers of 64 KiB and more", bufpool.Reserved},
		{"dst_payload_small_arena", "payload buffers under 64 KiB", bufpool.ReservedSmall},
	} {
		cs = append(cs,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: a.name + "_reserved_bytes",
				Help: "Address space reserved for " + a.holds + " (0: they come from the Go heap)."},
				func() float64 { size, _ := a.usage(); return float64(size) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: a.name + "_used_bytes",
				Help: "Bytes of the arena for " + a.holds + " that buffers have taken; they stay with the process, for reuse."},
				func() float64 { _, used := a.usage(); return float64(used) }))
	}
	return cs
}

// Client collects an attachment's metrics, labelled with its name.
type Client struct {
	a      *client.Attachment
	labels prometheus.Labels

	requests, duration, connected, epoch, inFlight, rtt, replayBytes, replayEntries *prometheus.Desc
	reconnects, resent, replayed, timeouts, checksumRetries                         *prometheus.Desc
}

// NewClient returns a collector for a, whose series carry the label
// attachment=name.
func NewClient(a *client.Attachment, name string) *Client {
	l := prometheus.Labels{"attachment": name}
	d := func(n, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("dst_client_"+n, help, labels, l)
	}
	return &Client{a: a, labels: l,
		requests:        d("requests_total", "Requests completed, by operation.", "op"),
		duration:        d("request_duration_seconds", "Time from a request's submission to its completion.", "op"),
		connected:       d("connected", "1 while the attachment has a session with its server."),
		epoch:           d("epoch", "The latest session epoch dialed."),
		inFlight:        d("in_flight_requests", "Requests waiting for their reply."),
		rtt:             d("keepalive_rtt_seconds", "Round-trip time of the last keepalive."),
		replayBytes:     d("replay_log_bytes", "Acknowledged write bytes not yet durable on the server, kept for replay."),
		replayEntries:   d("replay_log_writes", "Acknowledged writes not yet durable on the server, kept for replay."),
		reconnects:      d("reconnects_total", "Sessions dialed after the first."),
		resent:          d("resent_total", "Transactions sent again after a reconnect."),
		replayed:        d("replayed_total", "Acknowledged writes written again to a restarted server."),
		timeouts:        d("timeouts_total", "Transactions failed at their deadline."),
		checksumRetries: d("checksum_retries_total", "Transactions sent again after a checksum failure."),
	}
}

// Describe implements prometheus.Collector.
func (c *Client) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.duration, c.connected, c.epoch, c.inFlight, c.rtt,
		c.replayBytes, c.replayEntries, c.reconnects, c.resent, c.replayed, c.timeouts, c.checksumRetries} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Client) Collect(ch chan<- prometheus.Metric) {
	st := c.a.Status()
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	connected := 0.0
	if st.State == client.StateConnected {
		connected = 1
	}
	gauge(c.connected, connected)
	gauge(c.epoch, float64(st.Epoch))
	gauge(c.inFlight, float64(st.InFlight))
	gauge(c.rtt, st.RTT.Seconds())
	gauge(c.replayBytes, float64(st.Stats.ReplayBytes))
	gauge(c.replayEntries, float64(st.Stats.ReplayEntries))
	counter(c.reconnects, st.Stats.Reconnects)
	counter(c.resent, st.Stats.Resent)
	counter(c.replayed, st.Stats.Replayed)
	counter(c.timeouts, st.Stats.Timeouts)
	counter(c.checksumRetries, st.Stats.ChecksumRetries)
	for op, h := range c.a.Latencies() {
		ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(h.Count), op)
		buckets := make(map[float64]uint64, len(h.Bounds))
		for i, b := range h.Bounds {
			buckets[b.Seconds()] = h.Counts[i]
		}
		ch <- prometheus.MustNewConstHistogram(c.duration, h.Count, h.Sum.Seconds(), buckets, op)
	}
}

// Server collects a server's metrics.
type Server struct {
	s *server.Server

	sessions, sessionsTotal, queues, exports, requests, read, written *prometheus.Desc
}

// NewServer returns a collector for s.
func NewServer(s *server.Server) *Server {
	d := func(n, help string) *prometheus.Desc { return prometheus.NewDesc("dst_server_"+n, help, nil, nil) }
	return &Server{s: s,
		sessions:      d("sessions", "Open client sessions."),
		sessionsTotal: d("sessions_total", "Client sessions begun."),
		queues:        d("queue_connections", "Open queue connections."),
		exports:       d("exports", "Exports served."),
		requests:      d("requests_total", "Requests answered."),
		read:          d("read_bytes_total", "READ payload bytes served."),
		written:       d("written_bytes_total", "WRITE payload bytes applied."),
	}
}

// Describe implements prometheus.Collector.
func (c *Server) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sessions, c.sessionsTotal, c.queues, c.exports, c.requests, c.read, c.written} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Server) Collect(ch chan<- prometheus.Metric) {
	t := c.s.Totals()
	m := func(d *prometheus.Desc, typ prometheus.ValueType, v float64) {
		ch <- prometheus.MustNewConstMetric(d, typ, v)
	}
	m(c.sessions, prometheus.GaugeValue, float64(t.Live))
	m(c.sessionsTotal, prometheus.CounterValue, float64(t.Sessions))
	m(c.queues, prometheus.GaugeValue, float64(t.Queues))
	m(c.exports, prometheus.GaugeValue, float64(len(c.s.Info().Exports)))
	m(c.requests, prometheus.CounterValue, float64(t.Requests))
	m(c.read, prometheus.CounterValue, float64(t.BytesRead))
	m(c.written, prometheus.CounterValue, float64(t.BytesWritten))
}
