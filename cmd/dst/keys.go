package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/dstproject/dst/crypto"
)

func cmdKeygen(ctx context.Context, args []string) error {
	fs := newFlagSet("keygen", "[-o FILE]")
	out := fs.String("o", "", "write the key to `FILE` (mode 0600) instead of stdout")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	k, err := crypto.GeneratePrivateKey()
	if err != nil {
		return err
	}
	if *out != "" {
		return crypto.WritePrivateKey(*out, k)
	}
	fmt.Println(k.Base64())
	return nil
}

func cmdPubkey(ctx context.Context, args []string) error {
	fs := newFlagSet("pubkey", "< PRIVATE_KEY")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	s, err := readAllTrim(os.Stdin)
	if err != nil {
		return err
	}
	k, err := crypto.ParsePrivateKey(s)
	if err != nil {
		return fmt.Errorf("reading a private key on stdin: %w", err)
	}
	if !k.Clamped() {
		return errors.New("this does not look like a private key (it is not clamped); is it a public key? " +
			"dst keygen and wg genkey make clamped private keys")
	}
	fmt.Println(k.Public().String())
	return nil
}

// keyModeFlag adds --allow-insecure-key-mode to fs and returns a function
// that gives the policy for private key files once flags are parsed.
func keyModeFlag(fs *flag.FlagSet) func(log *slog.Logger) crypto.KeyModePolicy {
	allow := fs.Bool("allow-insecure-key-mode", false,
		"use a private key file that group or others may access, with a warning, instead of refusing it")
	return func(log *slog.Logger) crypto.KeyModePolicy {
		return crypto.KeyModePolicy{AllowInsecure: *allow, Warn: func(e *crypto.KeyModeError) {
			log.Warn("using a private key file that group or others may access, as allowed; make it private with chmod 600",
				"file", e.Path, "mode", fmt.Sprintf("%04o", e.Mode.Perm()))
		}}
	}
}

// warnUnclamped logs a private key that is not clamped. It still works
// (X25519 clamps it), and other tools may make such keys, but it may be a
// public key given where the private one belongs: then anyone who has that
// public key can pose as this host.
func warnUnclamped(log *slog.Logger, k crypto.PrivateKey, source string) {
	if !k.Clamped() {
		log.Warn("the private key does not look like one (it is not clamped): if it is a public key, "+
			"anyone who has that key can pose as this host; make a private key with dst keygen", "key", source)
	}
}
