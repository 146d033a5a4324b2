package crypto

import (
	"bufio"
	"fmt"
	"io"
	"os"
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
	line    int
}

// ParseAuthorizedKeys reads the authorized_keys format: one base64 public key
// per line, optionally followed by whitespace and a free-form comment; blank
// lines and lines starting with '#' are ignored. source names the input in
// errors ("crypto: authorized_keys:3: ...").
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
	keyText, comment := line, ""
	if i := strings.IndexAny(line, " \t"); i >= 0 {
		keyText, comment = line[:i], strings.TrimSpace(line[i:])
	}
	b, err := decodeKey(keyText, "public")
	if err != nil {
		return fmt.Errorf("crypto: %s:%d: %w", a.source, lineno, err)
	}
	k := PublicKey(b)
	if prev, dup := a.entries[k]; dup {
		return fmt.Errorf("crypto: %s:%d: duplicate key %s (first on line %d)", a.source, lineno, k, prev.line)
	}
	a.entries[k] = authorizedEntry{comment: comment, line: lineno}
	a.order = append(a.order, k)
	return nil
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
