package main

import (
	"flag"
	"fmt"
	"testing"
)

func TestParseInterspersed(t *testing.T) {
	tests := []struct {
		args    []string
		pos     string
		key     string
		verbose bool
		exports string
		err     bool
	}{
		{args: []string{"--key", "k", "host:1", "disk"}, pos: "[host:1 disk]", key: "k"},
		{args: []string{"host:1", "--key", "k", "disk"}, pos: "[host:1 disk]", key: "k"},
		{args: []string{"host:1", "disk", "--key=k", "-v"}, pos: "[host:1 disk]", key: "k", verbose: true},
		{args: []string{"-v", "host:1", "--export", "a=/x", "--export", "b=/y,ro"}, pos: "[host:1]", verbose: true, exports: "a=/x,b=/y,ro"},
		{args: []string{"--key", "k", "--", "--not-a-flag"}, pos: "[--not-a-flag]", key: "k"},
		{args: []string{"host:1", "--key"}, err: true},
		{args: []string{"--bogus", "x"}, err: true},
	}
	for _, tt := range tests {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(discard{})
		key := fs.String("key", "", "")
		v := fs.Bool("v", false, "")
		var exports listFlag
		fs.Var(&exports, "export", "")
		pos, err := parseInterspersed(fs, tt.args)
		if (err != nil) != tt.err {
			t.Errorf("%q: err = %v, want error %v", tt.args, err, tt.err)
			continue
		}
		if err != nil {
			continue
		}
		if got := fmt.Sprint(pos); got != tt.pos || *key != tt.key || *v != tt.verbose || exports.String() != tt.exports {
			t.Errorf("%q: pos %s key %q v %v exports %q", tt.args, got, *key, *v, exports.String())
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func TestParseListen(t *testing.T) {
	for _, tt := range []struct{ in, network, address string }{
		{"unix:/run/dst/a.sock", "unix", "/run/dst/a.sock"},
		{"tcp:127.0.0.1:10809", "tcp", "127.0.0.1:10809"},
		{"/run/a.sock", "", ""},
		{"udp:1.2.3.4:5", "", ""},
		{"unix:", "", ""},
	} {
		n, a, err := parseListen(tt.in)
		if tt.network == "" {
			if err == nil {
				t.Errorf("parseListen(%q) accepted", tt.in)
			}
			continue
		}
		if err != nil || n != tt.network || a != tt.address {
			t.Errorf("parseListen(%q) = %q, %q, %v", tt.in, n, a, err)
		}
	}
}

func TestHuman(t *testing.T) {
	for n, want := range map[uint64]string{512: "512B", 1 << 20: "1.0MiB", 3 << 30: "3.0GiB", 1536: "1.5KiB"} {
		if got := human(n); got != want {
			t.Errorf("human(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestAttachProcs(t *testing.T) {
	for _, tt := range []struct {
		flag, ncpu int
		env        string
		want, bulk int
		err        bool
	}{
		{flag: 0, env: "", ncpu: 2, want: 1, bulk: 2},
		{flag: 0, env: "", ncpu: 64, want: 1, bulk: 2},
		{flag: 0, env: "", ncpu: 1, want: 1, bulk: 0},
		{flag: 0, env: "3", ncpu: 4, want: 3},
		{flag: 2, env: "3", ncpu: 4, want: 2},
		{flag: 4, env: "", ncpu: 4, want: 4},
		{flag: 1, env: "", ncpu: 4, want: 1},
		{flag: -1, err: true},
		{flag: 0, env: "zero", err: true},
		{flag: 0, env: "0", err: true},
	} {
		got, bulk, err := attachProcs(tt.flag, tt.env, tt.ncpu)
		if (err != nil) != tt.err || got != tt.want || bulk != tt.bulk {
			t.Errorf("attachProcs(%d, %q, %d) = %d, %d, %v; want %d, %d, error %v",
				tt.flag, tt.env, tt.ncpu, got, bulk, err, tt.want, tt.bulk, tt.err)
		}
	}
}
