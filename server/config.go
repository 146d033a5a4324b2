package server

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/dstproject/dst/crypto"
)

// DefaultListen is the address Config.Listen defaults to.
const DefaultListen = ":7700"

// ExportConfig names one export.
type ExportConfig struct {
	Name string
	Path string // regular file or block device
	// Upstream, instead of Path, serves an export of another NBD server
	// (upstream.go): nbd+unix:///EXPORT?socket=PATH or
	// nbd://HOST[:PORT]/EXPORT.
	Upstream string
	// Connections is how many connections to open to an upstream that
	// announces multi-conn (one otherwise); 0 means 1, which measured
	// best against a local nbdkit (README).
	Connections int
	ReadOnly    bool

	// Volatile, a testing option, puts a model of a volatile write cache
	// in front of the storage (see NewVolatile): writes are acknowledged
	// from memory and reach the storage only on flush or FUA, so a killed
	// server loses them like a disk losing power. Never use it for data
	// you want to keep. It makes no sense with ReadOnly.
	Volatile bool

	// Shared exports let several attachments write at once, for cluster
	// file systems (GFS2, OCFS2) that coordinate their own writers.
	// Otherwise one read-write attachment at a time holds the export's
	// writer lease (lease.go).
	Shared bool

	// Backend, if set, is served instead of opening Path (which then only
	// appears in logs). Tests use it with servertest.MemBackend. The
	// server closes it in Close; if New fails, it stays the caller's.
	Backend Backend
}

// Config configures a Server.
type Config struct {
	Listen string // host:port for the command; Serve takes a listener
	// MetricsListen is where the command answers Prometheus scrapes
	// (host:port); empty: nowhere.
	MetricsListen string
	// Announce advertises the server on the local network with mDNS
	// (internal/discover); the command does it.
	Announce   bool
	PrivateKey crypto.PrivateKey
	// MoreKeys are further private keys the server answers to while its
	// key is being rotated (crypto.ServerConfig.MoreKeys).
	MoreKeys   []crypto.PrivateKey
	Authorized *crypto.AuthorizedKeys
	Ciphers    []crypto.Cipher // nil allows all
	Exports    []ExportConfig
	Workers    int // I/O workers shared by all clients; 0 means DefaultWorkers
	// MaxSessionsPerKey bounds the control sessions one client key may
	// hold at once; 0 means DefaultMaxSessionsPerKey.
	MaxSessionsPerKey int
	// LeaseGrace is how long a writer lease outlives the last session of
	// its holder, for the holder to reconnect; 0 means DefaultLeaseGrace.
	LeaseGrace time.Duration
	// SizeCheck is how often the server looks for exports that grew
	// (CheckSizes); 0 means DefaultSizeCheck, negative never (the caller
	// calls CheckSizes itself).
	SizeCheck time.Duration
	// UpstreamID is the file holding the random id the identities of
	// upstream exports derive from (created at first use); empty: a new
	// identity at every start. The command keeps it beside its
	// configuration file, or its key.
	UpstreamID string
	Logger     *slog.Logger
}

