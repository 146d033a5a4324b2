package server

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/wire"
)

// Fencing keeps a client's old sessions from writing after its new one
// took over. A client names its attachment and numbers its sessions
// (HELLO's attachment and epoch). When a session with a higher epoch
// arrives, every older session of the attachment is fenced: it starts no
// more requests, the requests it already started run to completion, and
// only then is the new session answered. The client resends on the new
// session whatever the old ones did not answer, so without the fence an
// old copy of a write could land after a newer write to the same block.
// wire/PROTOCOL.md ("Fencing") has the whole argument.

// attachKey names an attachment: the client's key and its choice of id,
// so one client cannot fence another's sessions.
type attachKey struct {
	key crypto.PublicKey
	id  wire.Identity
}

// attachment is the server's record of one client attachment.
type attachment struct {
	epoch    uint64
	sessions map[*session]struct{}
	idle     time.Time // when its last session ended
	bye      bool      // its client said BYE: it is closing (lease.go)
}

// Bounds on the attachment records kept after their sessions end: long
// enough to refuse a stale epoch that straggles in, few enough that
// clients cannot grow the table without bound.
const (
	attachIdle = 10 * time.Minute
	maxAttach  = 4096
)

var errStale = errors.New("server: a newer session of this attachment exists")

// admit registers se as a session of attachment id at epoch, after
// fencing the attachment's older sessions. It returns errStale if a newer
// epoch has been seen.
func (s *Server) admit(se *session, k attachKey, epoch uint64) error {
	s.fenceMu.Lock()
	a := s.attach[k]
	if a == nil {
		s.pruneAttach()
		a = &attachment{sessions: make(map[*session]struct{})}
		s.attach[k] = a
	}
	if epoch < a.epoch {
		s.fenceMu.Unlock()
		return errStale
	}
	var old []*session
	if epoch > a.epoch {
		a.epoch = epoch
		for o := range a.sessions {
			old = append(old, o)
			delete(a.sessions, o)
		}
	}
	a.sessions[se] = struct{}{}
	a.bye = false
	se.attach, se.attachKey = a, k
	s.fenceMu.Unlock()

	for _, o := range old {
		o.fence()
	}
	if len(old) > 0 {
		se.log.Info("fenced older sessions of the attachment", "epoch", epoch, "fenced", len(old))
	}
	return nil
}

// admitUnfenced gives a session that opted out of fencing (an all-zero
// attachment id) a record of its own, which its writer leases belong to.
func (s *Server) admitUnfenced(se *session) {
	s.fenceMu.Lock()
	defer s.fenceMu.Unlock()
	se.attach = &attachment{sessions: map[*session]struct{}{se: {}}}
}

// leave removes an ended session from its attachment's record.
func (s *Server) leave(se *session) {
	s.fenceMu.Lock()
	defer s.fenceMu.Unlock()
	if a := se.attach; a != nil {
		delete(a.sessions, se)
		if len(a.sessions) == 0 {
			a.idle = time.Now()
		}
	}
}

// pruneAttach forgets attachments idle for long, and the longest idle ones
// when the table is full. Called with fenceMu held.
func (s *Server) pruneAttach() {
	now := time.Now()
	var oldest attachKey
	var oldestIdle time.Time
	for k, a := range s.attach {
		if len(a.sessions) > 0 {
			continue
		}
		if now.Sub(a.idle) > attachIdle {
			delete(s.attach, k)
			continue
		}
		if oldestIdle.IsZero() || a.idle.Before(oldestIdle) {
			oldest, oldestIdle = k, a.idle
		}
	}
	if len(s.attach) >= maxAttach && !oldestIdle.IsZero() {
		delete(s.attach, oldest)
	}
}

// fence stops se from starting requests, waits for those it started, and
// ends it and its queue connections.
func (se *session) fence() {
	se.closing.Store(true)
	se.gate.Lock()
	se.fenced = true
	se.gate.Unlock()
	se.close()
}

// isEnded reports whether se has been fenced or has ended.
func (se *session) isEnded() bool {
	se.gate.RLock()
	defer se.gate.RUnlock()
	return se.fenced || se.ended
}

// begin is called before a request touches the backend; if it returns OK,
// the caller must call end when the backend call returns. A fenced session
// starts nothing, and neither does a request whose client has given up on
// it by now.
func (se *session) begin(r *wire.Request) wire.Status {
	se.gate.RLock()
	if se.fenced {
		se.gate.RUnlock()
		return wire.StatusESTALE
	}
	if se.ended {
		// Not ESHUTDOWN, which would fail the transaction: the client
		// sends an ESTALE request again on its next session.
		se.gate.RUnlock()
		return wire.StatusESTALE
	}
	if r.Expires != 0 && serverClock() >= r.Expires {
		se.gate.RUnlock()
		return wire.StatusETIMEDOUT
	}
	return wire.StatusOK
}

func (se *session) end() { se.gate.RUnlock() }

// sessionGate is embedded in session: gate is held shared by every
// request in progress on the backend and exclusively by fence.
type sessionGate struct {
	gate   sync.RWMutex
	fenced bool // under gate: a newer session, or a revocation, fenced it
	// closing is set before fence or shutdown waits for gate: requests
	// waiting for a lost upstream give up then (upstream.go).
	closing   atomic.Bool
	ended     bool // under gate: it has ended, and starts nothing more
	attach    *attachment
	attachKey attachKey
}
