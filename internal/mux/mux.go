package mux

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

// Options tune a session. The zero value gives the defaults.
type Options struct {
	// KeepAlive is the interval between yamux pings on an idle session;
	// zero means 5s.
	KeepAlive time.Duration
	// WriteTimeout bounds a blocked write, including a keepalive's; a peer
	// that stops reading is declared dead after it. Zero means 10s.
	WriteTimeout time.Duration
	Logger       *slog.Logger
}

func (o *Options) config() *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = 1024
	c.EnableKeepAlive = true
	c.KeepAliveInterval = 5 * time.Second
	if o.KeepAlive > 0 {
		c.KeepAliveInterval = o.KeepAlive
	}
	c.ConnectionWriteTimeout = 10 * time.Second
	if o.WriteTimeout > 0 {
		c.ConnectionWriteTimeout = o.WriteTimeout
	}
	c.StreamOpenTimeout = 30 * time.Second
	c.StreamCloseTimeout = 30 * time.Second
	c.LogOutput = nil
	c.Logger = logAdapter{o.logger().With("layer", "yamux")}
	return c
}

func (o *Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

// Client starts the client side of a session over conn, which carries the
// encrypted channel.
func Client(conn net.Conn, o *Options) (*yamux.Session, error) {
	if o == nil {
		o = &Options{}
	}
	s, err := yamux.Client(conn, o.config())
	if err != nil {
		return nil, fmt.Errorf("mux: starting client session: %w", err)
	}
	return s, nil
}

// Server starts the server side of a session over conn. The peer is held
// to bounds on pings and new streams that yamux does not enforce (guard.go):
// one that breaks them loses the session.
func Server(conn net.Conn, o *Options) (*yamux.Session, error) {
	if o == nil {
		o = &Options{}
	}
	c := o.config()
	c.AcceptBacklog = serverBacklog
	s, err := yamux.Server(newGuard(conn, o.logger()), c)
	if err != nil {
		return nil, fmt.Errorf("mux: starting server session: %w", err)
	}
	return s, nil
}

// logAdapter sends yamux's log lines to slog at debug level: yamux logs
// every broken connection as an error, which the layers above already report
// with more context.
type logAdapter struct{ l *slog.Logger }

func (a logAdapter) Print(v ...any) { a.l.Debug(fmt.Sprint(v...)) }
func (a logAdapter) Printf(format string, v ...any) {
	a.l.Debug(fmt.Sprintf(format, v...))
}
func (a logAdapter) Println(v ...any) { a.l.Debug(fmt.Sprint(v...)) }
