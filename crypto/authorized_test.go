package crypto

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseAuthorizedKeys(t *testing.T) {
	k1, k2, k3 := testKey("a").Public(), testKey("b").Public(), testKey("c").Public()
	in := "# clients of storage1\n\n" +
		k1.String() + "\n" +
		"  " + k2.String() + "   laptop  (alice)  \n" +
		k3.String() + "\tbackup host\n" +
		"   # indented comment\n"
	a, err := ParseAuthorizedKeys(strings.NewReader(in), "authorized_keys")
	if err != nil {
		t.Fatal(err)
	}
	if a.Len() != 3 {
		t.Fatalf("Len = %d, want 3", a.Len())
	}
	keys := a.Keys()
	if keys[0] != k1 || keys[1] != k2 || keys[2] != k3 {
		t.Errorf("Keys() not in file order: %v", keys)
	}
	keys[0] = PublicKey{} // must be a copy
	if a.Keys()[0] != k1 {
		t.Error("Keys() returned internal storage")
	}
	for k, want := range map[PublicKey]string{k1: "", k2: "laptop  (alice)", k3: "backup host"} {
		if c, ok := a.Contains(k); !ok || c != want {
			t.Errorf("Contains(%v) = %q, %v; want %q", k, c, ok, want)
		}
		if err := a.Authorize(k); err != nil {
			t.Errorf("Authorize(%v) = %v", k, err)
		}
	}
	other := testKey("d").Public()
	if _, ok := a.Contains(other); ok {
		t.Error("Contains(unlisted) = true")
	}
	if err := a.Authorize(other); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), other.String()) {
		t.Errorf("Authorize(unlisted) = %v", err)
	}
}

func TestParseAuthorizedKeysErrors(t *testing.T) {
	k1, k2 := testKey("a").Public().String(), testKey("b").Public().String()
	tests := []struct {
		name, in, want string
	}{
		{"bad length", "# x\n\nAAAA comment\n", "crypto: authorized_keys:3: public key must be 44 base64 characters (32 bytes), got 4 characters"},
		{"bad base64", k1 + "\n" + "!" + k2[1:] + "\n", "crypto: authorized_keys:2: public key is not valid base64"},
		{"duplicate", k1 + " a\n" + k2 + "\n\n" + k1 + " b\n", "crypto: authorized_keys:4: duplicate key " + k1 + " (first on line 1)"},
		{"key glued to comment", k1 + "#c\n", "authorized_keys:1: public key must be 44"},
		{"line too long", strings.Repeat("x", 70<<10), "authorized_keys:1:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := ParseAuthorizedKeys(strings.NewReader(tt.in), "authorized_keys")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want containing %q", err, tt.want)
			}
			if a != nil {
				t.Error("returned keys along with an error")
			}
		})
	}
}

func TestLoadAuthorizedKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "authorized_keys")
	if err := os.WriteFile(path, []byte("bogus\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAuthorizedKeys(path); err == nil || !strings.Contains(err.Error(), path+":1:") {
		t.Errorf("error %v should name %s:1", err, path)
	}
	if err := os.WriteFile(path, []byte(testKey("a").Public().String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if a, err := LoadAuthorizedKeys(path); err != nil || a.Len() != 1 {
		t.Errorf("LoadAuthorizedKeys = %v, %v", a, err)
	}
	if _, err := LoadAuthorizedKeys(path + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file error %v", err)
	}
}

// TestAuthorizedKeyOptions: options after the key limit what it may open
// and whether it may write; the comment follows them; a key without
// options may do everything, as before options existed.
func TestAuthorizedKeyOptions(t *testing.T) {
	k1, k2, k3, k4 := testKey("a").Public(), testKey("b").Public(), testKey("c").Public(), testKey("d").Public()
	in := k1.String() + " exports=disk0,images ro backup host\n" +
		k2.String() + "\tro\tlaptop\n" +
		k3.String() + " exports=disk0 rw\n" +
		k4.String() + " roaming laptop\n"
	a, err := ParseAuthorizedKeys(strings.NewReader(in), "authorized_keys")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		k       PublicKey
		access  string
		comment string
		allows  map[string]bool
	}{
		{k1, "exports=disk0,images ro", "backup host", map[string]bool{"disk0": true, "images": true, "other": false}},
		{k2, "all exports ro", "laptop", map[string]bool{"disk0": true, "other": true}},
		{k3, "exports=disk0 rw", "", map[string]bool{"disk0": true, "images": false}},
		{k4, "all exports rw", "roaming laptop", map[string]bool{"disk0": true}},
	} {
		acc, ok := a.Access(c.k)
		comment, _ := a.Contains(c.k)
		if !ok || acc.String() != c.access || comment != c.comment {
			t.Errorf("key %v: access %q, comment %q; want %q, %q", c.k, acc, comment, c.access, c.comment)
		}
		for e, want := range c.allows {
			if acc.Allows(e) != want {
				t.Errorf("key %v (%v): Allows(%q) = %v", c.k, acc, e, !want)
			}
		}
	}
	for _, bad := range []string{" ro rw", " exports=a exports=b", " exports=", " exports=a,,b"} {
		if _, err := ParseAuthorizedKeys(strings.NewReader(k1.String()+bad+"\n"), "ak"); err == nil || !strings.Contains(err.Error(), "ak:1:") {
			t.Errorf("%q: err = %v, want a refusal naming the line", bad, err)
		}
	}
}
