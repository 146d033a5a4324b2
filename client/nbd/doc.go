// Package nbd is dst's NBD server front end: it speaks the server side of
// the Network Block Device protocol (NetworkBlockDevice/nbd doc/proto.md) to
// standard clients — nbdinfo, nbdcopy, qemu, fio, the Linux kernel — and
// hands their commands to an asynchronous Device.
//
// The package owns the wire protocol only: fixed-newstyle option haggling
// (handshake.go), the transmission phase with many requests in flight per
// connection (conn.go), request validation (validate.go), the errno mapping
// (errno.go) and the accept loop (server.go). The protocol's values and byte
// layouts (commands, flags, errnos) are declared once, in internal/nbdwire,
// which the front end, the test clients and the raw-protocol tests share.
// The package knows nothing about where the blocks live; that is the
// Device's business.
//
// # Wire summary
//
// Handshake (all integers big endian):
//
//	S: "NBDMAGIC" (8) "IHAVEOPT" (8) handshake flags (2)
//	C: client flags (4)
//	C: "IHAVEOPT" (8) option (4) length (4) data (length)      repeated
//	S: 0x3e889045565a9 (8) option (4) reply type (4) length (4) data
//
// NBD_OPT_EXPORT_NAME is answered with size (8), transmission flags (2) and
// 124 zero bytes unless both sides agreed on NO_ZEROES; NBD_OPT_GO is answered
// with NBD_REP_INFO replies and NBD_REP_ACK. Both enter transmission:
//
//	C: 0x25609513 (4) flags (2) type (2) cookie (8) offset (8) length (4) [payload]
//	S: 0x67446698 (4) error (4) cookie (8) [read data]
//
// Only simple replies are used, so a READ reply carries its data only when the
// error is zero; the header is therefore never sent before the Device has
// completed the read.
//
// # Concurrency
//
// Each connection has a reader (the goroutine calling ServeTransmission) and
// a writer goroutine. The reader parses and validates requests and calls
// Device.Submit without waiting for the result. Request.Complete, called from
// any goroutine, only appends the request to the connection's reply queue and
// pokes the writer; it never blocks and never writes to the socket. The writer
// takes the whole queue at once and sends it with one vectored write, then
// returns buffers to their pools and frees in-flight budget, which the reader
// waits on when a client has too much outstanding. This keeps Device
// completion paths independent of slow or dead clients.
package nbd
