package client

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/dstproject/dst/wire"
)

// Bulk transfers.
//
// A process that carries one request at a time spends most of each
// request waking up, and wakes fewer threads with one P (GOMAXPROCS=1):
// with two, each goroutine a socket makes runnable also wakes a spinning
// thread that finds nothing to do. A sequential copy is the other way
// round: its large payloads are sealed by the goroutine that reads the
// request and opened by the one that reads the reply, and with one P those
// two take turns on one CPU while the other CPU waits. dst attach keeps
// one P and takes a second while the attachment carries bulk transfers
// (AttachConfig.BulkLoad); bulkWatch says when.
//
// A bulk moment is a READ or WRITE of at least bulkRequest bytes entering
// the table behind at least two others. The first one turns bulk load on;
// it turns off once bulkIdle passes with none.

const (
	bulkRequest = 64 << 10
	bulkIdle    = 250 * time.Millisecond
)

// bulkWatch tells its notify function when bulk load starts and stops.
// A nil bulkWatch watches nothing.
type bulkWatch struct {
	notify  func(on bool)
	moments atomic.Uint64
	on      atomic.Bool // read without mu on every bulk moment

	mu     sync.Mutex // serializes turning on and off, and notify
	seen   uint64     // moments when the timer last looked
	timer  *time.Timer
	closed bool
}

func newBulkWatch(notify func(on bool)) *bulkWatch {
	if notify == nil {
		return nil
	}
	return &bulkWatch{notify: notify}
}

// entered is told of each transaction entering the table, with the number
// pending then (itself included).
func (w *bulkWatch) entered(h *wire.Request, pending int) {
	if w == nil || pending <= 2 || h.Length < bulkRequest || h.Cmd != wire.CmdRead && h.Cmd != wire.CmdWrite {
		return
	}
	w.moments.Add(1)
	if w.on.Load() {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.on.Load() || w.closed {
		return
	}
	w.on.Store(true)
	w.notify(true)
	w.seen = w.moments.Load()
	if w.timer == nil {
		w.timer = time.AfterFunc(bulkIdle, w.check)
	} else {
		w.timer.Reset(bulkIdle)
	}
}

// check runs bulkIdle after bulk load turned on or was last seen going
// on, and turns it off if no bulk moment came since.
func (w *bulkWatch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || !w.on.Load() {
		return
	}
	if m := w.moments.Load(); m != w.seen {
		w.seen = m
		w.timer.Reset(bulkIdle)
		return
	}
	w.on.Store(false)
	w.notify(false)
}

// stop turns bulk load off for good.
func (w *bulkWatch) stop() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.timer != nil {
		w.timer.Stop()
	}
	if w.on.Load() {
		w.on.Store(false)
		w.notify(false)
	}
}
