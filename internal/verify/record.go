package verify

import "fmt"

// Rule says which writes a block must still hold.
type Rule int

const (
	// RequireAcked: every acknowledged write is present unless a later
	// write (acknowledged, failed or still pending) replaced it. This is
	// what a client that replays unflushed writes promises across a
	// server crash, and what any disk promises without one.
	RequireAcked Rule = iota
	// RequireFlushed: only writes covered by a completed flush, or
	// written with FUA, must be present; newer acknowledged writes may
	// have been lost, as after a power loss with a volatile cache.
	RequireFlushed
)

func (r Rule) String() string {
	switch r {
	case RequireAcked:
		return "require-acked"
	case RequireFlushed:
		return "require-flushed"
	}
	return fmt.Sprintf("Rule(%d)", int(r))
}

type writeState uint8

const (
	statePending writeState = iota
	stateAcked
	stateFailed
)

// write is one write to a block in the record. Sequence number 0 stands for
// whatever the block held before the run; it counts as flushed.
type write struct {
	seq   uint64
	state writeState
	// ackOrder numbers acknowledgements across the whole run; a flush
	// covers the writes acknowledged before it was issued.
	ackOrder uint64
	fua      bool
}

// history is a block's writes, oldest first. Writes to one block never
// overlap in time, so issue order is the order they can land in. Writes
// before the last flushed one can never be seen again and are dropped.
type history []write

func newHistory() history { return history{{seq: 0, state: stateAcked, fua: true}} }

// base returns the index of the oldest write the block may hold under
// rule: the last acknowledged one, or the last flushed one.
func (h history) base(rule Rule, flushedUpTo uint64) int {
	for i := len(h) - 1; i > 0; i-- {
		w := h[i]
		if w.state != stateAcked {
			continue
		}
		if rule == RequireAcked || w.fua || w.ackOrder <= flushedUpTo {
			return i
		}
	}
	return 0
}

// allowed lists the sequence numbers the block may hold under rule.
func (h history) allowed(rule Rule, flushedUpTo uint64) []uint64 {
	b := h.base(rule, flushedUpTo)
	seqs := make([]uint64, 0, len(h)-b)
	for _, w := range h[b:] {
		seqs = append(seqs, w.seq)
	}
	return seqs
}

// prune drops the writes before the last flushed one.
func (h history) prune(flushedUpTo uint64) history {
	b := h.base(RequireFlushed, flushedUpTo)
	if b == 0 {
		return h
	}
	return append(h[:0], h[b:]...)
}

// find returns the index of seq in h, or -1.
func (h history) find(seq uint64) int {
	for i := len(h) - 1; i >= 0; i-- {
		if h[i].seq == seq {
			return i
		}
	}
	return -1
}
