package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// logFormat is the --log-format flag, checked when parsed.
type logFormat string

func (f *logFormat) String() string { return string(*f) }

func (f *logFormat) Set(s string) error {
	if s != "text" && s != "json" {
		return fmt.Errorf("want text or json, not %q", s)
	}
	*f = logFormat(s)
	return nil
}

// newLogger builds a process's logger on w: logfmt text, or JSON objects
// with format "json". When w is the systemd journal (journal), text goes
// to the journal in its native protocol, with fields (journal.go); where
// that socket cannot be used, and for JSON, each line starts with its
// syslog priority, <7> for debug to <3> for error, which the journal
// strips and keeps as the entry's PRIORITY.
func newLogger(w io.Writer, format string, level slog.Level, journal bool) (*slog.Logger, error) {
	if journal && (format == "" || format == "text") && isSocket(journalSocket) {
		if h, err := newJournalHandler(level); err == nil {
			return slog.New(h), nil
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	pw := &priorityWriter{w: w}
	if journal {
		w = pw
	}
	var h slog.Handler
	switch format {
	case "", "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	if journal {
		h = &priorityHandler{Handler: h, w: pw}
	}
	return slog.New(h), nil
}

// journalSocket is where journald takes native entries (slog-journal
// sends there); a variable so tests can point it elsewhere.
var journalSocket = "/run/systemd/journal/socket"

func isSocket(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// priorityWriter puts the priority of the record being written in front of
// its line.
type priorityWriter struct {
	w      io.Writer
	mu     sync.Mutex // held by priorityHandler.Handle across the write
	prefix []byte
	buf    []byte
}

func (p *priorityWriter) Write(b []byte) (int, error) {
	p.buf = append(append(p.buf[:0], p.prefix...), b...)
	if _, err := p.w.Write(p.buf); err != nil {
		return 0, err
	}
	return len(b), nil
}

// priorityHandler sets its writer's prefix from each record's level.
type priorityHandler struct {
	slog.Handler
	w *priorityWriter
}

func (h *priorityHandler) Handle(ctx context.Context, r slog.Record) error {
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	h.w.prefix = strconv.AppendInt(append(h.w.prefix[:0], '<'), int64(syslogPriority(r.Level)), 10)
	h.w.prefix = append(h.w.prefix, '>')
	return h.Handler.Handle(ctx, r)
}

func (h *priorityHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &priorityHandler{Handler: h.Handler.WithAttrs(as), w: h.w}
}

func (h *priorityHandler) WithGroup(name string) slog.Handler {
	return &priorityHandler{Handler: h.Handler.WithGroup(name), w: h.w}
}

// syslogPriority maps a level to syslog's: debug 7, info 6, warn 4, error 3.
func syslogPriority(l slog.Level) int {
	switch {
	case l < slog.LevelInfo:
		return 7
	case l < slog.LevelWarn:
		return 6
	case l < slog.LevelError:
		return 4
	}
	return 3
}

// stderrIsJournal reports whether stderr is the journal stream systemd
// named in JOURNAL_STREAM ("DEVICE:INODE"), which it sets for a service's
// output; a stderr redirected elsewhere by the service itself does not
// match.
func stderrIsJournal() bool {
	return isJournal(os.Getenv("JOURNAL_STREAM"), int(os.Stderr.Fd()))
}

func isJournal(stream string, fd int) bool {
	dev, ino, ok := strings.Cut(stream, ":")
	if !ok {
		return false
	}
	d, err1 := strconv.ParseUint(dev, 10, 64)
	i, err2 := strconv.ParseUint(ino, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false
	}
	return uint64(st.Dev) == d && st.Ino == i
}
