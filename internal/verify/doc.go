// Package verify runs a self-checking block workload against a disk and
// keeps the record needed to say afterwards what the disk must hold.
//
// Every block the Workload writes carries a self-describing pattern: the
// run, the block number, a write sequence number unique in the run, and a
// checksum over the whole block, so a read tells exactly which write a
// block holds, or that it holds something torn, misplaced or foreign.
//
// The record keeps, per block, the writes in the order they were issued
// (one at a time per block), each pending, acknowledged or failed, and for
// acknowledged ones whether a completed flush or FUA covered them. From it
// a Rule derives the set of values a block may hold: RequireAcked demands
// the last acknowledged write (the guarantee a client that replays
// unflushed writes gives across a server crash), RequireFlushed only the
// last flushed one (the plain barrier guarantee). In both, writes issued
// later that failed or never completed may or may not have landed.
package verify
