package verify

import (
	"encoding/binary"
	"math/rand/v2"

	"github.com/cespare/xxhash/v2"
)

// Block layout; every field is big endian.
const (
	magic = 0x647374767266790a // "dstvrfy\n"

	offMagic  = 0
	offRun    = 8
	offBlock  = 16
	offSeq    = 24
	offSum    = 32
	headerLen = 40

	// MinBlockSize leaves room for the header and some payload to tear.
	MinBlockSize = 64
)

// content is what a read found in a block.
type content int

const (
	contentOurs      content = iota // a write of this run, intact
	contentForeign                  // not written by this run: zeroes, old data
	contentCorrupt                  // this run's header, but torn or damaged
	contentMisplaced                // an intact write of this run for another block
)

// fill writes the pattern of write seq to block into p.
func fill(p []byte, run, block, seq uint64) {
	binary.BigEndian.PutUint64(p[offMagic:], magic)
	binary.BigEndian.PutUint64(p[offRun:], run)
	binary.BigEndian.PutUint64(p[offBlock:], block)
	binary.BigEndian.PutUint64(p[offSeq:], seq)
	// The payload differs for every write, so a torn write fails the sum
	// even where it mixes two writes of the same block.
	r := rand.NewPCG(run^seq, block)
	i := headerLen
	for ; i+8 <= len(p); i += 8 {
		binary.BigEndian.PutUint64(p[i:], r.Uint64())
	}
	for ; i < len(p); i++ {
		p[i] = byte(r.Uint64())
	}
	binary.BigEndian.PutUint64(p[offSum:], sum(p))
}

// sum hashes the block with the checksum field left out.
func sum(p []byte) uint64 {
	d := xxhash.New()
	d.Write(p[:offSum])
	d.Write(p[headerLen:])
	return d.Sum64()
}

// decode says what p, read from block, holds; seq is set for contentOurs
// and contentMisplaced.
func decode(p []byte, run, block uint64) (c content, seq uint64) {
	if len(p) < headerLen || binary.BigEndian.Uint64(p[offMagic:]) != magic ||
		binary.BigEndian.Uint64(p[offRun:]) != run {
		return contentForeign, 0
	}
	if binary.BigEndian.Uint64(p[offSum:]) != sum(p) {
		return contentCorrupt, 0
	}
	seq = binary.BigEndian.Uint64(p[offSeq:])
	if binary.BigEndian.Uint64(p[offBlock:]) != block {
		return contentMisplaced, seq
	}
	return contentOurs, seq
}
