package server

import (
	"sort"
	"time"
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
	InFlight   int       `json:"in_flight"`
	Requests   uint64    `json:"requests"`
	BytesRead  uint64    `json:"bytes_read"`
	// BytesWritten counts WRITE payloads applied.
	BytesWritten uint64 `json:"bytes_written"`
}

// Status reports the server's exports and live sessions.
func (s *Server) Status() Status {
	st := Status{Instance: s.info.Instance.String()}
	queues := map[*export]int{}
	auth := s.authorized.Load()
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for se := range s.sessions {
		sessions = append(sessions, se)
	}
	s.mu.Unlock()
	for _, se := range sessions {
		ss := SessionStatus{
			Key:          se.key.String(),
			Remote:       se.conn.RemoteAddr().String(),
			Since:        se.since,
			Requests:     se.requests.Load(),
			BytesRead:    se.bytesRead.Load(),
			BytesWritten: se.bytesWritten.Load(),
		}
		if auth != nil {
			ss.Comment, _ = auth.Contains(se.key)
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
		se.mu.Unlock()
		se.gate.RLock()
		ss.Fenced = se.fenced
		se.gate.RUnlock()
		st.Sessions = append(st.Sessions, ss)
	}
	sort.Slice(st.Sessions, func(i, j int) bool { return st.Sessions[i].Since.Before(st.Sessions[j].Since) })
	for _, name := range s.names {
		e := s.exports[name]
		st.Exports = append(st.Exports, ExportStatus{
			Name: name, Size: e.info.Size, ReadOnly: e.readOnly,
			Identity: e.info.Identity.String(), Queues: queues[e],
		})
	}
	return st
}

// Totals counts what a server has served since it started, for metrics:
// requests answered, READ and WRITE payload bytes, and sessions begun
// (Sessions) or open (Live).
type Totals struct {
	Sessions     uint64
	Live         int
	Queues       int
	Requests     uint64
	BytesRead    uint64
	BytesWritten uint64
}

// Totals returns the server's counters, live sessions included.
func (s *Server) Totals() Totals {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.ended
	for se := range s.sessions {
		t.Sessions++
		t.Live++
		t.Requests += se.requests.Load()
		t.BytesRead += se.bytesRead.Load()
		t.BytesWritten += se.bytesWritten.Load()
		se.mu.Lock()
		t.Queues += len(se.queues)
		se.mu.Unlock()
	}
	return t
}
