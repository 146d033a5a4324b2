// Package mux runs the yamux session of a control connection over dst's
// encrypted channel.
//
// It owns the yamux configuration (keepalives, timeouts, logging through
// slog). Only control traffic uses yamux: autoconfiguration, keepalives
// and whatever control streams later versions add. Block I/O runs on queue
// connections of its own (package qconn), because every yamux write passes
// through the session's send loop and every read through its receive loop,
// and on a small machine those two goroutine hand-offs per frame cost more
// than the encryption.
package mux
