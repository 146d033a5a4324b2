// Package server is the storage side of dst: it accepts TCP connections,
// authenticates clients through package crypto, runs a yamux session per
// client (package internal/mux) and serves the protocol of package wire on
// its streams.
//
// It owns the export table and the backends behind it (Backend, and File
// for regular files and block devices), the identity of each export, the
// server instance id, the per-stream request pipeline (reader, a
// server-wide pool of I/O workers, a per-stream reply writer) and the
// limits that keep one client from starving the others: bounded
// concurrent handshakes, bounded requests and bytes in flight per stream
// and per session.
//
// Errors follow two classes. A malformed frame closes the stream it arrived
// on; a failed operation (bad range, read-only export, backend error) is a
// Status on that request alone. Nothing a client sends affects another
// client's session.
package server
