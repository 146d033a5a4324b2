// Command dst exports disks over an authenticated, encrypted channel and
// attaches them on client hosts as NBD block devices.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/dstproject/dst/internal/sdnotify"
)

const usage = `dst: a network block device over an authenticated, encrypted channel

Usage:
  dst keygen [-o FILE]                 print (or write, mode 0600) a new private key
  dst pubkey < PRIVATE                 print the public key of a private key
  dst serve [flags]                    export files or block devices
  dst serve status [--json]            what a running dst serve serves, to whom
  dst attach [flags] HOST:PORT EXPORT /dev/nbdN
                                       attach an export as a kernel block device
                                       (--device auto picks a free one and prints it)
  dst attach [flags] HOST:PORT EXPORT --nbd-listen unix:PATH|tcp:HOST:PORT
                                       attach an export, serve it as a local NBD socket
  dst detach /dev/nbdN                 detach a kernel block device
  dst list                             list attachments: kernel block devices and NBD sockets
  dst status [/dev/nbdN|NAME] [--json] what each running dst attach is doing
  dst events [/dev/nbdN|NAME]... [--json]
                                       follow attachments' state changes as they happen
  dst info [flags] HOST:PORT           print what autoconfiguration learns from a server
  dst discover                         list the dst servers announced on the local network
                                       (attach and info take auto for HOST:PORT: the one holding
                                       --server-key)
  dst udev nbdN                        udev properties of a device (run by 60-dst.rules)
  dst version

Run "dst COMMAND -h" for a command's flags.
`

var commands = map[string]func(ctx context.Context, args []string) error{
	"keygen":   cmdKeygen,
	"pubkey":   cmdPubkey,
	"serve":    cmdServe,
	"attach":   cmdAttach,
	"detach":   cmdDetach,
	"list":     cmdList,
	"status":   cmdStatus,
	"events":   cmdEvents,
	"info":     cmdInfo,
	"udev":     cmdUdev,
	"discover": cmdDiscover,
	"version":  cmdVersion,
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		fmt.Fprint(os.Stdout, usage)
		return
	}
	if name == "--version" || name == "-V" {
		name = "version"
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "dst: unknown command %q\n\n%s", name, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	context.AfterFunc(ctx, func() { sdnotify.Stopping() })
	stopProfile := startProfile(os.Getenv("DST_CPUPROFILE"))
	err := cmd(ctx, os.Args[2:])
	stopProfile()
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "dst %s: %v\n", name, err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError marks mistakes on the command line (exit status 2).
type usageError struct{ error }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func newFlagSet(name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: dst %s %s\n\nFlags:\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags interspersed with positionals and checks their count.
func parse(fs *flag.FlagSet, args []string, minPos, maxPos int) ([]string, error) {
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	if len(pos) < minPos || len(pos) > maxPos {
		fs.Usage()
		return nil, usagef("expected %d to %d arguments, got %d: %q", minPos, maxPos, len(pos), pos)
	}
	return pos, nil
}

// logFlag adds --log-level to fs and returns a function that builds the
// logger once flags are parsed.
func logFlag(fs *flag.FlagSet) func() *slog.Logger {
	level := fs.String("log-level", envOr("DST_LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	format := logFormat(envOr("DST_LOG_FORMAT", "text"))
	fs.Var(&format, "log-format", "log `FORMAT`: text (logfmt) or json; under systemd, lines carry\ntheir syslog priority for the journal")
	return func() *slog.Logger {
		var l slog.Level
		if err := l.UnmarshalText([]byte(*level)); err != nil {
			l = slog.LevelInfo
		}
		log, err := newLogger(os.Stderr, string(format), l, stderrIsJournal())
		if err != nil { // DST_LOG_FORMAT, which the flag did not check
			fmt.Fprintf(os.Stderr, "dst: DST_LOG_FORMAT: %v; logging as text\n", err)
			log, _ = newLogger(os.Stderr, "text", l, stderrIsJournal())
		}
		slog.SetDefault(log)
		return log
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func cmdVersion(ctx context.Context, args []string) error {
	fmt.Println("dst", version)
	return nil
}

func readAllTrim(r io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	return strings.TrimSpace(string(b)), err
}
