package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"github.com/flynn/noise"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/sys/cpu"
)

// Cipher identifies the AEAD of the channel. Its numeric value is the cipher
// id byte of the handshake preamble.
type Cipher uint8

const (
	// CipherAuto lets the client pick PreferredCipher. Never on the wire.
	CipherAuto       Cipher = 0
	CipherChaChaPoly Cipher = 1 // ChaCha20-Poly1305
	CipherAESGCM     Cipher = 2 // AES-256-GCM
)

var cipherNames = [...]string{
	CipherAuto:       "auto",
	CipherChaChaPoly: "chacha20-poly1305",
	CipherAESGCM:     "aes-256-gcm",
}

// String returns the configuration name; unknown values print as numbers.
func (c Cipher) String() string {
	if int(c) < len(cipherNames) {
		return cipherNames[c]
	}
	return "cipher(" + strconv.Itoa(int(c)) + ")"
}

// ParseCipher parses a name as printed by String (case-insensitive). The
// Noise names "ChaChaPoly" and "AESGCM" are accepted too.
func ParseCipher(s string) (Cipher, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "auto", "":
		return CipherAuto, nil
	case "chacha20-poly1305", "chachapoly":
		return CipherChaChaPoly, nil
	case "aes-256-gcm", "aesgcm":
		return CipherAESGCM, nil
	}
	return 0, fmt.Errorf("crypto: unknown cipher %q (want auto, chacha20-poly1305 or aes-256-gcm)", s)
}

// MarshalText implements encoding.TextMarshaler, for configuration files.
func (c Cipher) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (c *Cipher) UnmarshalText(b []byte) error {
	v, err := ParseCipher(string(b))
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// PreferredCipher returns AES-256-GCM when this CPU has hardware AES and
// carry-less multiplication (where GCM beats ChaCha20-Poly1305 several
// times over), else ChaCha20-Poly1305, which is fast in pure software and
// constant-time everywhere.
func PreferredCipher() Cipher {
	switch runtime.GOARCH {
	case "amd64":
		if cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ {
			return CipherAESGCM
		}
	case "arm64":
		if cpu.ARM64.HasAES && cpu.ARM64.HasPMULL {
			return CipherAESGCM
		}
	}
	return CipherChaChaPoly
}

// valid reports whether c may appear on the wire.
func (c Cipher) valid() bool { return c == CipherChaChaPoly || c == CipherAESGCM }

// noiseFunc returns the Noise cipher function for c.
func (c Cipher) noiseFunc() noise.CipherFunc {
	if c == CipherAESGCM {
		return noise.CipherAESGCM
	}
	return noise.CipherChaChaPoly
}

// suite returns the Noise cipher suite Noise_*_25519_<c>_BLAKE2s.
func (c Cipher) suite() noise.CipherSuite {
	return noise.NewCipherSuite(noise.DH25519, c.noiseFunc(), noise.HashBLAKE2s)
}

// newAEAD builds the record-layer AEAD for key k. The record layer drives
// the AEAD itself instead of calling noise.CipherState.Encrypt, whose nonce
// construction allocates on every call; nonces follow the Noise spec
// exactly (see putNonce) and keys come from the CipherState.
func (c Cipher) newAEAD(k [32]byte) (cipher.AEAD, error) {
	if c == CipherAESGCM {
		b, err := aes.NewCipher(k[:])
		if err != nil {
			return nil, fmt.Errorf("crypto: %w", err)
		}
		return cipher.NewGCM(b)
	}
	return chacha20poly1305.New(k[:])
}

// putNonce writes the 96-bit AEAD nonce for counter n as the Noise spec
// defines it per cipher: 32 zero bits, then n little-endian (ChaChaPoly) or
// big-endian (AESGCM).
func (c Cipher) putNonce(dst *[12]byte, n uint64) {
	dst[0], dst[1], dst[2], dst[3] = 0, 0, 0, 0
	if c == CipherAESGCM {
		binary.BigEndian.PutUint64(dst[4:], n)
	} else {
		binary.LittleEndian.PutUint64(dst[4:], n)
	}
}
