package main

import (
	"log/slog"

	"github.com/dstproject/dst/internal/bufpool"
)

// payloadArena is the address space attach and serve reserve for payload
// buffers of 64 KiB and more (internal/bufpool, arena.go): the replay log's
// usual 32 MiB between FLUSHes, with room for what is in flight. Pages are
// taken as buffers are first used and kept; buffers beyond it come from the
// Go heap.
const payloadArena = 64 << 20

// reservePayloadMemory maps the payload arena; without it, payload buffers
// come from the Go heap, which works as well, only slower.
func reservePayloadMemory(log *slog.Logger) {
	if err := bufpool.Reserve(payloadArena); err != nil {
		log.Warn("payload buffers come from the Go heap", "err", err)
	}
}
