package crypto

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// KeySize is the length in bytes of private and public keys.
const KeySize = 32

// keyTextLen is the length of a key in its text form: standard base64 of
// KeySize bytes, padding included, exactly like WireGuard's.
const keyTextLen = 44

// maxKeyFileSize bounds how much of a key file is read; a key file holds one
// 44-character line, anything much larger is the wrong file.
const maxKeyFileSize = 4096

// PrivateKey is a Curve25519 private key (scalar).
type PrivateKey [KeySize]byte

// PublicKey is a Curve25519 public key (point), the identity of a host.
type PublicKey [KeySize]byte

// GeneratePrivateKey returns a new private key from crypto/rand, clamped as
// RFC 7748 describes (as WireGuard does), so the stored scalar is the one used.
func GeneratePrivateKey() (PrivateKey, error) {
	var k PrivateKey
	if _, err := io.ReadFull(rand.Reader, k[:]); err != nil {
		return PrivateKey{}, fmt.Errorf("crypto: generating private key: %w", err)
	}
	k.clamp()
	return k, nil
}

func (k *PrivateKey) clamp() {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// Clamped reports whether k is clamped as RFC 7748 describes: the low three
// bits clear, the top bit clear and the one below it set. Keys from
// GeneratePrivateKey and from WireGuard's wg genkey are; a public key looks
// clamped only by chance (one in 16), so an unclamped key is most likely a
// public key given where a private one belongs. X25519 clamps the scalar
// itself, overwriting the bits read here, so their timing tells nothing.
func (k PrivateKey) Clamped() bool { return k[0]&7 == 0 && k[31]&0xc0 == 0x40 }

// Public returns the public key of k.
func (k PrivateKey) Public() PublicKey {
	var p PublicKey
	// X25519 with the base point cannot produce the all-zero output (the
	// only error it reports), because the clamped scalar is never zero.
	out, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil {
		return PublicKey{}
	}
	copy(p[:], out)
	return p
}

// Equal reports whether k and o are the same key, in constant time.
func (k PrivateKey) Equal(o PrivateKey) bool { return subtle.ConstantTimeCompare(k[:], o[:]) == 1 }

// IsZero reports whether k is all zeros (unset), in constant time.
func (k PrivateKey) IsZero() bool { return k.Equal(PrivateKey{}) }

// String deliberately hides the key so it never lands in a log.
func (k PrivateKey) String() string { return "(private key)" }

// Base64 returns the key in WireGuard's text form. Handle with care.
func (k PrivateKey) Base64() string { return base64.StdEncoding.EncodeToString(k[:]) }

// MarshalText implements encoding.TextMarshaler (the base64 form).
func (k PrivateKey) MarshalText() ([]byte, error) { return []byte(k.Base64()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *PrivateKey) UnmarshalText(b []byte) error {
	p, err := ParsePrivateKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// Equal reports whether k and o are the same key, in constant time.
func (k PublicKey) Equal(o PublicKey) bool { return subtle.ConstantTimeCompare(k[:], o[:]) == 1 }

// IsZero reports whether k is all zeros (unset), in constant time.
func (k PublicKey) IsZero() bool { return k.Equal(PublicKey{}) }

// String returns the key in WireGuard's text form (44 base64 characters).
func (k PublicKey) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// MarshalText implements encoding.TextMarshaler.
func (k PublicKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *PublicKey) UnmarshalText(b []byte) error {
	p, err := ParsePublicKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// ParsePrivateKey parses a private key in WireGuard's text form, ignoring
// surrounding whitespace.
func ParsePrivateKey(s string) (PrivateKey, error) {
	b, err := decodeKey(s, "private")
	if err != nil {
		return PrivateKey{}, fmt.Errorf("crypto: %w", err)
	}
	return PrivateKey(b), nil
}

// ParsePublicKey parses a public key in WireGuard's text form, ignoring
// surrounding whitespace.
func ParsePublicKey(s string) (PublicKey, error) {
	b, err := decodeKey(s, "public")
	if err != nil {
		return PublicKey{}, fmt.Errorf("crypto: %w", err)
	}
	return PublicKey(b), nil
}

// decodeKey returns errors without the package prefix so that callers can
// add their own context (file and line) in front.
func decodeKey(s, kind string) ([KeySize]byte, error) {
	var k [KeySize]byte
	s = strings.TrimSpace(s)
	if len(s) != keyTextLen {
		return k, fmt.Errorf("%s key must be %d base64 characters (%d bytes), got %d characters",
			kind, keyTextLen, KeySize, len(s))
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return k, fmt.Errorf("%s key is not valid base64: %v", kind, err)
	}
	if len(b) != KeySize {
		return k, fmt.Errorf("%s key must decode to %d bytes, got %d", kind, KeySize, len(b))
	}
	copy(k[:], b)
	return k, nil
}

// KeyModePolicy says what LoadPrivateKey does with a key file that group
// or others may access. The zero value refuses it, as ssh does.
type KeyModePolicy struct {
	// AllowInsecure loads such a file anyway.
	AllowInsecure bool
	// Warn, if set, is told about each such file that AllowInsecure loads.
	Warn func(*KeyModeError)
}

// KeyModeError is a private key file whose permissions let group or others
// read it, or replace the key in it.
type KeyModeError struct {
	Path string
	Mode fs.FileMode // permission bits
}

func (e *KeyModeError) Error() string {
	return fmt.Sprintf("crypto: permissions %04o for private key file %s are too open: group or others may read or replace it; "+
		"make it private with: chmod 600 %s", e.Mode.Perm(), e.Path, e.Path)
}

// check applies p to the opened key file. Only regular files and named
// pipes are checked: their permission bits say who else can read the key
// from them. An anonymous pipe (--key /dev/stdin fed by a pipe, or bash's
// <(...)) has mode 0600 anyway; a terminal's bits say who may write to it,
// not who can read the key.
func (p KeyModePolicy) check(path string, fi fs.FileInfo) error {
	m := fi.Mode()
	if t := m.Type(); t != 0 && t != fs.ModeNamedPipe {
		return nil
	}
	if m.Perm()&0o077 == 0 {
		return nil
	}
	e := &KeyModeError{Path: path, Mode: m.Perm()}
	if !p.AllowInsecure {
		return e
	}
	if p.Warn != nil {
		p.Warn(e)
	}
	return nil
}

// LoadPrivateKey reads a private key file: one line holding the base64 key.
// A file that group or others may access is refused with a *KeyModeError
// unless policy allows it.
func LoadPrivateKey(path string, policy KeyModePolicy) (PrivateKey, error) {
	line, err := readKeyFile(path, func(fi fs.FileInfo) error { return policy.check(path, fi) })
	if err != nil {
		return PrivateKey{}, err
	}
	b, err := decodeKey(line, "private")
	if err != nil {
		return PrivateKey{}, fmt.Errorf("crypto: key file %s: %w", path, err)
	}
	return PrivateKey(b), nil
}

// WritePrivateKey writes k to a new file at path with mode 0600. It refuses
// to overwrite an existing file (the error wraps fs.ErrExist): replacing a
// host's identity key by accident would lock out every peer that pinned it.
func WritePrivateKey(path string, k PrivateKey) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("crypto: refusing to overwrite existing key file %s: %w", path, err)
		}
		return fmt.Errorf("crypto: creating key file: %w", err)
	}
	_, err = f.WriteString(k.Base64() + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path) // a truncated key file is worse than none
		return fmt.Errorf("crypto: writing key file %s: %w", path, err)
	}
	return nil
}

