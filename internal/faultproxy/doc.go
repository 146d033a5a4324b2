// Package faultproxy is a TCP proxy for tests that injects network faults.
//
// A Proxy listens on a loopback port and forwards every connection it
// accepts to one target address. While traffic flows, a test can cut every
// connection with a reset, stall one direction (the proxy stops reading, so
// TCP flow control pushes back on the sender), add latency, flip bits at a
// chosen stream offset, or refuse new connections for a while. All of these
// are safe to call from any goroutine at any moment.
//
// Each connection is served by two pump goroutines, one per direction; a
// pump owns its direction's byte count and is the only one that reads its
// source and writes its destination. Close ends every pump before it
// returns, so no goroutine outlives the Proxy.
package faultproxy
