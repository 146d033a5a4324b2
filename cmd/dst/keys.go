package main

import (
	"context"
	"fmt"
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
