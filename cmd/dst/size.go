package main

import (
	"fmt"
	"strconv"
	"strings"
)

// sizeUnits are binary multiples; "MiB", "M" and "MB" all mean 2^20, since
// a buffer size given in decimal units would only surprise.
var sizeUnits = []struct {
	suffix string
	shift  uint
}{
	{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40},
	{"KB", 10}, {"MB", 20}, {"GB", 30}, {"TB", 40},
	{"K", 10}, {"M", 20}, {"G", 30}, {"T", 40},
	{"B", 0},
}

// parseSize parses a byte count such as 0, 4096, 64MiB, 1G.
func parseSize(s string) (int64, error) {
	num, shift := strings.TrimSpace(s), uint(0)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, shift = n, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a byte count like 4096, 64MiB or 1GiB", s)
	}
	if n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n << shift, nil
}

// sizeFlag is a flag.Value holding a byte count.
type sizeFlag int64

func (f *sizeFlag) String() string { return formatSize(int64(*f)) }

func (f *sizeFlag) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*f = sizeFlag(n)
	return nil
}

// replayBuffer maps the flag onto client.AttachConfig.ReplayBuffer, where 0
// means the default and a negative value turns replay off.
func (f sizeFlag) replayBuffer() int64 {
	if f == 0 {
		return -1
	}
	return int64(f)
}

// formatSize prints n with the largest binary unit that divides it.
func formatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
