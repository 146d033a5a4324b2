// Package qconn is the send half that both ends of a queue connection
// share: frames go out in encrypted records, sealed and written by
// whichever goroutine has them ready, with no goroutine of its own on the
// fast path.
//
// A queue connection (wire/PROTOCOL.md, version 3) carries requests one
// way and replies the other, straight in the records of its own Noise
// channel. Handing every frame to a writer goroutine would cost a wake-up
// per frame, which on a small VM costs more than sealing it; so the
// goroutine that has a frame (the client's NBD reader, the server's
// connection reader or a worker) becomes the writer when no one else is
// writing, and a writer that finds more frames queued when it is done
// sends them too, many in one record and one system call (group commit,
// like x/net/http2's Transport writing under its write mutex). Only when a
// writer must not wait on the socket does its work go to the Writer's
// flusher goroutine, which sits idle otherwise.
package qconn

import (
	"sync"

	"github.com/dstproject/dst/crypto"
)

// Mode says what a goroutine handing a frame to a Writer may do.
type Mode int

const (
	// Block: if no one is writing, the caller encodes and writes what is
	// queued itself, waiting on the socket as long as it takes (the
	// client's NBD reader, for which waiting is the right back-pressure).
	Block Mode = iota
	// NoBlock: like Block, but the caller writes only what the socket
	// takes at once and leaves the rest to the flusher (server workers,
	// which a client that stops reading must not hold).
	NoBlock
	// Defer: the caller only queues and, if no one is writing, wakes the
	// flusher (a connection's own reader, which must go on reading the
	// replies that let its peer go on reading).
	Defer
	// Gather: the caller only queues, and calls Flush soon (a goroutine
	// completing a burst of requests at once, whose replies then share
	// records and one system call). An item gathered while someone else
	// writes goes out with that writer's next batch.
	Gather
)

// flushAt is how many sealed bytes a writer gathers before it writes them
// out, so a long queue does not pile up in memory.
const flushAt = 256 << 10

// Writer sends items on a connection, in the order they were queued.
//
// Locking: mu guards the queue and the token (busy). Whoever sets busy
// owns the batch and is the only goroutine that encodes or writes; it
// takes the whole queue at a time and, when the queue is empty, clears
// busy under mu, so an item queued while busy was set is always taken by
// the token holder. The flusher is the token holder only when it was
// handed the token.
type Writer[T any] struct {
	conn   *crypto.Conn
	encode func(*Batch, T)
	drop   func(T)     // an item that will never be encoded
	fail   func(error) // the first write error, once

	mu     sync.Mutex
	idle   sync.Cond // signalled when busy is cleared
	queue  []T
	busy   bool
	closed bool
	wake   chan struct{} // hands the token to the flusher
	done   chan struct{}
	wg     sync.WaitGroup

	// Owned by the token holder.
	batch Batch
	spare []T
}

// NewWriter starts a writer on conn. encode appends an item's frames to a
// batch; drop is called for items queued but never encoded (after Close or
// a write error); fail is called once, with the first write error, from
// the goroutine that saw it.
func NewWriter[T any](conn *crypto.Conn, encode func(*Batch, T), drop func(T), fail func(error)) *Writer[T] {
	w := &Writer[T]{
		conn:   conn,
		encode: encode,
		drop:   drop,
		fail:   fail,
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		batch:  Batch{conn: conn},
	}
	w.idle.L = &w.mu
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		w.flusher()
	}()
	return w
}

// Send queues item and, as mode allows, writes what is queued.
func (w *Writer[T]) Send(item T, mode Mode) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.drop(item)
		return
	}
	w.queue = append(w.queue, item)
	w.start(mode)
}

// SendAll queues items, which go out together, and, as mode allows,
// writes what is queued.
func (w *Writer[T]) SendAll(items []T, mode Mode) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		for _, it := range items {
			w.drop(it)
		}
		return
	}
	w.queue = append(w.queue, items...)
	w.start(mode)
}

// Flush writes what is queued, as mode allows, if no one else is
// writing: it ends a run of Gather sends.
func (w *Writer[T]) Flush(mode Mode) {
	w.mu.Lock()
	if w.closed || len(w.queue) == 0 {
		w.mu.Unlock()
		return
	}
	w.start(mode)
}

// start takes the token, if free, and writes as mode allows. The caller
// holds mu, which start releases.
func (w *Writer[T]) start(mode Mode) {
	if mode == Gather || w.busy {
		w.mu.Unlock()
		return // the token holder, or the gatherer's Flush, takes it
	}
	w.busy = true
	w.mu.Unlock()
	if mode == Defer {
		w.handOff()
		return
	}
	w.run(mode)
}

// Hold takes the token as a writer would, waiting for it if need be, so
// that items sent meanwhile wait in the queue; release writes them, as
// Block does. Tests use it to stand for a writer stuck on the socket.
func (w *Writer[T]) Hold() (release func()) {
	w.mu.Lock()
	for w.busy {
		w.idle.Wait()
	}
	w.busy = true
	w.mu.Unlock()
	return func() { w.run(Block) }
}

// Close drops what is queued and stops the flusher once it is done with
// its write; closing the connection ends a write that is stuck. Items sent
// afterwards are dropped.
func (w *Writer[T]) Close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	q := w.queue
	w.queue = nil
	w.mu.Unlock()
	for _, it := range q {
		w.drop(it)
	}
	close(w.done)
}

// Wait waits, after Close, until no goroutine is writing and the flusher
// has exited: from then on nothing touches an item sent to w.
func (w *Writer[T]) Wait() {
	w.mu.Lock()
	for w.busy {
		w.idle.Wait()
	}
	w.mu.Unlock()
	w.wg.Wait()
}

