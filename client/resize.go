package client

import (
	"github.com/dstproject/dst/wire"
)

// An export may grow while attached: the server tells its sessions in an
// EVENT (wire.EventResized), and a reconnect may find it larger. The
// attachment's size only grows; front ends follow it (Resized).

// Size is the export's size as the attachment serves it now.
func (a *Attachment) Size() uint64 { return a.size.Load() }

// Resized receives a value after Size grew; several growths between two
// receives arrive as one. A kernel front end resizes its device on it.
func (a *Attachment) Resized() <-chan struct{} { return a.resized }

// grow serves size n from now on if it is larger than the current size.
func (a *Attachment) grow(n uint64) {
	for {
		cur := a.size.Load()
		if n <= cur {
			if n < cur {
				a.log.Warn("the server describes the export as smaller than when attached; keeping the size",
					"export", a.export.Name, "size", cur, "server_size", n)
			}
			return
		}
		if a.size.CompareAndSwap(cur, n) {
			a.log.Info("export grew", "export", a.export.Name, "from", cur, "to", n)
			a.events.emit(Event{Type: EventResized, Size: n})
			select {
			case a.resized <- struct{}{}:
			default:
			}
			return
		}
	}
}

// serverEvent handles an EVENT from the server. Kinds this client does
// not know are ignored, as the protocol asks.
func (a *Attachment) serverEvent(e wire.Event) {
	switch e.Kind {
	case wire.EventResized:
		if e.Export == a.export.Name && e.Size%uint64(a.export.LogicalBlock) == 0 {
			a.grow(e.Size)
		}
	case wire.EventShutdown:
		a.log.Info("the server is stopping; reconnecting when it returns", "server", a.cfg.Server, "why", e.Message)
		a.events.emit(Event{Type: EventServerStopping, Detail: e.Message})
	}
}
