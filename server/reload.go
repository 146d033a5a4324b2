package server

import (
	"errors"
	"fmt"
	"time"
)

// Reloadable exports. The export table is replaced whole (SetExports, on
// SIGHUP): an export that is new opens and appears in SERVER_INFO for new
// sessions; one whose configuration is unchanged stays as it is, its
// queues untouched; one that was removed, or changed (path, read-only,
// volatile), leaves the table. Its queue connections then drain: the
// server stops reading them, answers what is in flight, and closes them,
// so nothing acknowledged is lost and nothing half-read is applied. A
// changed export's clients reconnect and find the new one, with the same
// identity where the disk is the same (the identity lives with the
// disk); a removed export's clients are refused it. Its backend closes
// once no queue is bound to it.

// exportTable is an immutable set of exports.
type exportTable struct {
	byName map[string]*export
	names  []string // configuration order
}

func (t *exportTable) add(e *export) {
	t.byName[e.cfg.Name] = e
	t.names = append(t.names, e.cfg.Name)
}

// closeOwned closes the backends the server opened, when New fails:
// backends passed in stay the caller's until New succeeds.
func (t *exportTable) closeOwned() {
	for _, e := range t.byName {
		if e.owned {
			e.b.Close()
		}
	}
}

// uses reports whether an export of t has backend b.
func (t *exportTable) uses(b Backend) bool {
	for _, e := range t.byName {
		if e.b == b {
			return true
		}
	}
	return false
}

func (t *exportTable) closeAll() error {
	var errs []error
	for _, e := range t.byName {
		if err := e.b.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sameConfig reports whether an export configured as b can stay the
// export configured as a.
func sameConfig(a, b ExportConfig) bool {
	return a.Name == b.Name && a.Path == b.Path && a.Upstream == b.Upstream && a.Connections == b.Connections && a.ReadOnly == b.ReadOnly &&
		a.Volatile == b.Volatile && a.Shared == b.Shared && a.Backend == b.Backend
}

func (e *export) acquire() {
	e.usersMu.Lock()
	e.users++
	e.usersMu.Unlock()
}

func (e *export) release() {
	e.usersMu.Lock()
	e.users--
	if e.users == 0 && e.drained != nil {
		close(e.drained)
		e.drained = nil
	}
	e.usersMu.Unlock()
}

// retire marks the export removed and returns a channel closed once no
// queue is bound to it.
func (e *export) retire() <-chan struct{} {
	e.usersMu.Lock()
	defer e.usersMu.Unlock()
	e.removed.Store(true)
	ch := make(chan struct{})
	if e.users == 0 {
		close(ch)
	} else {
		e.drained = ch
	}
	return ch
}

// ExportChange is what SetExports did to one export.
type ExportChange struct {
	Export string
	Change string // "added", "removed" or "changed"
}

// SetExports replaces the export table with exports. New exports are
// opened first; if any fails to open, or the list is not valid, nothing
// changes and the error says why. Then exports that were removed or
// changed drain their queue connections (see above) in the background,
// and their backends close when the last queue has gone.
func (s *Server) SetExports(exports []ExportConfig) ([]ExportChange, error) {
	if err := checkExports(exports); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	s.exportsMu.Lock()
	defer s.exportsMu.Unlock()
	old := s.table.Load()
	t := &exportTable{byName: make(map[string]*export)}
	var opened []*export
	var changes []ExportChange
	for _, ec := range exports {
		if e := old.byName[ec.Name]; e != nil && sameConfig(e.cfg, ec) {
			t.add(e)
			continue
		}
		e, err := s.openExport(ec)
		if err != nil {
			for _, o := range opened {
				o.b.Close()
			}
			return nil, err
		}
		opened = append(opened, e)
		t.add(e)
		change := "added"
		if old.byName[ec.Name] != nil {
			change = "changed"
		}
		changes = append(changes, ExportChange{Export: ec.Name, Change: change})
	}
	if err := s.checkInfo(t); err != nil {
		for _, o := range opened {
			o.b.Close()
		}
		return nil, err
	}
	s.table.Store(t)
	for _, name := range old.names {
		e := old.byName[name]
		if t.byName[name] == e {
			continue
		}
		if t.byName[name] == nil {
			changes = append(changes, ExportChange{Export: name, Change: "removed"})
		}
		s.drainExport(e)
	}
	for _, c := range changes {
		s.log.Info("export "+c.Change, "export", c.Export)
	}
	return changes, nil
}

// drainExport stops the queue connections bound to e from reading, lets
// them answer what they have in flight and close, then closes e's backend.
func (s *Server) drainExport(e *export) {
	drained := e.retire()
	sessions := s.liveSessions()
	n := 0
	for _, se := range sessions {
		se.mu.Lock()
		for q := range se.queues {
			if q.exp == e {
				q.drain()
				n++
			}
		}
		se.mu.Unlock()
	}
	if n > 0 {
		s.log.Info("draining the queues of a removed or changed export", "export", e.cfg.Name, "queues", n)
	}
	s.retiring.Add(1)
	go func() {
		defer s.retiring.Done()
		<-drained
		if s.table.Load().uses(e.b) {
			return // a changed export given the same Backend object
		}
		if err := e.b.Close(); err != nil {
			s.log.Warn("closing a removed export", "export", e.cfg.Name, "err", err)
		}
	}()
}

// drain makes the connection's reader stop, so that serve answers what is
// in flight and closes the connection.
func (q *queueConn) drain() {
	q.draining.Store(true)
	q.conn.SetReadDeadline(time.Now())
}
