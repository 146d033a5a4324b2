package crypto

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// RFC 7748 section 6.1 Diffie-Hellman test vectors.
func TestPublicKeyRFC7748(t *testing.T) {
	for _, v := range []struct{ priv, pub string }{
		{"77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a", "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"},
		{"5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb", "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"},
	} {
		var k PrivateKey
		copy(k[:], mustHex(t, v.priv))
		if got := k.Public(); hex.EncodeToString(got[:]) != v.pub {
			t.Errorf("Public(%s) = %x, want %s", v.priv, got, v.pub)
		}
	}
}

func TestGeneratePrivateKey(t *testing.T) {
	a, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if a.Equal(b) || a.IsZero() || a.Public().IsZero() {
		t.Fatalf("generated keys not random: %s %s", a.Public(), b.Public())
	}
	if a[0]&7 != 0 || a[31]&128 != 0 || a[31]&64 == 0 {
		t.Errorf("key not clamped: first %#x last %#x", a[0], a[31])
	}
}

// TestClamped: generated keys are clamped, each clamping bit matters, and
// RFC 7748's keys (public ones, and its private ones, which are stored
// unclamped) are not.
func TestClamped(t *testing.T) {
	for range 100 {
		k, err := GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		if !k.Clamped() {
			t.Fatalf("a generated key is not Clamped: first %#x last %#x", k[0], k[31])
		}
	}
	k := testKey("clamp")
	for _, bit := range []struct{ i, mask byte }{{0, 1}, {0, 2}, {0, 4}, {31, 0x80}, {31, 0x40}} {
		o := k
		o[bit.i] ^= bit.mask
		if o.Clamped() {
			t.Errorf("key with byte %d bit %#x flipped is Clamped", bit.i, bit.mask)
		}
	}
	for _, h := range []string{
		"77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
		"8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
		"5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
		"de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
	} {
		var o PrivateKey
		copy(o[:], mustHex(t, h))
		if o.Clamped() {
			t.Errorf("%s is Clamped", h)
		}
		o.clamp()
		if !o.Clamped() {
			t.Errorf("%s clamped is not Clamped", h)
		}
	}
}

func TestKeyText(t *testing.T) {
	k := testKey("text")
	pub := k.Public()
	if s := k.String(); s != "(private key)" {
		t.Errorf("PrivateKey.String() = %q leaks or changed", s)
	}
	if len(pub.String()) != 44 || len(k.Base64()) != 44 {
		t.Fatalf("text forms %q %q not 44 characters", pub, k.Base64())
	}
	if p, err := ParsePrivateKey("  " + k.Base64() + "\n"); err != nil || !p.Equal(k) {
		t.Errorf("ParsePrivateKey(Base64) = %v, %v", p.Public(), err)
	}
	if p, err := ParsePublicKey(pub.String()); err != nil || p != pub {
		t.Errorf("ParsePublicKey(String) = %v, %v", p, err)
	}
	var pk PrivateKey
	var pp PublicKey
	kt, _ := k.MarshalText()
	pt, _ := pub.MarshalText()
	if err := pk.UnmarshalText(kt); err != nil || pk != k {
		t.Errorf("private text round trip: %v", err)
	}
	if err := pp.UnmarshalText(pt); err != nil || pp != pub {
		t.Errorf("public text round trip: %v", err)
	}
	if err := pp.UnmarshalText([]byte("short")); err == nil {
		t.Error("UnmarshalText accepted a short key")
	}
}

func TestParseKeyErrors(t *testing.T) {
	valid := testKey("x").Public().String()
	tests := []struct {
		name, in, want string
	}{
		{"short", "AAAAAAAAAAAA", "crypto: public key must be 44 base64 characters (32 bytes), got 12 characters"},
		{"empty", "", "got 0 characters"},
		{"43", valid[:43], "got 43 characters"},
		{"45", valid + "A", "got 45 characters"},
		{"bad char", "!" + valid[1:], "not valid base64"},
		{"31 bytes", valid[:42] + "==", "not valid base64"},
		{"non-canonical padding bits", valid[:42] + "B=", "not valid base64"},
		{"inner space", valid[:20] + " " + valid[21:], "not valid base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePublicKey(tt.in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParsePublicKey(%q) error %v, want containing %q", tt.in, err, tt.want)
			}
			if _, err := ParsePrivateKey(tt.in); err == nil {
				t.Errorf("ParsePrivateKey(%q) accepted", tt.in)
			}
		})
	}
}

