package server

// ServerClock exposes serverClock to the external tests.
var ServerClock = serverClock

// Admission limits and counters, for the external tests.
const (
	MaxHandshakes          = maxHandshakes
	MaxHandshakesPerSource = maxHandshakesPerSource
	LogEvery               = logEvery
)

func (s *Server) AdmissionCounts() (inProgress int, evicted, refused uint64) {
	return s.admission.counts()
}

// HandshakesFailed returns how many handshakes have failed so far, not
// counting evicted connections, refused keys and shutdown.
func (s *Server) HandshakesFailed() uint64 { return s.admission.failures() }

// The timeouts of a connection's start, for the external tests.
const (
	HandshakeFirstTimeout = handshakeFirstTimeout
	FirstMessageTimeout   = firstMessageTimeout
)

// SetKeyBytes lowers the per-key byte budget of sessions started from now
// on, until restore is called.
func SetKeyBytes(n int64) (restore func()) {
	old := keyBytes
	keyBytes = n
	return func() { keyBytes = old }
}
