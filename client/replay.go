package client

import (
	"sync"

	"github.com/dstproject/dst/internal/bufpool"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/wire"
)

// replayLog keeps the writes a server acknowledged but no FLUSH has yet
// covered. They live in the server's page cache, or the disk's, and die
// with it: when the server's instance id changes, the attachment writes
// them again before anything else, so a server crash loses nothing that
// was acknowledged. A FLUSH that completes covers every write completed
// before it was submitted, and those leave the log.
//
// The log is bounded. Past half its limit the attachment sends a FLUSH of
// its own to trim it; at the limit, writes go out with FUA, which needs no
// replay, until that FLUSH completes.
type replayLog struct {
	limit int64

	mu       sync.Mutex
	entries  []replayEntry // in completion order
	bytes    int64
	seq      uint64 // completion sequence of the newest entry
	flushing bool   // an automatic FLUSH is in flight
}

type replayEntry struct {
	seq    uint64
	cmd    wire.Cmd
	flags  wire.ReqFlags
	offset uint64
	length uint32
	data   []byte  // WRITE only: a copy of the payload, in buf
	buf    *[]byte // from replayBufs
}

// replayBufs holds the payload copies: a write-heavy attachment keeps
// copying, and the copies are dropped in bulk by each FLUSH.
var replayBufs = bufpool.New(0)

// entryOverhead is what an entry costs besides its payload, so that TRIMs
// and WRITE_ZEROES count against the limit too.
const entryOverhead = 64

func newReplayLog(limit int64) *replayLog { return &replayLog{limit: limit} }

// mark returns the sequence a FLUSH submitted now covers.
func (l *replayLog) mark() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

// full reports whether new writes should be sent with FUA.
func (l *replayLog) full() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bytes >= l.limit
}

// add records an acknowledged write that is not yet durable. It reports
// whether the caller should start an automatic FLUSH.
func (l *replayLog) add(h *wire.Request, data []byte) (flush bool) {
	e := replayEntry{cmd: h.Cmd, flags: h.Flags, offset: h.Offset, length: h.Length}
	if h.Cmd == wire.CmdWrite {
		e.buf = replayBufs.Get(len(data))
		e.data = *e.buf
		copy(e.data, data)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	e.seq = l.seq
	l.entries = append(l.entries, e)
	l.bytes += int64(len(e.data)) + entryOverhead
	if l.bytes > l.limit/2 && !l.flushing {
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
		l.bytes -= int64(len(e.data)) + entryOverhead
		if e.buf != nil {
			replayBufs.Put(e.buf)
		}
		i++
	}
	if i > 0 {
		clear(l.entries[:i])
		l.entries = l.entries[i:]
	}
}

// flushDone ends an automatic FLUSH, successful or not.
func (l *replayLog) flushDone() {
	l.mu.Lock()
	l.flushing = false
	l.mu.Unlock()
}

// snapshot returns the entries in completion order.
func (l *replayLog) snapshot() []replayEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]replayEntry(nil), l.entries...)
}

// stats returns the entries and bytes held.
func (l *replayLog) stats() (n int, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries), l.bytes
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

// request makes the NBD request that replays e.
func (e *replayEntry) request(done func(*nbd.Request, error)) *nbd.Request {
	cmd := nbd.CmdWrite
	switch e.cmd {
	case wire.CmdTrim:
		cmd = nbd.CmdTrim
	case wire.CmdWriteZeroes:
		cmd = nbd.CmdWriteZeroes
	}
	var flags nbd.CmdFlags
	if e.flags&wire.FlagNoHole != 0 {
		flags |= nbd.FlagNoHole
	}
	return nbd.NewRequest(cmd, flags, e.offset, e.length, e.data, done)
}
