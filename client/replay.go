package client

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/dstproject/dst/internal/bufpool"

	"github.com/dstproject/dst/wire"
)

// replayLog keeps the writes a server acknowledged but no FLUSH has yet
// covered. They live in the server's page cache, or the disk's, and die
// with it: when the server's instance id changes, the attachment writes
// them again before anything else, so a server crash loses nothing that
// was acknowledged. A FLUSH that completes covers every write completed
// before it was submitted, and those leave the log.
//
// A write made durable by FUA needs no replay, but it does make older
// entries it overlaps obsolete: replaying them would put old data back over
// it. durable cuts its range out of them.
//
// The log is bounded. Past flushAt (half its limit, at most
// maxAutoFlush) the attachment sends a FLUSH of its own to trim it; at the
// limit, writes go out with FUA, which needs no replay, until that FLUSH
// completes.
type replayLog struct {
	limit   int64
	flushAt int64

	mu      sync.Mutex
	entries []replayEntry // in completion order; seqs are consecutive
	// bytes and seq change under mu; full and mark read them without it,
	// on every submission.
	bytes    atomic.Int64
	seq      atomic.Uint64 // completion sequence of the newest entry
	flushing bool          // an automatic FLUSH is in flight
	// index finds the entries that touch a waveChunk-sized chunk, as
	// seqs in ascending order; entries wider than waveWide are in wide.
	// Only durable needs it, and FUA is rare until the log is full, so
	// entries enter it when durable is next called: indexed is the
	// newest seq in it.
	index   map[uint64][]uint64
	wide    []uint64
	indexed uint64
}

type replayEntry struct {
	seq    uint64
	cmd    wire.Cmd
	flags  wire.ReqFlags
	offset uint64
	length uint32
	data   []byte  // WRITE only: the payload, in buf
	buf    *[]byte // from bufpool.Payloads
	holes  []span  // parts made durable since, not to be replayed
	dead   bool    // all of it made durable since
}

// span is a byte range [off, end).
type span struct{ off, end uint64 }

func (e *replayEntry) span() span { return span{e.offset, e.offset + uint64(e.length)} }

// chunks returns the range of waveChunk indexes sp touches.
func (sp span) chunks() (first, last uint64) {
	return sp.off / waveChunk, (max(sp.end, sp.off+1) - 1) / waveChunk
}

// replayBufs holds the payloads: a write-heavy attachment keeps adding
// them, and each FLUSH drops them in bulk. It is the pool the NBD front end
// reads payloads into, so add can keep a request's own buffer.
var replayBufs = bufpool.Payloads

// entryOverhead is what an entry costs besides its payload, so that TRIMs
// and WRITE_ZEROES count against the limit too.
const entryOverhead = 64

// maxAutoFlush is the most the log holds before the attachment asks for a
// FLUSH of its own, whatever its limit. Every byte the log holds is a
// payload buffer kept from reuse, so between FLUSHes a stream of writes
// cycles through that much memory; where the first touch of a page is
// dear (about 13 µs under the development VM's hypervisor) a log trimmed
// at half of 256 MiB cost a fresh attachment about 15% of its first
// sequential gigabyte's rate and 0.4 s of CPU. dst attach's payload arenas
// (cmd/dst, internal/bufpool: one for payloads of 64 KiB and more, one for
// smaller ones) each hold this much with room for what is in flight, so a
// trimmed log keeps reusing the same huge pages. The limit stays the bound
// while a FLUSH is slow: writes go on filling the log up to it, from the
// heap past the arenas.
const maxAutoFlush = 32 << 20

func newReplayLog(limit int64) *replayLog {
	return &replayLog{limit: limit, flushAt: min(limit/2, maxAutoFlush), index: make(map[uint64][]uint64)}
}

// mark returns the sequence a FLUSH submitted now covers.
func (l *replayLog) mark() uint64 { return l.seq.Load() }

// full reports whether new writes should be sent with FUA.
func (l *replayLog) full() bool { return l.bytes.Load() >= l.limit }

