// Package nbdclient is a small NBD client for tests: it drives any NBD
// server (dst's own front end, nbdkit, qemu-nbd) over a unix or TCP socket
// with many requests in flight.
//
// It owns the client side of the fixed-newstyle handshake (NBD_OPT_GO only,
// no TLS, no structured replies) and of the transmission phase with simple
// replies. Callers on any goroutine send requests under one write lock; one
// reader goroutine matches replies to requests by handle. An error reply
// comes back as an error wrapping its syscall.Errno, so a test can check
// errors.Is(err, syscall.EIO). The protocol is described in
// https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md; its
// values and byte layouts are internal/nbdwire's, shared with the server.
package nbdclient
