package client

import (
	"fmt"
	"syscall"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/wire"
)

// The Attachment behind an NBD front end: each nbd.Request becomes a
// Request completed by the nbd.Request itself, which is a Completer and a
// BufferOwner, so the adaptation allocates nothing.

// NBDExport describes the attachment to an NBD front end.
func (a *Attachment) NBDExport() *nbd.Export {
	e := a.export
	maxBlock := min(e.MaxTransfer, wire.MaxPayload)
	return &nbd.Export{
		Name:               e.Name,
		Description:        fmt.Sprintf("dst export %s on %s", e.Name, a.cfg.Server),
		Size:               e.Size,
		CurrentSize:        a.Size,
		MinBlockSize:       e.LogicalBlock,
		PreferredBlockSize: e.PhysicalBlock,
		MaxBlockSize:       maxBlock,
		ReadOnly:           e.Flags&wire.ExportReadOnly != 0,
		Flush:              e.Flags&wire.ExportFlush != 0,
		FUA:                e.Flags&wire.ExportFUA != 0,
		Trim:               e.Flags&wire.ExportTrim != 0,
		WriteZeroes:        e.Flags&wire.ExportWriteZeroes != 0,
		Rotational:         e.Flags&wire.ExportRotational != 0,
		MultiConn:          e.Flags&wire.ExportMultiConn != 0,
		Device:             nbdDevice{a},
		LazyReadBuffers:    true,
		Poller:             a.poller,
	}
}

// nbdDevice is an Attachment as an nbd.BatchDevice.
type nbdDevice struct{ a *Attachment }

var cmdFromNBD = [...]wire.Cmd{
	nbdwire.CmdRead:        wire.CmdRead,
	nbdwire.CmdWrite:       wire.CmdWrite,
	nbdwire.CmdFlush:       wire.CmdFlush,
	nbdwire.CmdTrim:        wire.CmdTrim,
	nbdwire.CmdWriteZeroes: wire.CmdWriteZeroes,
}

// fromNBD translates r, or completes it with EINVAL and returns false.
func fromNBD(r *nbd.Request) (Request, bool) {
	if int(r.Cmd) >= len(cmdFromNBD) || cmdFromNBD[r.Cmd] == 0 {
		r.Complete(syscall.EINVAL)
		return Request{}, false
	}
	var f wire.ReqFlags
	if r.Flags&nbdwire.FlagFUA != 0 {
		f |= wire.FlagFUA
	}
	if r.Flags&nbdwire.FlagNoHole != 0 {
		f |= wire.FlagNoHole
	}
	return Request{Cmd: cmdFromNBD[r.Cmd], Flags: f, Offset: r.Offset, Length: r.Length,
		Data: r.Data, Done: r}, true
}

// Submit implements nbd.Device.
func (d nbdDevice) Submit(r *nbd.Request) {
	if req, ok := fromNBD(r); ok {
		d.a.Submit(req)
	}
}

// SubmitBatch implements nbd.BatchDevice: the requests a client sent
// together go out together.
func (d nbdDevice) SubmitBatch(rs []*nbd.Request) {
	var buf [16]Request
	batch := buf[:0]
	for _, r := range rs {
		req, ok := fromNBD(r)
		if !ok {
			continue
		}
		if len(batch) == len(buf) {
			d.a.SubmitBatch(batch)
			batch = batch[:0]
		}
		batch = append(batch, req)
	}
	if len(batch) > 0 {
		d.a.SubmitBatch(batch)
	}
}
