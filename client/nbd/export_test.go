package nbd

import "time"

// SetDrainTimeout shortens the drain bound for tests and returns a restore func.
func SetDrainTimeout(d time.Duration) func() {
	old := drainTimeout
	drainTimeout = d
	return func() { drainTimeout = old }
}

// ErrnoOf exposes the error mapping to the external tests.
var ErrnoOf = errnoOf
