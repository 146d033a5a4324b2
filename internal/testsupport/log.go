package testsupport

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Logger returns a logger that writes to t: everything down to debug
// with -v, else warnings and errors, which go test shows only for a test
// that failed.
//
// A goroutine that logs after the test has ended would make the testing
// package panic; such lines are dropped instead (LeakCheck is the place
// to catch the goroutine).
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	w := &testWriter{t: t}
	t.Cleanup(w.end)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// testWriter passes each log line to t.Log until the test's cleanups run.
type testWriter struct {
	t     testing.TB
	mu    sync.Mutex // held across t.Log, so end waits for a line being written
	ended bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.ended {
		w.t.Helper()
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) end() {
	w.mu.Lock()
	w.ended = true
	w.mu.Unlock()
}
