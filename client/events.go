package client

import (
	"sync"
	"sync/atomic"
	"time"
)

// Event types, in the order a reconnect produces them.
const (
	EventLost            = "lost"             // the session died; Detail says why
	EventReconnectFailed = "reconnect-failed" // one attempt; Detail says why
	EventServerRestarted = "server-restarted" // the new session found a new server instance
	EventReplaying       = "replaying"        // Count writes of Size bytes to write again
	EventReplayProgress  = "replay-progress"  // Count written again so far; Detail the tenth reached
	EventReplayed        = "replayed"         // Count unflushed writes written again
	EventReconnected     = "reconnected"      // at Epoch, Count transactions resent
	EventTimeout         = "timeout"          // Count transactions failed at their deadline
	EventChecksumRetry   = "checksum-retry"   // a transaction sent again after a bad checksum
	EventFailed          = "failed"           // for good; Detail says why
	EventClosed          = "closed"
	// Told by the server on the control stream.
	EventResized        = "resized"         // the export grew to Size bytes
	EventServerStopping = "server-stopping" // Detail is the server's reason
)

// Event is a change in an attachment's state (dst events).
type Event struct {
	Time   time.Time `json:"time"`
	Type   string    `json:"type"`
	Epoch  uint64    `json:"epoch,omitempty"`
	Count  int       `json:"count,omitempty"`
	Size   uint64    `json:"size,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// events fans an attachment's events out to subscribers. A subscriber that
// does not keep up loses events (counted) rather than slowing I/O.
type events struct {
	mu      sync.Mutex
	subs    map[chan Event]struct{}
	dropped atomic.Uint64
}

func (h *events) emit(e Event) {
	e.Time = time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- e:
		default:
			h.dropped.Add(1)
		}
	}
}

// Subscribe returns a channel of the attachment's events from now on,
// buffered for n, and a function that ends the subscription. Events a
// full channel cannot take are dropped (EventsDropped counts them).
func (a *Attachment) Subscribe(n int) (<-chan Event, func()) {
	ch := make(chan Event, n)
	h := &a.events
	h.mu.Lock()
	if h.subs == nil {
		h.subs = make(map[chan Event]struct{})
	}
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			h.mu.Lock()
			delete(h.subs, ch)
			h.mu.Unlock()
		})
	}
}

// EventsDropped counts events that subscribers were too slow to take.
func (a *Attachment) EventsDropped() uint64 { return a.events.dropped.Load() }
