package server

import (
	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/wire"
)

// Per-key access. An authorized key may be limited to some exports and to
// reading (crypto.Access, from options in authorized_keys). A session sees
// only the exports its key may open, in SERVER_INFO, and sees them
// read-only if the key is; a queue for any other export is refused as if
// the export did not exist. A reload applies at once (SetAuthorized): a
// session that lost an export it has open ends, one that became read-only
// gets EPERM on its next write.

// accessOf returns the session's access now.
func (se *session) accessOf() *crypto.Access { return se.access.Load() }

// view is export e as a key with access acc sees it, on a read-only
// queue if ro.
func view(e wire.ExportInfo, acc *crypto.Access, ro bool) wire.ExportInfo {
	if acc.ReadOnly || ro {
		e.Flags |= wire.ExportReadOnly
		e.Flags &^= wire.ExportTrim | wire.ExportWriteZeroes
	}
	return e
}

// infoFor is SERVER_INFO as a key with access acc sees it.
func (s *Server) infoFor(acc *crypto.Access) wire.ServerInfo {
	info := s.Info()
	exports := info.Exports[:0]
	for _, e := range info.Exports {
		if acc.Allows(e.Name) {
			exports = append(exports, view(e, acc, false))
		}
	}
	info.Exports = exports
	return info
}

// visible lists the names of the exports acc may see.
func (s *Server) visible(acc *crypto.Access) []string {
	var names []string
	for _, n := range s.table.Load().names {
		if acc.Allows(n) {
			names = append(names, n)
		}
	}
	return names
}

// lostExport returns an export the session has a queue open on that acc
// no longer allows, or "".
func (se *session) lostExport(acc *crypto.Access) string {
	se.mu.Lock()
	defer se.mu.Unlock()
	for q := range se.queues {
		if !acc.Allows(q.exp.info.Name) {
			return q.exp.info.Name
		}
	}
	return ""
}
