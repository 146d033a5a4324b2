package server

import (
	"time"

	"github.com/dstproject/dst/wire"
)

// Exports may grow while they are served: a file truncated larger, a
// logical volume extended. The server looks again every SizeCheck (and
// when asked, on SIGHUP), serves the new size at once and tells the
// sessions that asked for events (wire.HelloEvents), whose clients resize
// their devices. An export never shrinks while served: a client may have
// a file system reaching to its end, so a smaller size is logged and the
// old one kept; requests past the real end then fail as the backend fails
// them.

// DefaultSizeCheck is how often a server looks for exports that grew.
const DefaultSizeCheck = 5 * time.Second

// eventTimeout bounds the write of one event to a session's control
// stream; a client that does not read its stream that long is stuck, and
// its keepalive ends it anyway.
const eventTimeout = 10 * time.Second

// Refresher is implemented by backends whose storage can grow while
// served. Refresh reads its size again, rounded down to whole logical
// blocks.
type Refresher interface {
	Refresh() (int64, error)
}

// Resize is an export that grew, as CheckSizes reports it.
type Resize struct {
	Export   string
	From, To uint64
}

// CheckSizes looks for exports whose storage grew, serves their new size
// and tells their clients. It returns the exports that grew.
func (s *Server) CheckSizes() []Resize {
	s.resizeMu.Lock()
	defer s.resizeMu.Unlock()
	var grew []Resize
	t := s.table.Load()
	for _, name := range t.names {
		e := t.byName[name]
		r, ok := e.b.(Refresher)
		if !ok {
			continue
		}
		n, err := r.Refresh()
		if err != nil {
			s.log.Warn("checking export size", "export", name, "err", err)
			continue
		}
		cur := e.size.Load()
		switch {
		case n > 0 && uint64(n) > cur:
			e.size.Store(uint64(n))
			e.shrunk = 0
			s.log.Info("export grew", "export", name, "from", cur, "to", n)
			grew = append(grew, Resize{Export: name, From: cur, To: uint64(n)})
			s.broadcast(&wire.Event{Kind: wire.EventResized, Export: name, Size: uint64(n)})
		case uint64(n) < cur && n != e.shrunk:
			e.shrunk = n
			s.log.Warn("export is smaller than its clients were told; still serving the old size, "+
				"and requests past the new end fail", "export", name, "size", cur, "now", n)
		}
	}
	return grew
}

// checkSizes runs CheckSizes every interval until the server closes.
func (s *Server) checkSizes(interval time.Duration) {
	defer s.active.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			s.CheckSizes()
		}
	}
}

// broadcast sends an event to every session that asked for events. Each
// is written by its own goroutine, so a client that does not read holds
// up only itself.
func (s *Server) broadcast(ev *wire.Event) {
	msg := wire.AppendMessage(nil, wire.MsgEvent, wire.AppendEvent(nil, ev))
	s.mu.Lock()
	defer s.mu.Unlock()
	for se := range s.sessions {
		if acc := se.accessOf(); acc == nil || ev.Export == "" || acc.Allows(ev.Export) {
			go se.sendEvent(msg)
		}
	}
}

// sendEvent writes an event on the session's control stream, if the
// client asked for events. SERVER_INFO goes first (serveHello holds
// eventMu until it is written).
func (se *session) sendEvent(msg []byte) {
	se.mu.Lock()
	st, want := se.ctl, se.hello.Flags&wire.HelloEvents != 0
	se.mu.Unlock()
	if st == nil || !want {
		return
	}
	se.eventMu.Lock()
	defer se.eventMu.Unlock()
	st.SetWriteDeadline(time.Now().Add(eventTimeout))
	if _, err := st.Write(msg); err != nil {
		se.log.Debug("writing EVENT", "err", err)
	}
	st.SetWriteDeadline(time.Time{})
}

// notifyShutdown tells every session that asked for events that the
// server is stopping, and waits up to wait for the events to be written.
func (s *Server) NotifyShutdown(why string, wait time.Duration) {
	msg := wire.AppendMessage(nil, wire.MsgEvent, wire.AppendEvent(nil, &wire.Event{Kind: wire.EventShutdown, Message: why}))
	sessions := s.liveSessions()
	done := make(chan struct{}, len(sessions))
	for _, se := range sessions {
		go func() { se.sendEvent(msg); done <- struct{}{} }()
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for range sessions {
		select {
		case <-done:
		case <-timer.C:
			return
		}
	}
}