// LoadPublicKey accepts a public key either inline (base64) or as "@FILE",
// naming a file that holds one base64 line (as `wg pubkey` writes it).
func LoadPublicKey(arg string) (PublicKey, error) {
	path, isFile := strings.CutPrefix(arg, "@")
	if !isFile {
		return ParsePublicKey(arg)
	}
	line, err := readKeyFile(path, nil)
	if err != nil {
		return PublicKey{}, err
	}
	b, err := decodeKey(line, "public")
	if err != nil {
		return PublicKey{}, fmt.Errorf("crypto: key file %s: %w", path, err)
	}
	return PublicKey(b), nil
}

// readKeyFile returns the single non-empty line of a key file. check, if
// set, sees the opened file before anything is read from it.
func readKeyFile(path string, check func(fs.FileInfo) error) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("crypto: reading key file: %w", err)
	}
	defer f.Close()
	if check != nil {
		fi, err := f.Stat()
		if err != nil {
			return "", fmt.Errorf("crypto: reading key file: %w", err)
		}
		if err := check(fi); err != nil {
			return "", err
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return "", fmt.Errorf("crypto: reading key file %s: %w", path, err)
	}
	if len(b) > maxKeyFileSize {
		return "", fmt.Errorf("crypto: key file %s is larger than %d bytes; it should hold one base64 line", path, maxKeyFileSize)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("crypto: key file %s is empty", path)
	}
	if strings.ContainsAny(s, "\r\n") {
		return "", fmt.Errorf("crypto: key file %s has more than one line; it should hold one base64 key", path)
	}
	return s, nil
}
