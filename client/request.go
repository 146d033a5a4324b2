package client

import "github.com/dstproject/dst/wire"

// Request is one block operation handed to an Attachment: the engine's own
// request type. Front ends adapt theirs to it (nbd.go does for the NBD
// front end); the attachment's own flushes and replayed writes are
// Requests too.
type Request struct {
	Cmd    wire.Cmd
	Flags  wire.ReqFlags // FUA, NO_HOLE; others are ignored
	Offset uint64
	Length uint32
	// Data is the payload of a WRITE and the buffer a READ fills
	// (len == Length); nil for other commands. A READ's may be nil when
	// Done is a ReadBufferer: the attachment takes the buffer when the
	// reply arrives. It belongs to the attachment until Done is called.
	Data []byte
	// Done receives the result, exactly once, from any goroutine.
	Done Completer
}

// A Completer receives a request's result: nil, or an error carrying a
// syscall.Errno.
type Completer interface {
	Complete(err error)
}

// A BufferOwner is a Completer that can give up the pooled buffer behind a
// WRITE's Data (one from bufpool.Payloads), so the replay log may keep the
// payload after Done without copying it. TakeBuffer returns nil when there
// is no such buffer.
type BufferOwner interface {
	TakeBuffer() *[]byte
}

// A ReadBufferer is a Completer that hands out a READ's buffer when asked,
// not with the request (the NBD front end's, nbd.Export.LazyReadBuffers):
// the attachment asks when the reply's data is about to be read, so the
// buffer comes warm from the pool instead of sitting, one per request in
// flight, from request to reply. ReadBuffer returns len(Length) bytes.
type ReadBufferer interface {
	ReadBuffer() []byte
}

// A Deferrer is a Completer whose result can wait for the end of the burst
// it came in (the NBD front end's requests). CompleteDeferred records the
// result and returns what must be flushed once the burst is done, or nil:
// so the replies a queue connection read out of one record reach their
// client in one write, not one each.
type Deferrer interface {
	CompleteDeferred(err error) interface{ Flush() }
}

// CompleteFunc adapts a function to a Completer.
type CompleteFunc func(err error)

// Complete calls f(err).
func (f CompleteFunc) Complete(err error) { f(err) }
