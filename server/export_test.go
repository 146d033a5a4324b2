package server

// ServerClock exposes serverClock to the external tests.
var ServerClock = serverClock
