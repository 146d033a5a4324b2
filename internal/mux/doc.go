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
//
// A server's session reads the peer through a guard (guard.go) that follows
// yamux's frame headers and ends the session of a peer that pings or opens
// streams faster than a client ever needs: yamux answers every ping from a
// goroutine of its own, which a peer that stops reading would otherwise
// multiply without bound.
package mux
