package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	slogjournal "github.com/systemd/slog-journal"
)

// Under systemd, dst logs to the journal in its native protocol: each
// entry carries its priority and its attributes as fields of their own
// (DST_EXPORT=disk0, DST_DEVICE=/dev/nbd0, DST_EPOCH=3: journalctl
// DST_EXPORT=disk0 finds them), and MESSAGE is the line as text, so plain
// journalctl output reads as it did on stderr. github.com/systemd/slog-journal
// speaks the protocol (datagrams, and a sealed memfd for entries too large
// for one); this file renders MESSAGE and names the fields.

// journalPrefix starts every field dst adds, so that no attribute can
// collide with a field the journal defines (MESSAGE, PRIORITY, CODE_FILE).
const journalPrefix = "DST_"

// logContext holds attributes every journal entry of the process carries
// from when they are known (setLogContext): an attach's name, export and
// device, which its library code does not log on every line.
var logContext atomic.Pointer[[]slog.Attr]

// setLogContext sets the attributes of logContext.
func setLogContext(as ...slog.Attr) { logContext.Store(&as) }

// journalHandler renders MESSAGE and hands each record, with its
// attributes, to the journal handler inner.
type journalHandler struct {
	inner slog.Handler
	text  slog.Handler // renders the attributes after the message
	mu    *sync.Mutex  // guards buf, shared by every derived handler
	buf   *bytes.Buffer
	keys  map[string]bool // attribute keys WithAttrs added
}

// newJournalHandler returns a handler logging to the journal at level,
// or an error when the journal's socket cannot be used.
func newJournalHandler(level slog.Leveler) (slog.Handler, error) {
	j, err := slogjournal.NewHandler(&slogjournal.Options{Level: level, ReplaceAttr: journalField,
		ReplaceGroup: journalGroup})
	if err != nil {
		return nil, err
	}
	return wrapJournal(j, level), nil
}

// wrapJournal puts MESSAGE rendering in front of inner.
func wrapJournal(inner slog.Handler, level slog.Leveler) *journalHandler {
	buf := new(bytes.Buffer)
	text := slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == slog.MessageKey) {
				return slog.Attr{}
			}
			return a
		}})
	return &journalHandler{inner: inner, text: text, mu: new(sync.Mutex), buf: buf}
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	h.buf.Reset()
	err := h.text.Handle(ctx, r)
	attrs := strings.TrimSuffix(h.buf.String(), "\n")
	h.mu.Unlock()
	if err != nil {
		return err
	}
	msg := r.Message
	if attrs != "" {
		msg += " " + attrs
	}
	out := slog.NewRecord(r.Time, r.Level, msg, r.PC)
	seen := make(map[string]bool)
	r.Attrs(func(a slog.Attr) bool {
		seen[a.Key] = true
		out.AddAttrs(a)
		return true
	})
	if ctxAttrs := logContext.Load(); ctxAttrs != nil {
		for _, a := range *ctxAttrs {
			if !seen[a.Key] && !h.keys[a.Key] {
				out.AddAttrs(a)
			}
		}
	}
	return h.inner.Handle(ctx, out)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h2 := *h
	h2.inner, h2.text = h.inner.WithAttrs(as), h.text.WithAttrs(as)
	h2.keys = make(map[string]bool, len(h.keys)+len(as))
	for k := range h.keys {
		h2.keys[k] = true
	}
	for _, a := range as {
		h2.keys[a.Key] = true
	}
	return &h2
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	h2 := *h
	h2.inner, h2.text = h.inner.WithGroup(name), h.text.WithGroup(name)
	return &h2
}

// journalField names an attribute's field: DST_ and its key in upper
// case, with anything but letters and digits as '_' (the journal takes
// only [A-Z0-9_]).
func journalField(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 {
		a.Key = journalPrefix + journalName(a.Key)
	} else {
		a.Key = journalName(a.Key)
	}
	return a
}

// journalGroup names a group's prefix, like journalField.
func journalGroup(name string) string { return journalPrefix + journalName(name) }

func journalName(s string) string {
	b := []byte(strings.ToUpper(s))
	for i, c := range b {
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			b[i] = '_'
		}
	}
	if len(b) > 60 {
		b = b[:60]
	}
	return string(b)
}
