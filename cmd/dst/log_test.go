package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestJournalPriorities: where the journal's native socket cannot be
// used, lines to the journal stream carry their priority.
func TestJournalPriorities(t *testing.T) {
	defer func(s string) { journalSocket = s }(journalSocket)
	journalSocket = filepath.Join(t.TempDir(), "no-journal")
	var b bytes.Buffer
	log, err := newLogger(&b, "text", slog.LevelDebug, true)
	if err != nil {
		t.Fatal(err)
	}
	log = log.With("export", "disk")
	log.Debug("d")
	log.Info("i")
	log.Warn("w")
	log.Error("e")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := []string{"<7>", "<6>", "<4>", "<3>"}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), b.String())
	}
	for i, l := range lines {
		if !strings.HasPrefix(l, want[i]+"time=") || !strings.Contains(l, "export=disk") {
			t.Errorf("line %d %q: want %stime=... export=disk", i, l, want[i])
		}
	}
}

func TestLogFormats(t *testing.T) {
	var b bytes.Buffer
	log, err := newLogger(&b, "json", slog.LevelInfo, false)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("ready", "device", "/dev/nbd0")
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil || m["msg"] != "ready" || m["device"] != "/dev/nbd0" {
		t.Fatalf("json line %q: %v %v", b.String(), m, err)
	}
	if strings.HasPrefix(b.String(), "<") {
		t.Error("a priority prefix outside the journal")
	}
	var f logFormat
	if err := f.Set("xml"); err == nil {
		t.Error("--log-format xml accepted")
	}
	if _, err := newLogger(&b, "xml", slog.LevelInfo, false); err == nil {
		t.Error("newLogger accepted format xml")
	}
}

func TestIsJournal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	fd := int(f.Fd())
	if !isJournal(fmt.Sprintf("%d:%d", st.Dev, st.Ino), fd) {
		t.Error("the stream JOURNAL_STREAM names was not recognised")
	}
	for _, s := range []string{"", "x", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1), "1:2:3"} {
		if isJournal(s, fd) {
			t.Errorf("JOURNAL_STREAM=%q taken for this file", s)
		}
	}
}

// recorder is a slog.Handler that keeps what it is handed.
type recorder struct {
	mu   *sync.Mutex
	recs *[]slog.Record
	with []slog.Attr
}

func (r recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec.AddAttrs(r.with...)
	*r.recs = append(*r.recs, rec)
	return nil
}
func (r recorder) WithAttrs(as []slog.Attr) slog.Handler {
	r.with = append(append([]slog.Attr(nil), r.with...), as...)
	return r
}
func (r recorder) WithGroup(string) slog.Handler { return r }

// TestJournalHandler: an entry's MESSAGE is the message and its
// attributes as text, as on stderr; the attributes are also fields, named
// DST_ and their key in upper case; the process's log context (setLogContext)
// is added to every entry that does not carry its keys already.
func TestJournalHandler(t *testing.T) {
	var recs []slog.Record
	h := wrapJournal(recorder{mu: new(sync.Mutex), recs: &recs}, slog.LevelInfo)
	defer logContext.Store(nil)
	setLogContext(slog.String("attachment", "data"), slog.String("device", "/dev/nbd0"))
	log := slog.New(h).With("export", "disk0")
	log.Warn("reconnected", "epoch", 3, "after", "1.5s")
	log.Info("device resized", "device", "/dev/nbd1")
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	fields := func(r slog.Record) map[string]string {
		m := map[string]string{}
		r.Attrs(func(a slog.Attr) bool {
			k := journalField(nil, a).Key
			if _, dup := m[k]; dup {
				t.Errorf("field %s twice in %q", k, r.Message)
			}
			m[k] = a.Value.String()
			return true
		})
		return m
	}
	r := recs[0]
	if r.Message != "reconnected export=disk0 epoch=3 after=1.5s" || r.Level != slog.LevelWarn {
		t.Errorf("MESSAGE %q, level %v", r.Message, r.Level)
	}
	want := map[string]string{"DST_EPOCH": "3", "DST_AFTER": "1.5s", "DST_ATTACHMENT": "data",
		"DST_DEVICE": "/dev/nbd0", "DST_EXPORT": "disk0"}
	if got := fields(r); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("fields %v, want %v", got, want)
	}
	// A key the record has wins over the context's.
	if got := fields(recs[1]); got["DST_DEVICE"] != "/dev/nbd1" {
		t.Errorf("fields %v", got)
	}
	for in, want := range map[string]string{"export": "DST_EXPORT", "dead_conn-timeout": "DST_DEAD_CONN_TIMEOUT",
		"ünïcode": "DST___N__CODE"} {
		if got := journalField(nil, slog.String(in, "")).Key; got != want {
			t.Errorf("journalField(%q) = %q, want %q", in, got, want)
		}
	}
}