// ParseExportFlag parses the command line form of an export:
// NAME=PATH[,ro|,rw][,shared][,volatile][,connections=N]. ,ro makes it
// read-only; ,volatile is the testing option ExportConfig.Volatile. A PATH
// that is an NBD URI (nbd+unix:// or nbd://) names an upstream instead,
// and ,connections=N sets ExportConfig.Connections.
func ParseExportFlag(s string) (ExportConfig, error) {
	const usage = "want NAME=PATH[,ro][,shared][,volatile] or NAME=NBD-URI[,ro][,shared][,connections=N]"
	name, path, ok := strings.Cut(s, "=")
	if !ok {
		return ExportConfig{}, fmt.Errorf("server: export %q: %s", s, usage)
	}
	e := ExportConfig{Name: name}
	for {
		if p, ok := strings.CutSuffix(path, ",ro"); ok {
			path, e.ReadOnly = p, true
		} else if p, ok := strings.CutSuffix(path, ",rw"); ok {
			path = p
		} else if p, ok := strings.CutSuffix(path, ",volatile"); ok {
			path, e.Volatile = p, true
		} else if p, ok := strings.CutSuffix(path, ",shared"); ok {
			path, e.Shared = p, true
		} else if i := strings.LastIndex(path, ",connections="); i >= 0 && !strings.Contains(path[i+1:], ",") {
			n, err := strconv.Atoi(path[i+len(",connections="):])
			if err != nil || n < 1 {
				return ExportConfig{}, fmt.Errorf("server: export %q: connections=%s: want a positive number", s, path[i+len(",connections="):])
			}
			path, e.Connections = path[:i], n
		} else {
			break
		}
	}
	e.Path = path
	if strings.HasPrefix(path, "nbd") && strings.Contains(path, "://") {
		e.Path, e.Upstream = "", path
		if _, err := ParseUpstream(path); err != nil {
			return ExportConfig{}, fmt.Errorf("server: export %q: %w", s, err)
		}
	}
	if err := checkExportName(name); err != nil {
		return ExportConfig{}, fmt.Errorf("server: export %q: %w; %s", s, err, usage)
	}
	if path == "" {
		return ExportConfig{}, fmt.Errorf("server: export %q: empty path; %s", s, usage)
	}
	if err := checkOptions(e); err != nil {
		return ExportConfig{}, fmt.Errorf("server: export %q: %w", s, err)
	}
	return e, nil
}

// maxUpstreamConns bounds ExportConfig.Connections.
const maxUpstreamConns = 16

// checkOptions rejects options that make no sense together: a volatile
// cache on a read-only export (nothing to cache) or in front of an
// upstream (which has its own), upstream connections for a file.
func checkOptions(e ExportConfig) error {
	switch {
	case e.Volatile && e.ReadOnly:
		return errors.New("volatile and read-only together: a read-only export has no writes to cache")
	case e.Volatile && e.Upstream != "":
		return errors.New("volatile and upstream together: an upstream has its own cache")
	case e.Connections != 0 && e.Upstream == "":
		return errors.New("connections is for an upstream (NBD URI) export")
	case e.Connections < 0 || e.Connections > maxUpstreamConns:
		return fmt.Errorf("connections = %d: want 1 to %d", e.Connections, maxUpstreamConns)
	}
	return nil
}

// configFile is the TOML layout of a configuration file.
type configFile struct {
	Listen               string       `toml:"listen"`
	MetricsListen        string       `toml:"metrics_listen"`
	Announce             bool         `toml:"announce"`
	Key                  string       `toml:"key"`
	MoreKeys             []string     `toml:"more_keys"`
	AuthorizedKeys       string       `toml:"authorized_keys"`
	Ciphers              []string     `toml:"ciphers"`
	Workers              int          `toml:"workers"`
	MaxSessionsPerKey    int          `toml:"max_sessions_per_key"`
	AllowInsecureKeyMode bool         `toml:"allow_insecure_key_mode"`
	Export               []exportFile `toml:"export"`
}

type exportFile struct {
	Name        string `toml:"name"`
	Path        string `toml:"path"`
	Upstream    string `toml:"upstream"`
	Connections int    `toml:"connections"`
	ReadOnly    bool   `toml:"read_only"`
	Volatile    bool   `toml:"volatile"`
	Shared      bool   `toml:"shared"`
}