func TestEqualIsZero(t *testing.T) {
	k := testKey("eq").Public()
	if !k.Equal(k) || k.IsZero() || !(PublicKey{}).IsZero() || !(PrivateKey{}).IsZero() {
		t.Fatal("Equal/IsZero basics wrong")
	}
	// Every byte position must take part in the comparison.
	for i := range KeySize {
		o := k
		o[i] ^= 1
		if k.Equal(o) {
			t.Errorf("PublicKey.Equal ignores byte %d", i)
		}
		p, q := testKey("eq"), testKey("eq")
		q[i] ^= 0x80
		if p.Equal(q) {
			t.Errorf("PrivateKey.Equal ignores byte %d", i)
		}
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	k := testKey("file")
	path := filepath.Join(dir, "key")
	if err := WritePrivateKey(path, k); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	got, err := LoadPrivateKey(path, KeyModePolicy{})
	if err != nil || !got.Equal(k) {
		t.Fatalf("LoadPrivateKey = %v, %v", got.Public(), err)
	}
	err = WritePrivateKey(path, testKey("other"))
	if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), path) {
		t.Errorf("overwrite: error %v, want fs.ErrExist naming the file", err)
	}
	if again, _ := LoadPrivateKey(path, KeyModePolicy{}); !again.Equal(k) {
		t.Error("refused overwrite still changed the key file")
	}

	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bad := []struct{ name, content, want string }{
		{"empty", " \n", "is empty"},
		{"twolines", k.Base64() + "\n" + k.Base64() + "\n", "more than one line"},
		{"garbage", "hello\n", "private key must be 44 base64 characters"},
		{"huge", strings.Repeat("A", 5000), "larger than"},
	}
	for _, b := range bad {
		p := write(b.name, b.content)
		_, err := LoadPrivateKey(p, KeyModePolicy{})
		if err == nil || !strings.Contains(err.Error(), b.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("LoadPrivateKey(%s): error %v, want %q and the file name", b.name, err, b.want)
		}
	}
	if _, err := LoadPrivateKey(filepath.Join(dir, "missing"), KeyModePolicy{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}

	pub := k.Public()
	pubPath := write("key.pub", pub.String()+"\n")
	for _, arg := range []string{pub.String(), "@" + pubPath} {
		if got, err := LoadPublicKey(arg); err != nil || got != pub {
			t.Errorf("LoadPublicKey(%q) = %v, %v", arg, got, err)
		}
	}
	if _, err := LoadPublicKey("@" + write("bad.pub", "nope")); err == nil || !strings.Contains(err.Error(), "bad.pub") {
		t.Errorf("LoadPublicKey(bad file) error %v should name the file", err)
	}
}

// TestLoadPrivateKeyMode: a private key file that group or others may
// access is refused, with an error naming the file, its mode and the fix,
// unless the policy allows it, and then the policy's Warn hears of it.
func TestLoadPrivateKeyMode(t *testing.T) {
	dir := t.TempDir()
	k := testKey("mode")
	for _, mode := range []fs.FileMode{0o600, 0o400, 0o640, 0o604, 0o620, 0o602, 0o644, 0o660, 0o666} {
		path := filepath.Join(dir, fmt.Sprintf("key%04o", mode))
		if err := os.WriteFile(path, []byte(k.Base64()+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		open := mode&0o077 != 0
		got, err := LoadPrivateKey(path, KeyModePolicy{})
		var me *KeyModeError
		switch {
		case !open && (err != nil || !got.Equal(k)):
			t.Errorf("mode %04o: LoadPrivateKey = %v, %v; want the key", mode, got.Public(), err)
		case open && !errors.As(err, &me):
			t.Errorf("mode %04o: LoadPrivateKey error %v, want a *KeyModeError", mode, err)
		case open && (me.Path != path || me.Mode != mode):
			t.Errorf("mode %04o: KeyModeError %+v, want path %s and mode %04o", mode, me, path, mode)
		case open:
			for _, w := range []string{path, fmt.Sprintf("%04o", mode), "chmod 600 " + path} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("mode %04o: error %q does not say %q", mode, err, w)
				}
			}
		}

		var warned []*KeyModeError
		allow := KeyModePolicy{AllowInsecure: true, Warn: func(e *KeyModeError) { warned = append(warned, e) }}
		got, err = LoadPrivateKey(path, allow)
		if err != nil || !got.Equal(k) {
			t.Errorf("mode %04o, insecure mode allowed: LoadPrivateKey = %v, %v; want the key", mode, got.Public(), err)
		}
		if open && (len(warned) != 1 || warned[0].Path != path || warned[0].Mode != mode) {
			t.Errorf("mode %04o, insecure mode allowed: warnings %v, want one for %s", mode, warned, path)
		}
		if !open && len(warned) != 0 {
			t.Errorf("mode %04o: warned %v about a private file", mode, warned)
		}
	}
}

// TestLoadPrivateKeyPipes: a named pipe is held to the same rule as a
// regular file (its mode says who else can open it and read the key); an
// anonymous pipe, as --key /dev/stdin or bash's <(...) give, is private.
func TestLoadPrivateKeyPipes(t *testing.T) {
	k := testKey("pipe")
	dir := t.TempDir()
	for _, mode := range []uint32{0o600, 0o644} {
		fifo := filepath.Join(dir, fmt.Sprintf("fifo%04o", mode))
		if err := syscall.Mkfifo(fifo, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(fifo, fs.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
				f.WriteString(k.Base64() + "\n")
				f.Close()
			}
		}()
		got, err := LoadPrivateKey(fifo, KeyModePolicy{})
		<-done
		var me *KeyModeError
		if mode == 0o600 && (err != nil || !got.Equal(k)) {
			t.Errorf("named pipe of mode 0600: LoadPrivateKey = %v, %v; want the key", got.Public(), err)
		}
		if mode != 0o600 && !errors.As(err, &me) {
			t.Errorf("named pipe of mode %04o: LoadPrivateKey error %v, want a *KeyModeError", mode, err)
		}
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w.WriteString(k.Base64() + "\n")
	w.Close()
	got, err := LoadPrivateKey(fmt.Sprintf("/proc/self/fd/%d", r.Fd()), KeyModePolicy{})
	if err != nil || !got.Equal(k) {
		t.Errorf("anonymous pipe: LoadPrivateKey = %v, %v; want the key", got.Public(), err)
	}
}
