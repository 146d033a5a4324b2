package crypto

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// maxAuthorizedLine bounds one line of an authorized_keys file.
const maxAuthorizedLine = 64 << 10

// AuthorizedKeys is the set of client public keys a server accepts, as read
// from an authorized_keys file. It is immutable after parsing and safe for
// concurrent use.
type AuthorizedKeys struct {
	source  string
	entries map[PublicKey]authorizedEntry
	order   []PublicKey // file order, for Keys
}

type authorizedEntry struct {
	comment string
	access  Access
	line    int
}

// Access is what an authorized key may do on a server.
type Access struct {
	// Exports names the exports the key may see and open; nil means every
	// export.
	Exports []string
	// ReadOnly keys may only read.
	ReadOnly bool
}

// Allows reports whether the key may see and open export.
func (a Access) Allows(export string) bool {
	return a.Exports == nil || slices.Contains(a.Exports, export)
}

// String describes a for logs: "exports=a,b ro", "all exports rw".
func (a Access) String() string {
	s := "all exports"
	if a.Exports != nil {
		s = "exports=" + strings.Join(a.Exports, ",")
	}
	if a.ReadOnly {
		return s + " ro"
	}
	return s + " rw"
}

// ParseAuthorizedKeys reads the authorized_keys format: one base64 public key
// per line, then, each optional and separated by whitespace, options and a
// free-form comment; blank lines and lines starting with '#' are ignored.
// The options come first, as words of their own:
//
//	exports=NAME[,NAME...]  the key sees and opens only these exports
//	ro                      the key may only read
//	rw                      the key may read and write (the default)
//
// A key without options keeps the meaning of a line without them: every
// export, read-write. source names the input in errors
// ("crypto: authorized_keys:3: ...").
func ParseAuthorizedKeys(r io.Reader, source string) (*AuthorizedKeys, error) {
	a := &AuthorizedKeys{source: source, entries: make(map[PublicKey]authorizedEntry)}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxAuthorizedLine)
	lineno := 0
	for sc.Scan() {
		lineno++
		if err := a.parseLine(sc.Text(), lineno); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("crypto: %s:%d: %w", source, lineno+1, err)
	}
	return a, nil
}

func (a *AuthorizedKeys) parseLine(line string, lineno int) error {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' {
		return nil
	}
	keyText, rest := line, ""
	if i := strings.IndexAny(line, " \t"); i >= 0 {
		keyText, rest = line[:i], strings.TrimSpace(line[i:])
	}
	b, err := decodeKey(keyText, "public")
	if err != nil {
		return fmt.Errorf("crypto: %s:%d: %w", a.source, lineno, err)
	}
	k := PublicKey(b)
	if prev, dup := a.entries[k]; dup {
		return fmt.Errorf("crypto: %s:%d: duplicate key %s (first on line %d)", a.source, lineno, k, prev.line)
	}
	access, comment, err := parseOptions(rest)
	if err != nil {
		return fmt.Errorf("crypto: %s:%d: %w", a.source, lineno, err)
	}
	a.entries[k] = authorizedEntry{comment: comment, access: access, line: lineno}
	a.order = append(a.order, k)
	return nil
}

// parseOptions reads the options at the start of rest; what follows them
// is the comment.
func parseOptions(rest string) (Access, string, error) {
	var acc Access
	var seenMode, seenExports bool
	for rest != "" {
		word, after, _ := strings.Cut(rest, " ")
		if i := strings.IndexByte(word, '\t'); i >= 0 {
			word, after = word[:i], rest[i+1:]
		}
		switch {
		case word == "ro" || word == "rw":
			if seenMode {
				return acc, "", fmt.Errorf("ro or rw given twice")
			}
			seenMode, acc.ReadOnly = true, word == "ro"
		case strings.HasPrefix(word, "exports="):
			if seenExports {
				return acc, "", fmt.Errorf("exports= given twice")
			}
			seenExports = true
			acc.Exports = []string{}
			for _, name := range strings.Split(strings.TrimPrefix(word, "exports="), ",") {
				if name == "" {
					return acc, "", fmt.Errorf("exports=%s: an empty export name", strings.TrimPrefix(word, "exports="))
				}
				acc.Exports = append(acc.Exports, name)
			}
		default:
			return acc, rest, nil
		}
		rest = strings.TrimSpace(after)
	}
	return acc, "", nil
}

// LoadAuthorizedKeys reads an authorized_keys file; errors name the file.
func LoadAuthorizedKeys(path string) (*AuthorizedKeys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("crypto: reading authorized keys: %w", err)
	}
	defer f.Close()
	return ParseAuthorizedKeys(f, path)
}

// Contains reports whether k is authorized, with the comment from its line.
func (a *AuthorizedKeys) Contains(k PublicKey) (comment string, ok bool) {
	e, ok := a.entries[k]
	return e.comment, ok
}

// Access returns what k may do, and whether it is authorized at all.
func (a *AuthorizedKeys) Access(k PublicKey) (Access, bool) {
	e, ok := a.entries[k]
	return e.access, ok
}

// Authorize is a ServerConfig.Authorize callback: nil for a listed key, an
// error wrapping ErrUnauthorized otherwise.
func (a *AuthorizedKeys) Authorize(k PublicKey) error {
	if _, ok := a.entries[k]; !ok {
		return fmt.Errorf("crypto: key %s is not listed in %s: %w", k, a.source, ErrUnauthorized)
	}
	return nil
}

// Len returns the number of keys.
func (a *AuthorizedKeys) Len() int { return len(a.order) }

// Keys returns the keys in file order. The slice is a copy.
func (a *AuthorizedKeys) Keys() []PublicKey { return append([]PublicKey(nil), a.order...) }
