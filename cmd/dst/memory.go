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

// smallPayloadArena is the same for buffers under 64 KiB: the replay log's
// 32 MiB of small writes, with room for what is in flight.
const smallPayloadArena = 40 << 20

// reservePayloadMemory maps the payload arenas; without them, payload
// buffers come from the Go heap, which works as well, only slower.
func reservePayloadMemory(log *slog.Logger) {
	if err := bufpool.Reserve(payloadArena); err != nil {
		log.Warn("payload buffers come from the Go heap", "err", err)
	}
	if err := bufpool.ReserveSmall(smallPayloadArena); err != nil {
		log.Warn("payload buffers under 64 KiB come from the Go heap", "err", err)
	}
}
