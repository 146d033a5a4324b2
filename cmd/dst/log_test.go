package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestJournalPriorities(t *testing.T) {
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
