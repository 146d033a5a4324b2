package nbd

import (
	"sync"

	"github.com/dstproject/dst/internal/bufpool"
	"github.com/dstproject/dst/internal/nbdwire"
)

// bufs holds payload buffers, pooled by size class. It is the shared pool,
// so a buffer taken with TakeBuffer can go back to it from elsewhere.
var bufs = bufpool.Payloads

var reqPool = sync.Pool{New: func() any { return new(Request) }}

// recycle returns r and its buffer to their pools.
func recycle(r *Request) {
	if r.buf != nil {
		bufs.Put(r.buf)
	}
	// Field by field, leaving pending alone: it is already false, and a
	// stray second Complete may be reading it.
	r.Cmd, r.Flags, r.Offset, r.Length, r.Data = 0, 0, 0, 0, nil
	r.cookie, r.conn, r.buf, r.errno, r.cost = 0, nil, nil, 0, 0
	reqPool.Put(r)
}

// ReadBuffer returns the buffer a READ fills, len(Length), taking it from
// the pool on the first call when the Export has LazyReadBuffers (and
// Data is nil until then); otherwise it returns Data. It returns nil for
// other commands. Like Data, it belongs to the Device until Complete.
func (r *Request) ReadBuffer() []byte {
	if r.Data == nil && r.Cmd == nbdwire.CmdRead && r.Length > 0 {
		r.takeBuffer()
	}
	return r.Data
}

// takeBuffer gives r a pooled buffer of Length bytes as its Data.
func (r *Request) takeBuffer() {
	r.buf = bufs.Get(int(r.Length))
	r.Data = *r.buf
}

// TakeBuffer detaches r's pooled payload buffer and hands it to the caller,
// who returns it to bufpool.Payloads when done; r.Data stays valid. It
// returns nil if r has no pooled buffer (NewRequest made it) or gave it
// away already. A Device may take the buffer of a WRITE it completes, to
// keep the payload without copying it.
func (r *Request) TakeBuffer() *[]byte {
	b := r.buf
	r.buf = nil
	return b
}
