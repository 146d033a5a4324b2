package main

import "testing"

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "4096": 4096, "64MiB": 64 << 20, "1GiB": 1 << 30, "1G": 1 << 30, "512K": 512 << 10,
		"2MB": 2 << 20, "3TiB": 3 << 40, "100B": 100, " 8KiB ": 8 << 10,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5GiB", "1PiB", "12x", "9000000TiB", "0x10"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestSizeFlag(t *testing.T) {
	f := sizeFlag(256 << 20)
	if f.String() != "256MiB" || f.replayBuffer() != 256<<20 {
		t.Errorf("default: %s %d", f.String(), f.replayBuffer())
	}
	if err := f.Set("0"); err != nil || f.replayBuffer() != -1 || f.String() != "0" {
		t.Errorf("0: %v %d %s", err, f.replayBuffer(), f.String())
	}
	if err := f.Set("1000"); err != nil || f.String() != "1000" {
		t.Errorf("1000: %v %s", err, f.String())
	}
	if err := f.Set("lots"); err == nil {
		t.Error("Set(lots) accepted")
	}
}
