// Package servertest provides an in-memory storage backend for tests: it
// implements server.Backend with fault injection and counters, so tests of
// the server, the client or both together run without files or devices.
package servertest
