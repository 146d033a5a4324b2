// Package servertest provides servers and storage for tests: an in-memory
// backend that implements server.Backend with fault injection and
// counters, so tests of the server, the client or both together run
// without files or devices; a listener over net.Pipe; and a server that a
// test stops and starts again (Restartable), for reconnect and crash
// tests of the client.
//
// It imports server, so server's own in-package tests cannot use it.
package servertest