// handOff gives the token to the flusher.
func (w *Writer[T]) handOff() { w.wake <- struct{}{} }

// run writes, holding the token, until the queue is empty or, in NoBlock
// mode, the socket is full (the token then goes to the flusher).
func (w *Writer[T]) run(mode Mode) {
	for {
		w.mu.Lock()
		if w.closed {
			w.release()
			w.mu.Unlock()
			w.batch.reset()
			return
		}
		items := w.queue
		if len(items) == 0 {
			w.release()
			w.mu.Unlock()
			return
		}
		w.queue = w.spare[:0]
		w.mu.Unlock()
		for i, it := range items {
			w.encode(&w.batch, it)
			var zero T
			items[i] = zero
			if w.batch.pending() >= flushAt {
				if st := w.flush(mode); st != flushed {
					w.putBack(items[i+1:])
					w.spare = items[:0]
					w.after(st)
					return
				}
			}
		}
		w.spare = items[:0]
		if st := w.flush(mode); st != flushed {
			w.after(st)
			return
		}
	}
}

// putBack returns items a writer took but did not encode to the front of
// the queue, in order, before the token goes on; after a failure it drops
// them.
func (w *Writer[T]) putBack(rest []T) {
	if len(rest) == 0 {
		return
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		for _, it := range rest {
			w.drop(it)
		}
	} else {
		w.queue = append(append(make([]T, 0, len(rest)+len(w.queue)), rest...), w.queue...)
		w.mu.Unlock()
	}
	clear(rest)
}

type flushStatus int

const (
	flushed flushStatus = iota
	socketFull
	writeFailed
)

// after passes the token on after a flush that did not finish.
func (w *Writer[T]) after(st flushStatus) {
	if st == socketFull {
		w.handOff()
	}
}

// flush seals and writes the batch. In NoBlock mode it writes only what
// the socket takes at once and keeps the rest for the flusher.
func (w *Writer[T]) flush(mode Mode) flushStatus {
	b := &w.batch
	if err := b.seal(); err != nil {
		w.failed(err)
		return writeFailed
	}
	if len(b.out) == 0 {
		return flushed
	}
	if mode == NoBlock {
		n, err := w.conn.TryWriteRecords(b.out)
		if err != nil {
			w.failed(err)
			return writeFailed
		}
		if n < len(b.out) {
			b.left = b.out[n:]
			return socketFull
		}
		b.out = b.out[:0]
		return flushed
	}
	if err := w.conn.WriteRecords(b.out); err != nil {
		w.failed(err)
		return writeFailed
	}
	b.out = b.out[:0]
	return flushed
}

// flusher writes for goroutines that may not: what a NoBlock writer left,
// and what was queued with Defer.
func (w *Writer[T]) flusher() {
	for {
		select {
		case <-w.wake:
		case <-w.done:
			return
		}
		b := &w.batch
		if len(b.left) > 0 {
			err := w.conn.WriteRecords(b.left)
			b.left, b.out = nil, b.out[:0]
			if err != nil {
				w.failed(err)
				continue
			}
		}
		w.run(Block)
	}
}

// failed closes the writer after a write error and reports it. The
// caller holds the token, which dies with the writer.
func (w *Writer[T]) failed(err error) {
	w.batch.reset()
	w.Close()
	w.mu.Lock()
	w.release()
	w.mu.Unlock()
	w.fail(err)
}

// release clears the token. The caller holds mu.
func (w *Writer[T]) release() {
	w.busy = false
	w.idle.Broadcast()
}

// Batch gathers the frames of one write. Small frames (headers, short
// payloads) share records; a payload of payloadRecord bytes or more is
// sealed in records of its own, so the receiver opens it straight into
// its destination buffer.
type Batch struct {
	conn  *crypto.Conn
	plain []byte // frames not yet sealed
	out   []byte // sealed records not yet written
	left  []byte // the unwritten tail of out, for the flusher
	err   error
}

// payloadRecord is the payload size from which a payload gets records of
// its own; below it, copying it next to its header costs less than a
// record's header, tag and AEAD call.
const payloadRecord = 512

// Frame returns n bytes at the end of the batch for the caller to encode a
// frame into.
func (b *Batch) Frame(n int) []byte {
	l := len(b.plain)
	if cap(b.plain)-l < n {
		b.plain = append(b.plain, make([]byte, n)...)
	} else {
		b.plain = b.plain[:l+n]
	}
	return b.plain[l : l+n]
}

// Payload adds p, the payload of the frame just added.
func (b *Batch) Payload(p []byte) {
	if len(p) < payloadRecord {
		b.plain = append(b.plain, p...)
		return
	}
	if b.err == nil {
		b.err = b.seal()
	}
	if b.err == nil {
		b.out, b.err = b.conn.AppendRecords(b.out, p)
	}
}

func (b *Batch) pending() int { return len(b.out) + len(b.plain) }

// seal turns the frames gathered so far into records.
func (b *Batch) seal() error {
	if b.err != nil {
		return b.err
	}
	if len(b.plain) > 0 {
		b.out, b.err = b.conn.AppendRecords(b.out, b.plain)
		b.plain = b.plain[:0]
	}
	return b.err
}

// reset forgets what the batch holds, keeping its buffers unless they grew
// large.
func (b *Batch) reset() {
	b.plain, b.out, b.left = b.plain[:0], b.out[:0], nil
	if cap(b.out) > 4*flushAt {
		b.out = nil
	}
	if cap(b.plain) > 4*flushAt {
		b.plain = nil
	}
}