// LoadConfig reads a TOML configuration file:
//
//	listen = ":7700"
//	metrics_listen = "127.0.0.1:9477"   # optional: Prometheus /metrics
//	announce = true                     # optional: mDNS on the local network
//	key = "server.key"                  # private key file
//	more_keys = ["next.key"]            # optional: keys of a rotation in progress
//	authorized_keys = "authorized_keys"
//	ciphers = ["chacha20-poly1305"]     # optional; default all
//	workers = 64                        # optional
//	max_sessions_per_key = 64           # optional
//	allow_insecure_key_mode = false     # optional; see crypto.KeyModePolicy
//
//	[[export]]
//	name = "disk"
//	path = "/dev/sdb"
//	read_only = false
//	volatile = false                    # testing only: see ExportConfig.Volatile
//
//	[[export]]
//	name = "images"
//	upstream = "nbd+unix:///vm1?socket=/run/qsd/nbd.sock"   # instead of path
//	connections = 1                     # optional: to an upstream announcing multi-conn
//
// Relative paths are relative to the file's directory. Unknown keys are an
// error, so a misspelt option is not silently ignored. The key files are
// loaded, the private key under keyMode (which allow_insecure_key_mode =
// true relaxes); the exports are opened by New.
func LoadConfig(path string, keyMode crypto.KeyModePolicy) (*Config, error) {
	var f configFile
	md, err := toml.DecodeFile(path, &f)
	if err != nil {
		return nil, fmt.Errorf("server: config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("server: config %s: unknown keys: %s", path, strings.Join(keys, ", "))
	}
	dir := filepath.Dir(path)
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	c := &Config{Listen: f.Listen, MetricsListen: f.MetricsListen, Announce: f.Announce, Workers: f.Workers,
		MaxSessionsPerKey: f.MaxSessionsPerKey, UpstreamID: filepath.Join(dir, "upstream-id")}
	if f.MaxSessionsPerKey < 0 {
		return nil, fmt.Errorf("server: config %s: max_sessions_per_key = %d: want a positive number", path, f.MaxSessionsPerKey)
	}
	if f.Workers < 0 {
		return nil, fmt.Errorf("server: config %s: workers = %d: want a positive number", path, f.Workers)
	}
	if f.AllowInsecureKeyMode {
		keyMode.AllowInsecure = true
	}
	if err := loadKeys(c, rel(f.Key), rel(f.AuthorizedKeys), keyMode); err != nil {
		return nil, fmt.Errorf("server: config %s: %w", path, err)
	}
	for _, m := range f.MoreKeys {
		k, err := crypto.LoadPrivateKey(rel(m), keyMode)
		if err != nil {
			return nil, fmt.Errorf("server: config %s: more_keys: %w", path, err)
		}
		c.MoreKeys = append(c.MoreKeys, k)
	}
	for _, s := range f.Ciphers {
		ci, err := crypto.ParseCipher(s)
		if err != nil {
			return nil, fmt.Errorf("server: config %s: ciphers: %w", path, err)
		}
		c.Ciphers = append(c.Ciphers, ci)
	}
	for i, e := range f.Export {
		switch {
		case e.Path == "" && e.Upstream == "":
			return nil, fmt.Errorf("server: config %s: export %d (%q) has no path (or upstream)", path, i+1, e.Name)
		case e.Path != "" && e.Upstream != "":
			return nil, fmt.Errorf("server: config %s: export %d (%q) has both a path and an upstream", path, i+1, e.Name)
		}
		if e.Upstream != "" {
			if _, err := ParseUpstream(e.Upstream); err != nil {
				return nil, fmt.Errorf("server: config %s: export %d (%q): %w", path, i+1, e.Name, err)
			}
		}
		ec := ExportConfig{Name: e.Name, Path: rel(e.Path), Upstream: e.Upstream, Connections: e.Connections,
			ReadOnly: e.ReadOnly, Volatile: e.Volatile, Shared: e.Shared}
		if err := checkOptions(ec); err != nil {
			return nil, fmt.Errorf("server: config %s: export %d (%q): %w", path, i+1, e.Name, err)
		}
		c.Exports = append(c.Exports, ec)
	}
	if err := checkExports(c.Exports); err != nil {
		return nil, fmt.Errorf("server: config %s: %w", path, err)
	}
	return c, nil
}

func loadKeys(c *Config, key, authorized string, keyMode crypto.KeyModePolicy) error {
	if key == "" {
		return errors.New("no private key: set key = \"PATH\"")
	}
	if authorized == "" {
		return errors.New("no authorized keys: set authorized_keys = \"PATH\"")
	}
	k, err := crypto.LoadPrivateKey(key, keyMode)
	if err != nil {
		return err
	}
	a, err := crypto.LoadAuthorizedKeys(authorized)
	if err != nil {
		return err
	}
	c.PrivateKey, c.Authorized = k, a
	return nil
}
