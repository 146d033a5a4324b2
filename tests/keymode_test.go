package tests

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInsecureKeyMode: dst serve and dst attach refuse a private key file
// that group or others may access, naming the file, its mode and the fix,
// and use it with a warning when given --allow-insecure-key-mode.
func TestInsecureKeyMode(t *testing.T) {
	requireDst(t)
	s := startServer(t, &export{Name: "disk", Size: 1 << 20})

	// The client key, readable by its group.
	if err := os.Chmod(s.clientKey, 0o640); err != nil {
		t.Fatal(err)
	}
	r := s.attachExpectingFailure(t, s.clientKey, s.serverPub, "disk")
	switch {
	case r.timedOut:
		t.Fatalf("attach with a key file of mode 0640 still running after %v, want a refusal\n%s", startTimeout, r.out)
	case r.err == nil:
		t.Fatalf("attach with a key file of mode 0640 exited 0, want a refusal\n%s", r.out)
	case r.socketSeen:
		t.Errorf("the NBD socket appeared although attach refused its key")
	}
	wantRefusal(t, r.out, s.clientKey, "0640")
	a := s.attach(t, "disk", "--allow-insecure-key-mode")
	wantWarning(t, a.proc, s.clientKey, "0640")

	// The server key, readable by everyone; a second server, on an image of
	// its own, since the first one holds its image's lock.
	serverKey := filepath.Join(s.dir, "server.key")
	if err := os.Chmod(serverKey, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(s.dir, "other.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	serve := func(extra ...string) *proc {
		argv := append([]string{dstBin, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			"--key", serverKey, "--authorized-keys", filepath.Join(s.dir, "authorized_keys"),
			"--export", "other=" + img}, extra...)
		p := startProc(t, "dst serve "+strings.Join(extra, " "), argv...)
		p.waitFor("exit or listening", startTimeout, func() bool { return strings.Contains(p.out.String(), "listening") })
		return p
	}
	p := serve()
	if !p.exited() || p.err == nil {
		t.Fatalf("serve with a key file of mode 0644 did not fail (exited %v, %v)\n%s", p.exited(), p.err, p.out.String())
	}
	wantRefusal(t, p.out.String(), serverKey, "0644")
	p = serve("--allow-insecure-key-mode")
	if p.exited() {
		t.Fatalf("serve --allow-insecure-key-mode exited: %v\n%s", p.err, p.out.String())
	}
	wantWarning(t, p, serverKey, "0644")
}

func wantRefusal(t *testing.T, out, file, mode string) {
	t.Helper()
	for _, w := range []string{file, mode, "chmod 600"} {
		if !strings.Contains(out, w) {
			t.Errorf("the refusal does not say %q:\n%s", w, out)
		}
	}
}

func wantWarning(t *testing.T, p *proc, file, mode string) {
	t.Helper()
	for _, line := range strings.Split(p.out.String(), "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, file) && strings.Contains(line, mode) {
			return
		}
	}
	t.Errorf("%s logged no warning naming %s and mode %s", p.name, file, mode)
}

// TestPubkeyRefusesPublicKey: `dst pubkey` given a public key where the
// private one belongs says so rather than printing a key derived from it.
// Public keys are told apart by not being clamped, as every key from dst
// keygen or wg genkey is; the two fixed ones are RFC 7748's, and the
// generated one is used when it is not clamped-looking (15 times in 16).
func TestPubkeyRefusesPublicKey(t *testing.T) {
	requireDst(t)
	_, pub := keygen(t, t.TempDir(), "k") // keygen checks that pubkey takes the private key
	inputs := []string{"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=", "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08="}
	if b, err := base64.StdEncoding.DecodeString(pub); err != nil {
		t.Fatal(err)
	} else if b[0]&7 != 0 || b[31]&0xc0 != 0x40 {
		inputs = append(inputs, pub)
	}
	for _, in := range inputs {
		out, err := runIn(strings.NewReader(in+"\n"), dstBin, "pubkey")
		if err == nil {
			t.Errorf("dst pubkey accepted the public key %s and printed %s", in, strings.TrimSpace(out))
			continue
		}
		if !strings.Contains(out, "not clamped") || !strings.Contains(out, "public key") {
			t.Errorf("dst pubkey refused the public key %s without saying it looks like one: %s", in, out)
		}
	}
}

// TestUnclampedKeyWarning: dst serve given a public key as its private key
// file still starts (other tools make unclamped private keys, and X25519
// clamps them), but warns that it looks like a public key.
func TestUnclampedKeyWarning(t *testing.T) {
	requireDst(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "server.pub")
	if err := os.WriteFile(key, []byte("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, clientPub := keygen(t, dir, "client")
	authorized := filepath.Join(dir, "authorized_keys")
	img := filepath.Join(dir, "disk.img")
	for _, f := range []struct{ path, body string }{{authorized, clientPub + "\n"}, {img, strings.Repeat("\x00", 1<<20)}} {
		if err := os.WriteFile(f.path, []byte(f.body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := startProc(t, "dst serve", dstBin, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--key", key, "--authorized-keys", authorized, "--export", "disk="+img)
	if err := p.waitFor("listening", startTimeout, func() bool { return strings.Contains(p.out.String(), "listening") }); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(p.out.String(), "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "not clamped") && strings.Contains(line, key) {
			return
		}
	}
	t.Errorf("dst serve gave no warning naming %s as not clamped", key)
}
