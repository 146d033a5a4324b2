package server_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/testsupport"
	"github.com/dstproject/dst/server"
)

func TestParseExportFlag(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want server.ExportConfig
		err  string
	}{
		{in: "disk=/dev/sdb", want: server.ExportConfig{Name: "disk", Path: "/dev/sdb"}},
		{in: "disk=/img/a.raw,ro", want: server.ExportConfig{Name: "disk", Path: "/img/a.raw", ReadOnly: true}},
		{in: "disk=/img/a.raw,rw", want: server.ExportConfig{Name: "disk", Path: "/img/a.raw"}},
		{in: "d=/x=y,z", want: server.ExportConfig{Name: "d", Path: "/x=y,z"}},
		{in: "disk=/img/a.raw,volatile", want: server.ExportConfig{Name: "disk", Path: "/img/a.raw", Volatile: true}},
		{in: "disk=/img/a.raw,rw,volatile", want: server.ExportConfig{Name: "disk", Path: "/img/a.raw", Volatile: true}},
		{in: "disk=/img/a.raw,volatile,rw", want: server.ExportConfig{Name: "disk", Path: "/img/a.raw", Volatile: true}},
		{in: "disk=/img/volatile", want: server.ExportConfig{Name: "disk", Path: "/img/volatile"}},
		{in: "gfs=/dev/sdc,shared", want: server.ExportConfig{Name: "gfs", Path: "/dev/sdc", Shared: true}},
		{in: "vm=nbd+unix:///vm1?socket=/run/qsd.sock", want: server.ExportConfig{Name: "vm", Upstream: "nbd+unix:///vm1?socket=/run/qsd.sock"}},
		{in: "vm=nbd://127.0.0.1/vm1,ro", want: server.ExportConfig{Name: "vm", Upstream: "nbd://127.0.0.1/vm1", ReadOnly: true}},
		{in: "vm=nbd+unix:///vm1?socket=/s,connections=2,ro", want: server.ExportConfig{Name: "vm", Upstream: "nbd+unix:///vm1?socket=/s", Connections: 2, ReadOnly: true}},
		{in: "vm=nbd+unix:///vm1?socket=/s,ro,connections=4", want: server.ExportConfig{Name: "vm", Upstream: "nbd+unix:///vm1?socket=/s", Connections: 4, ReadOnly: true}},
		{in: "vm=nbd+unix:///vm1?socket=/s,connections=0", err: "connections=0: want a positive number"},
		{in: "vm=nbd+unix:///vm1?socket=/s,connections=x", err: "connections=x: want a positive number"},
		{in: "vm=nbd+unix:///vm1?socket=/s,connections=17", err: "connections = 17: want 1 to 16"},
		{in: "disk=/img/a.raw,connections=2", err: "connections is for an upstream"},
		{in: "vm=nbd+unix:///vm1", err: "want nbd+unix:///EXPORT?socket=PATH"},
		{in: "vm=nbds://host/vm1", err: "TLS to an upstream is not supported"},
		{in: "vm=nbd+unix:///vm1?socket=/s,volatile", err: "volatile and upstream"},
		{in: "disk=/img/a.raw,ro,volatile", err: "volatile and read-only"},
		{in: "disk=/img/a.raw,volatile,ro", err: "volatile and read-only"},
		{in: "disk=,volatile", err: "empty path"},
		{in: "/dev/sdb", err: "want NAME=PATH"},
		{in: "=/dev/sdb", err: "empty export name"},
		{in: "disk=", err: "empty path"},
		{in: "disk=,ro", err: "empty path"},
		{in: "a/b=/x", err: "contains one of"},
		{in: "a b=/x", err: "white space"},
		{in: strings.Repeat("n", 256) + "=/x", err: "more than 255"},
	} {
		got, err := server.ParseExportFlag(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseExportFlag(%q) error %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseExportFlag(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func writeKeys(t *testing.T, dir string) (crypto.PrivateKey, crypto.PublicKey) {
	t.Helper()
	sk, _ := crypto.GeneratePrivateKey()
	if err := crypto.WritePrivateKey(filepath.Join(dir, "server.key"), sk); err != nil {
		t.Fatal(err)
	}
	ck, _ := crypto.GeneratePrivateKey()
	os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(ck.Public().String()+" laptop\n"), 0o600)
	return sk, ck.Public()
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	sk, ck := writeKeys(t, dir)
	path := filepath.Join(dir, "dst.toml")
	os.WriteFile(path, []byte(`
listen = "127.0.0.1:7701"
metrics_listen = "127.0.0.1:9477"
key = "server.key"
authorized_keys = "authorized_keys"
ciphers = ["chacha20-poly1305"]
workers = 16
max_sessions_per_key = 8

[[export]]
name = "data"
path = "disk.img"

[[export]]
name = "iso"
path = "/srv/boot.iso"
read_only = true

[[export]]
name = "scratch"
path = "/tmp/scratch.img"
volatile = true
`), 0o600)
	c, err := server.LoadConfig(path, crypto.KeyModePolicy{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:7701" || c.MetricsListen != "127.0.0.1:9477" || c.Workers != 16 || c.MaxSessionsPerKey != 8 || !c.PrivateKey.Equal(sk) {
		t.Errorf("config %+v", c)
	}
	if _, ok := c.Authorized.Contains(ck); !ok {
		t.Error("authorized key missing")
	}
	if len(c.Ciphers) != 1 || c.Ciphers[0] != crypto.CipherChaChaPoly {
		t.Errorf("ciphers %v", c.Ciphers)
	}
	want := []server.ExportConfig{
		{Name: "data", Path: filepath.Join(dir, "disk.img")},
		{Name: "iso", Path: "/srv/boot.iso", ReadOnly: true},
		{Name: "scratch", Path: "/tmp/scratch.img", Volatile: true},
	}
	if len(c.Exports) != 3 || c.Exports[0] != want[0] || c.Exports[1] != want[1] || c.Exports[2] != want[2] {
		t.Errorf("exports %+v, want %+v", c.Exports, want)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	dir := t.TempDir()
	writeKeys(t, dir)
	keys := "key = \"server.key\"\nauthorized_keys = \"authorized_keys\"\n"
	export := "[[export]]\nname = \"d\"\npath = \"/x\"\n"
	for _, tt := range []struct {
		name, body, err string
	}{
		{"unknown key", keys + "listn = \":1\"\n" + export, "unknown keys: listn"},
		{"unknown export key", keys + export + "readonly = true\n", "unknown keys: export.readonly"},
		{"no key", "authorized_keys = \"authorized_keys\"\n" + export, "no private key"},
		{"no authorized keys", "key = \"server.key\"\n" + export, "no authorized keys"},
		{"missing key file", "key = \"nope\"\nauthorized_keys = \"authorized_keys\"\n" + export, "nope"},
		{"bad cipher", keys + "ciphers = [\"rot13\"]\n" + export, "rot13"},
		{"no exports", keys, "no exports"},
		{"duplicate export", keys + export + export, "configured twice"},
		{"export without path", keys + "[[export]]\nname = \"d\"\n", "has no path"},
		{"syntax", keys + "workers = \n", "dst.toml"},
		{"negative workers", keys + "workers = -1\n" + export, "workers"},
		{"negative session bound", keys + "max_sessions_per_key = -1\n" + export, "max_sessions_per_key"},
		{"volatile read-only", keys + export + "read_only = true\nvolatile = true\n", "volatile and read-only"},
		{"connections for a file", keys + export + "connections = 2\n", "connections is for an upstream"},
	} {
		path := filepath.Join(dir, "dst.toml")
		os.WriteFile(path, []byte(tt.body), 0o600)
		_, err := server.LoadConfig(path, crypto.KeyModePolicy{})
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.err)
		}
	}
}

func TestNewValidates(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.img")
	os.WriteFile(img, make([]byte, 1<<20), 0o600)
	for _, tt := range []struct {
		name    string
		exports []server.ExportConfig
		err     string
	}{
		{"none", nil, "no exports"},
		{"duplicate", []server.ExportConfig{{Name: "a", Path: img}, {Name: "a", Path: img}}, "twice"},
		{"missing file", []server.ExportConfig{{Name: "a", Path: img}, {Name: "b", Path: filepath.Join(dir, "nope")}}, "nope"},
		{"bad name", []server.ExportConfig{{Name: "a\x00", Path: img}}, "control"},
	} {
		_, err := server.New(&server.Config{Exports: tt.exports, Logger: testsupport.Logger(t)})
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.err)
		}
	}
	srv, err := server.New(&server.Config{Exports: []server.ExportConfig{{Name: "a", Path: img}}, Logger: testsupport.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if e := srv.Info().Exports[0]; e.Size != 1<<20 || e.Identity.IsZero() {
		t.Errorf("export %+v", e)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestLoadConfigKeyMode: a key file that group or others may access is
// refused unless the caller's policy or allow_insecure_key_mode = true
// allows it; then the caller's Warn hears of it.
func TestLoadConfigKeyMode(t *testing.T) {
	dir := t.TempDir()
	sk, _ := writeKeys(t, dir)
	keyPath := filepath.Join(dir, "server.key")
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	body := "key = \"server.key\"\nauthorized_keys = \"authorized_keys\"\n"
	export := "[[export]]\nname = \"d\"\npath = \"/x\"\n"
	for _, tt := range []struct {
		name   string
		body   string
		allow  bool // the caller's policy
		refuse bool
	}{
		{"refused", body + export, false, true},
		{"allowed by the caller", body + export, true, false},
		{"allowed by the file", body + "allow_insecure_key_mode = true\n" + export, false, false},
		{"the file cannot forbid it", body + "allow_insecure_key_mode = false\n" + export, true, false},
	} {
		path := filepath.Join(dir, "dst.toml")
		os.WriteFile(path, []byte(tt.body), 0o600)
		var warned []string
		c, err := server.LoadConfig(path, crypto.KeyModePolicy{AllowInsecure: tt.allow,
			Warn: func(e *crypto.KeyModeError) { warned = append(warned, e.Path) }})
		var me *crypto.KeyModeError
		switch {
		case tt.refuse && !errors.As(err, &me):
			t.Errorf("%s: error %v, want a *crypto.KeyModeError", tt.name, err)
		case tt.refuse && !strings.Contains(err.Error(), keyPath):
			t.Errorf("%s: error %v does not name %s", tt.name, err, keyPath)
		case tt.refuse:
		case err != nil || !c.PrivateKey.Equal(sk):
			t.Errorf("%s: LoadConfig = %v; want the key", tt.name, err)
		case len(warned) != 1 || warned[0] != keyPath:
			t.Errorf("%s: warned about %v, want %s", tt.name, warned, keyPath)
		}
	}
}
