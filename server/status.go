package server

import (
	"sort"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/wire"
)

// Status is what a server is serving and to whom, for operators
// (dst serve status).
type Status struct {
	Instance string          `json:"instance"` // new at every start
	Exports  []ExportStatus  `json:"exports"`
	Sessions []SessionStatus `json:"sessions"`
}

// ExportStatus describes one export.
type ExportStatus struct {
	Name     string `json:"name"`
	Size     uint64 `json:"size"`
	ReadOnly bool   `json:"read_only"`
	Identity string `json:"identity"`
	Queues   int    `json:"queues"` // queue connections open to it
	Shared   bool   `json:"shared,omitempty"`
	// Writer names the holder of the writer lease: key comment, address,
	// since when; empty when none holds it.
	Writer string `json:"writer,omitempty"`
}

// SessionStatus describes one client session: its control connection and
// the queue connections bound to it.
type SessionStatus struct {
	Key        string    `json:"key"`
	Comment    string    `json:"comment,omitempty"` // from authorized_keys
	Remote     string    `json:"remote"`
	Client     string    `json:"client,omitempty"`     // the host name HELLO gave
	Attachment string    `json:"attachment,omitempty"` // hex; empty: no fencing
	Epoch      uint64    `json:"epoch"`
	Since      time.Time `json:"since"`
	Fenced     bool      `json:"fenced"` // a newer session of the attachment took over
	Queues     int       `json:"queues"`
	// Access is what the key may do: "all exports rw", "exports=a,b ro".
	Access    string `json:"access"`
	InFlight  int    `json:"in_flight"`
	Requests  uint64 `json:"requests"`
	BytesRead uint64 `json:"bytes_read"`
	// BytesWritten counts WRITE payloads applied.
	BytesWritten uint64 `json:"bytes_written"`
}

// Status reports the server's exports and live sessions.
func (s *Server) Status() Status {
	st := Status{Instance: s.instance.Load().String()}
	queues := map[*export]int{}
	auth := s.authorized.Load()
	sessions := s.liveSessions()
	for _, se := range sessions {
		ss := SessionStatus{
			Key:    se.key.String(),
			Remote: se.conn.RemoteAddr().String(),
			Since:  se.since,
		}
		if auth != nil {
			ss.Comment, _ = auth.Contains(se.key)
		}
		if acc := se.accessOf(); acc != nil {
			ss.Access = acc.String()
		}
		se.mu.Lock()
		if !se.token.IsZero() {
			ss.Client, ss.Epoch = se.hello.Client, se.hello.Epoch
			if !se.hello.Attachment.IsZero() {
				ss.Attachment = se.hello.Attachment.String()
			}
		}
		ss.Queues = len(se.queues)
		for q := range se.queues {
			ss.InFlight += q.budget.InFlight()
			queues[q.exp]++
		}
		c := se.servedLocked()
		se.mu.Unlock()
		ss.Requests, ss.BytesRead, ss.BytesWritten = c.Requests, c.BytesRead, c.BytesWritten
		se.gate.RLock()
		ss.Fenced = se.fenced
		se.gate.RUnlock()
		st.Sessions = append(st.Sessions, ss)
	}
	sort.Slice(st.Sessions, func(i, j int) bool { return st.Sessions[i].Since.Before(st.Sessions[j].Since) })
	t := s.table.Load()
	for _, name := range t.names {
		e := t.byName[name]
		st.Exports = append(st.Exports, ExportStatus{
			Name: name, Size: e.size.Load(), ReadOnly: e.readOnly,
			Identity: e.info.Identity.String(), Queues: queues[e],
			Shared: e.cfg.Shared, Writer: s.leaseStatus(name),
		})
	}
	return st
}

// Totals counts what a server has served since it started, for metrics:
// requests answered, READ and WRITE payload bytes, and sessions begun
// (Sessions) or open (Live).
type Totals struct {
	Sessions uint64
	Live     int
	Queues   int
	servedCounts
}

// Totals returns the server's counters, live sessions included.
func (s *Server) Totals() Totals {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.ended
	for se := range s.sessions {
		t.Sessions++
		t.Live++
		se.mu.Lock()
		t.Queues += len(se.queues)
		t.add(se.servedLocked())
		se.mu.Unlock()
	}
	return t
}

// served counts what one queue connection answered.
type served struct {
	requests, bytesRead, bytesWritten atomic.Uint64
}

// add counts o, whose reply is going out.
func (s *served) add(o *op) {
	s.requests.Add(1)
	if o.status != wire.StatusOK {
		return
	}
	switch o.req.Cmd {
	case wire.CmdRead:
		s.bytesRead.Add(uint64(o.req.Length))
	case wire.CmdWrite:
		s.bytesWritten.Add(uint64(o.req.Length))
	}
}

func (s *served) load() servedCounts {
	return servedCounts{s.requests.Load(), s.bytesRead.Load(), s.bytesWritten.Load()}
}

// servedCounts is a sum of served: requests answered, READ and WRITE
// payload bytes.
type servedCounts struct {
	Requests, BytesRead, BytesWritten uint64
}

func (c *servedCounts) add(d servedCounts) {
	c.Requests += d.Requests
	c.BytesRead += d.BytesRead
	c.BytesWritten += d.BytesWritten
}

// servedLocked is what se has served, its live queue connections
// included; se.mu must be held.
func (se *session) servedLocked() servedCounts {
	c := se.past
	for q := range se.queues {
		c.add(q.served.load())
	}
	return c
}
