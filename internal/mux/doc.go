// Package mux runs yamux sessions over dst's encrypted channel.
//
// It owns the yamux configuration (windows sized for block I/O, keepalives,
// logging through slog) and the batcher that gathers yamux's frames into
// few large writes on the channel below, so that a frame's 12-byte header
// and its body travel in one encrypted record instead of two, and frames
// sent together share records and syscalls.
package mux