// add records an acknowledged write that is not yet durable. owned, if not
// nil, is data's buffer from replayBufs, handed over to the log; otherwise
// the log keeps a copy. It reports whether the caller should start an
// automatic FLUSH.
func (l *replayLog) add(h *wire.Request, data []byte, owned *[]byte) (flush bool) {
	e := replayEntry{cmd: h.Cmd, flags: h.Flags, offset: h.Offset, length: h.Length}
	switch {
	case h.Cmd != wire.CmdWrite:
	case owned != nil:
		e.buf, e.data = owned, data
	default:
		e.buf = replayBufs.Get(len(data))
		e.data = *e.buf
		copy(e.data, data)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e.seq = l.seq.Add(1)
	l.entries = append(l.entries, e)
	if l.bytes.Add(int64(len(e.data))+entryOverhead) > l.flushAt && !l.flushing {
		l.flushing = true
		return true
	}
	return false
}

// flushed drops the entries a completed FLUSH covers.
func (l *replayLog) flushed(mark uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := 0
	for i < len(l.entries) && l.entries[i].seq <= mark {
		e := &l.entries[i]
		l.release(e)
		if e.seq <= l.indexed && uint64(e.length) <= waveWide {
			first, last := e.span().chunks()
			for c := first; c <= last; c++ {
				// Entries leave in seq order: e is at the front of each list.
				if seqs := l.index[c]; len(seqs) > 1 {
					l.index[c] = seqs[1:]
				} else {
					delete(l.index, c)
				}
			}
		}
		i++
	}
	for len(l.wide) > 0 && l.wide[0] <= mark {
		l.wide = l.wide[1:]
	}
	if i > 0 {
		l.entries = compact(l.entries, i)
	}
}

// entriesKept is how many entries' room the log keeps after a FLUSH
// empties it: a write-heavy log fills it again, and room kept is memory
// already faulted in.
const entriesKept = 1 << 16

// compact drops the first i entries, moving the rest to the front so that
// the log refills the same array. Slicing them off instead made every
// refill grow a new array in fresh pages: 79% of attach's page faults
// under QD1 writes. Only an array grown far past entriesKept (a storm of
// small TRIMs) is given back.
func compact(entries []replayEntry, i int) []replayEntry {
	n := len(entries) - i
	if cap(entries) > entriesKept && n < cap(entries)/4 {
		return append(make([]replayEntry, 0, max(n, entriesKept)), entries[i:]...)
	}
	copy(entries, entries[i:])
	clear(entries[n:])
	return entries[:n]
}

// release gives back what a dropped or dead entry holds.
func (l *replayLog) release(e *replayEntry) {
	if e.dead {
		return
	}
	l.bytes.Add(-(int64(len(e.data)) + entryOverhead))
	if e.buf != nil {
		replayBufs.Put(e.buf)
	}
	e.dead, e.data, e.buf, e.holes = true, nil, nil, nil
}

// durable records that n bytes at off were made durable by a FUA request
// completed now: older entries keep none of that range to replay.
func (l *replayLog) durable(off uint64, n uint32) {
	sp := span{off, off + uint64(n)}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.entries) == 0 {
		return
	}
	l.catchUp()
	cut := func(seq uint64) {
		i := seq - l.entries[0].seq
		if seq < l.entries[0].seq || i >= uint64(len(l.entries)) {
			return
		}
		e := &l.entries[i]
		es := e.span()
		switch {
		case e.dead || sp.end <= es.off || es.end <= sp.off:
		case sp.off <= es.off && es.end <= sp.end:
			l.release(e)
		default:
			e.holes = append(e.holes, span{max(sp.off, es.off), min(sp.end, es.end)})
		}
	}
	for _, seq := range l.wide {
		cut(seq)
	}
	if uint64(n) > waveWide {
		for _, e := range l.entries { // rare: a huge FUA TRIM or WRITE_ZEROES
			if uint64(e.length) <= waveWide {
				cut(e.seq)
			}
		}
		return
	}
	first, last := sp.chunks()
	for c := first; c <= last; c++ {
		for _, seq := range l.index[c] {
			cut(seq)
		}
	}
}

// flushDone ends an automatic FLUSH, successful or not.
func (l *replayLog) flushDone() {
	l.mu.Lock()
	l.flushing = false
	l.mu.Unlock()
}

// catchUp adds the entries newer than indexed to the index.
func (l *replayLog) catchUp() {
	first := l.entries[0].seq
	for i := max(l.indexed+1, first) - first; i < uint64(len(l.entries)); i++ {
		e := &l.entries[i]
		if uint64(e.length) > waveWide {
			l.wide = append(l.wide, e.seq)
		} else {
			first, last := e.span().chunks()
			for c := first; c <= last; c++ {
				l.index[c] = append(l.index[c], e.seq)
			}
		}
	}
	l.indexed = l.seq.Load()
}

