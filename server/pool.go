package server

import (
	"github.com/dstproject/dst/internal/bufpool"
	"github.com/dstproject/dst/wire"
)

// bufs holds payload buffers with room for a reply header in front, so a
// READ reply's header and data share one buffer and go out in one Write.
var bufs = bufpool.New(wire.ReplySize)
