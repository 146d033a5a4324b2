package server

import (
	"fmt"
	"time"
)

// One writer at a time. Two hosts mounting one ext4 destroy it, so a
// read-write queue connection must hold its export's writer lease, which
// belongs to one attachment (the client key and HELLO's attachment id,
// across all its sessions and epochs). A read-write queue of another
// attachment is refused with EBUSY and a message naming the holder;
// read-only queues (wire.QueueReadOnly) need no lease and may join.
//
// The lease outlives its holder's last session by Config.LeaseGrace, for
// the holder to reconnect; a holder that closes says BYE and lets go at
// once. A lapsed lease goes to the next writer, and the old holder, should
// it come back, is refused like any other attachment: it never writes
// after another has. wire.QueueTakeOver takes a held lease at once after
// fencing the holder's sessions (their requests already on the backend
// finish first, nothing else of theirs starts), so a takeover never
// interleaves with a zombie. Shared exports (ExportConfig.Shared) have no
// lease: cluster file systems coordinate their own writers.

// DefaultLeaseGrace is how long a writer lease waits for its holder to
// reconnect: as long as a client's default I/O timeout, after which the
// holder's own requests have failed anyway.
const DefaultLeaseGrace = 2 * time.Minute

// lease is an export's writer lease. Under Server.fenceMu.
type lease struct {
	holder  *attachment
	comment string // the holder's key comment, for the refusal
	remote  string // the address it took the lease from
	since   time.Time
}

// leaseError refuses a writer: it names the holder.
type leaseError struct {
	export string
	l      lease
}

func (e *leaseError) Error() string {
	return fmt.Sprintf("export %q is held for writing by %s; attach read-only, "+
		"or take it over (dst attach --take-over) once that client is gone", e.export, e.l.holderText())
}

// holderText names the holder: key comment, address, since when.
func (l *lease) holderText() string {
	who := l.comment
	if who == "" {
		who = "a client"
	}
	return fmt.Sprintf("%s (%s) since %s", who, l.remote, l.since.UTC().Format(time.RFC3339))
}

// lapsed reports whether l's holder has no session and has been gone for
// longer than the grace, or said BYE.
func (s *Server) lapsed(l *lease, now time.Time) bool {
	a := l.holder
	return len(a.sessions) == 0 && (a.bye || now.Sub(a.idle) > s.cfg.LeaseGrace)
}

// acquireLease gives se's attachment the writer lease of e, unless e is
// shared or another attachment holds it; with takeOver, the holder's
// sessions are fenced and the lease changes hands.
func (s *Server) acquireLease(se *session, e *export, takeOver bool) error {
	if e.cfg.Shared {
		return nil
	}
	name := e.cfg.Name
	now := time.Now()
	s.fenceMu.Lock()
	a := se.attach
	l := s.leases[name]
	var fence []*session
	switch {
	case l == nil || l.holder == a || s.lapsed(l, now):
	case takeOver || l.holder.bye:
		// A holder that said BYE is closing; its sessions may not have
		// ended yet, so they are fenced like a take-over's: what they
		// have on the backend finishes before the new writer starts.
		for o := range l.holder.sessions {
			fence = append(fence, o)
		}
		if takeOver {
			se.log.Warn("taking over the writer lease", "export", name, "holder", l.comment,
				"holder_remote", l.remote, "fenced", len(fence))
		}
	default:
		err := &leaseError{export: name, l: *l}
		s.fenceMu.Unlock()
		return err
	}
	if l == nil || l.holder != a {
		comment, _ := s.authorized.Load().Contains(se.key)
		l = &lease{holder: a, comment: comment, remote: se.conn.RemoteAddr().String(), since: now}
		s.leases[name] = l
	}
	s.fenceMu.Unlock()
	for _, o := range fence {
		o.fence()
	}
	return nil
}

// leaseStatus describes who holds e's writer lease, for dst serve status.
func (s *Server) leaseStatus(name string) string {
	s.fenceMu.Lock()
	defer s.fenceMu.Unlock()
	l := s.leases[name]
	if l == nil || s.lapsed(l, time.Now()) {
		return ""
	}
	return l.holderText()
}

// sayBye records that se's client closed its attachment (BYE): once its
// sessions have ended, its leases are free at once.
func (s *Server) sayBye(se *session) {
	s.fenceMu.Lock()
	defer s.fenceMu.Unlock()
	if se.attach != nil {
		se.attach.bye = true
	}
}
