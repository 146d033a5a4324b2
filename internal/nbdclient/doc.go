// Package nbdclient is dst's NBD client: the upstream connections of an
// export served from another NBD server (server/upstream.go), and the tests'
// driver of any NBD server (dst's own front end, nbdkit, qemu-nbd) over a
// unix or TCP socket, with many requests in flight.
//
// It owns the client side of the fixed-newstyle handshake (structured
// replies when the server offers them, then NBD_OPT_GO asking for block
// sizes and the description; no TLS, which dst's upstreams do not need:
// they are local sockets or a trusted LAN) and of the transmission phase.
// Callers on any goroutine send requests under one write lock (Go, or the
// blocking ReadAt, WriteAt and the rest); one reader goroutine matches
// replies to requests by handle and completes them. A reply that breaks
// the protocol (an unknown handle, a chunk longer than its request allows,
// data outside the request, chunks that overlap or leave a gap) ends the
// connection with ErrProtocol: nothing after it can be trusted. An error
// reply comes back as a *ReplyError wrapping its syscall.Errno, so a caller
// can check errors.Is(err, syscall.EIO). Whoever reads replies calls the
// OnDrain function when it has completed those it read together, so a
// caller can act once per burst. The socket is read and written with raw
// system calls (internal/rawio). The protocol is described in
// https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md; its
// values and byte layouts are internal/nbdwire's, shared with the server.
package nbdclient