// snapshot returns what is to be replayed, in completion order: the live
// entries, each cut into the pieces its holes leave.
func (l *replayLog) snapshot() []replayEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []replayEntry
	for _, e := range l.entries {
		if !e.dead {
			out = e.pieces(out)
		}
	}
	return out
}

// pieces appends the parts of e outside its holes.
func (e replayEntry) pieces(out []replayEntry) []replayEntry {
	if len(e.holes) == 0 {
		return append(out, e)
	}
	holes := slices.Clone(e.holes)
	slices.SortFunc(holes, func(a, b span) int { return cmp.Compare(a.off, b.off) })
	es := e.span()
	at := es.off
	piece := func(end uint64) {
		if end <= at {
			return
		}
		p := e
		p.holes = nil
		p.offset, p.length = at, uint32(end-at)
		if p.data != nil {
			p.data = e.data[at-es.off : end-es.off]
		}
		out = append(out, p)
	}
	for _, h := range holes {
		piece(h.off)
		at = max(at, h.end)
	}
	piece(es.end)
	return out
}

// stats returns the entries and bytes held.
func (l *replayLog) stats() (n int, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.entries {
		if !e.dead {
			n++
		}
	}
	return n, l.bytes.Load()
}

// waves splits entries, in order, into groups that can be written
// concurrently: no two entries of a group overlap, and an entry comes in a
// later group than every earlier entry it overlaps. Writing the groups one
// after another leaves every block as the log's last write to it left it.
//
// Overlap is tested on waveChunk-sized chunks (coarser than blocks, so a
// group may end early, never late); a range over waveWide bytes, a large
// TRIM say, gets a group of its own.
func waves(entries []replayEntry) [][]replayEntry {
	var out [][]replayEntry
	var cur []replayEntry
	used := make(map[uint64]bool)
	cut := func() {
		if len(cur) > 0 {
			out = append(out, cur)
			cur = nil
			clear(used)
		}
	}
	for _, e := range entries {
		first, last := e.offset/waveChunk, (e.offset+uint64(max(e.length, 1))-1)/waveChunk
		if uint64(e.length) > waveWide {
			cut()
			out = append(out, []replayEntry{e})
			continue
		}
		for c := first; c <= last; c++ {
			if used[c] {
				cut()
				break
			}
		}
		for c := first; c <= last; c++ {
			used[c] = true
		}
		cur = append(cur, e)
	}
	cut()
	return out
}

const (
	waveChunk = 64 << 10
	waveWide  = 16 << 20
)

// request makes the Request that replays e.
func (e *replayEntry) request(done Completer) Request {
	return Request{Cmd: e.cmd, Flags: e.flags & wire.FlagNoHole, Offset: e.offset, Length: e.length,
		Data: e.data, Done: done}
}

// replayProgress is how far a replay has come, for Status and events.
type replayProgress struct {
	total, done           atomic.Int64 // writes; total is 0 when no replay runs
	totalBytes, doneBytes atomic.Int64
	tenth                 atomic.Int64 // the last tenth reported
}

func (p *replayProgress) start(writes int, bytes int64) {
	p.done.Store(0)
	p.doneBytes.Store(0)
	p.tenth.Store(0)
	p.totalBytes.Store(bytes)
	p.total.Store(int64(writes))
}

func (p *replayProgress) stop() { p.total.Store(0) }

// advance counts a replayed write of n bytes. It reports the writes done
// and ok when they reached a tenth of the total not reported before.
func (p *replayProgress) advance(n int64) (done int, tenth int64, ok bool) {
	p.doneBytes.Add(n)
	d := p.done.Add(1)
	total := p.total.Load()
	if total == 0 {
		return int(d), 0, false
	}
	t := min(10*d/total, 10)
	for {
		old := p.tenth.Load()
		if t <= old {
			return int(d), t, false
		}
		if p.tenth.CompareAndSwap(old, t) {
			return int(d), t, true
		}
	}
}

// status is the replay's progress, or nil when none runs.
func (p *replayProgress) status() *ReplayStatus {
	total := p.total.Load()
	if total == 0 {
		return nil
	}
	return &ReplayStatus{Writes: total, Done: p.done.Load(), Bytes: p.totalBytes.Load(), DoneBytes: p.doneBytes.Load()}
}
