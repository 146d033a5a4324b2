package nbd

import (
	"sync"

	"github.com/dstproject/dst/internal/bufpool"
)

// bufs holds payload buffers, pooled by size class.
var bufs = bufpool.New(0)

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
