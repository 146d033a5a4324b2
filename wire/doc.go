// Package wire defines dst's protocol messages and their byte layout.
//
// It is pure: types, constants and encode/decode functions over byte slices,
// plus framing helpers over io.Reader. It owns no goroutines, connections or
// clocks. The encrypted channel below it is package crypto; the multiplexer
// is yamux. PROTOCOL.md beside this file describes the layout and the
// message flow, and keeps the version history.
package wire
