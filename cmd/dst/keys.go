package main

import (
	"context"
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
