package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dstproject/dst/client"
	"github.com/dstproject/dst/server"
)

// Every dst attach answers status requests on a unix socket of its own,
// <run dir>/attach/NAME.sock (mode 0600), with HTTP: GET /status returns
// an attachmentStatus as JSON. dst status and dst list read them. dst
// serve answers the same way on <run dir>/serve.sock with a
// server.Status, which dst serve status reads.

// attachmentStatus is what GET /status answers.
type attachmentStatus struct {
	Name   string `json:"name"`
	Device string `json:"device"` // /dev/nbdN, or the --nbd-listen address
	PID    int    `json:"pid"`
	client.Status
}

func statusDir() string { return filepath.Join(states().Dir, "attach") }

// serveStatusPath is dst serve's status socket unless --status-socket says.
func serveStatusPath() string { return filepath.Join(states().Dir, "serve.sock") }

// validName is what a status socket may be called.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// serveStatus answers status requests for a on the socket named name until
// stop is called. A name another live dst attach holds is logged and left
// alone: status is for operators, and the attachment works without it.
func serveStatus(log *slog.Logger, name, device string, a *client.Attachment) (stop func()) {
	if !validName.MatchString(name) {
		log.Warn("no status socket: the name is not usable as a file name", "name", name)
		return func() {}
	}
	pid := os.Getpid()
	mux := statusMux(func() any {
		return attachmentStatus{Name: name, Device: device, PID: pid, Status: a.Status()}
	})
	// GET /events streams the attachment's events, one JSON object a line,
	// until the client hangs up.
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		ch, cancel := a.Subscribe(256)
		defer cancel()
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		enc := json.NewEncoder(w)
		for {
			select {
			case e := <-ch:
				if enc.Encode(attachmentEvent{Name: name, Event: e}) != nil || rc.Flush() != nil {
					return
				}
			case <-r.Context().Done():
				return
			}
		}
	})
	return serveMux(log, filepath.Join(statusDir(), name+".sock"), mux)
}

// attachmentEvent is a line of GET /events.
type attachmentEvent struct {
	Name string `json:"name"`
	client.Event
}

// statusMux answers GET /status with get's value as JSON.
func statusMux(get func() any) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(get())
	})
	return mux
}

// serveMux serves mux on a unix socket at path, mode 0600, until stop is
// called. A socket another live process answers on is left alone, with a
// warning.
func serveMux(log *slog.Logger, path string, mux *http.ServeMux) (stop func()) {
	stop = func() {}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		log.Warn("no status socket", "err", err)
		return stop
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		log.Warn("no status socket: another process answers on it", "path", path)
		return stop
	}
	os.Remove(path)
	l, err := listenPrivateUnix(path)
	if err != nil {
		log.Warn("no status socket", "err", err)
		return stop
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: 16 << 10}
	go srv.Serve(l)
	return func() { srv.Close(); l.Close() }
}

// queryStatus asks the dst attach behind socket path for its status.
func queryStatus(ctx context.Context, path string) (*attachmentStatus, error) {
	var st attachmentStatus
	if err := queryJSON(ctx, path, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// queryJSON decodes what GET /status answers on the socket at path into v.
func queryJSON(ctx context.Context, path string, v any) error {
	hc := unixClient(path)
	hc.Timeout = 5 * time.Second
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://dst/status", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// allStatus queries every status socket; sockets nobody answers on (a
// dst attach that was killed) are skipped.
func allStatus(ctx context.Context) ([]*attachmentStatus, error) {
	socks, err := filepath.Glob(filepath.Join(statusDir(), "*.sock"))
	if err != nil {
		return nil, err
	}
	var out []*attachmentStatus
	for _, p := range socks {
		if st, err := queryStatus(ctx, p); err == nil {
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func cmdStatus(ctx context.Context, args []string) error {
	fs := newFlagSet("status", "[flags] [/dev/nbdN | NAME]")
	asJSON := fs.Bool("json", false, "print JSON, one object per attachment in an array")
	pos, err := parse(fs, args, 0, 1)
	if err != nil {
		return err
	}
	var sts []*attachmentStatus
	if len(pos) == 1 {
		st, err := findStatus(ctx, pos[0])
		if err != nil {
			return err
		}
		sts = append(sts, st)
	} else if sts, err = allStatus(ctx); err != nil {
		return err
	}
	if *asJSON {
		if sts == nil {
			sts = []*attachmentStatus{}
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(sts)
	}
	if len(sts) == 0 {
		return errors.New("no dst attach is running")
	}
	for i, st := range sts {
		if i > 0 {
			fmt.Println()
		}
		printStatus(os.Stdout, st)
	}
	return nil
}

// findStatus asks the dst attach named by arg: a --name, a device such as
// /dev/nbd0 (whose attachment may have a name of its own), or a link to
// one such as /dev/dst/NAME.
func findStatus(ctx context.Context, arg string) (*attachmentStatus, error) {
	name := strings.TrimPrefix(arg, "/dev/")
	st, err := queryStatus(ctx, filepath.Join(statusDir(), name+".sock"))
	if err == nil {
		return st, nil
	}
	dev := resolveDevice(arg)
	if all, aerr := allStatus(ctx); aerr == nil {
		for _, s := range all {
			if s.Device != "" && (s.Device == dev || s.Device == "/dev/"+name) {
				return s, nil
			}
		}
	}
	return nil, fmt.Errorf("no dst attach answers for %s (%w); dst list shows what is attached", arg, err)
}

func printStatus(out io.Writer, st *attachmentStatus) {
	w := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	state := st.State + " since " + st.Since.Local().Format(time.DateTime)
	if st.Error != "" {
		state += " (" + st.Error + ")"
	}
	fmt.Fprintf(w, "%s\t%s (pid %d)\n", st.Name, st.Device, st.PID)
	fmt.Fprintf(w, "  server\t%s, export %s, identity %s\n", st.Server, st.Export, st.Identity)
	fmt.Fprintf(w, "  state\t%s\n", state)
	fmt.Fprintf(w, "  epoch\t%d, %d queue connections, %d in flight, rtt %v\n", st.Epoch, st.Queues, st.InFlight,
		st.RTT.Round(time.Microsecond))
	s := st.Stats
	fmt.Fprintf(w, "  transactions\t%d reconnects, %d resent, %d replayed, %d timeouts, %d checksum retries\n",
		s.Reconnects, s.Resent, s.Replayed, s.Timeouts, s.ChecksumRetries)
	if r := st.Replay; r != nil && r.Writes > 0 {
		fmt.Fprintf(w, "  replaying\t%d of %d writes, %d of %d bytes (%d%%)\n", r.Done, r.Writes, r.DoneBytes, r.Bytes,
			100*r.Done/r.Writes)
	}
	if b := st.BusyPoll; b != nil {
		fmt.Fprintf(w, "  busy polling\t%d rounds: %d ended by data for the poller, %d for another socket, %d ran out; %d of %d sockets poll now\n",
			b.Rounds, b.Data, b.Other, b.Expired, b.Polling, b.Sockets)
	}
	fmt.Fprintf(w, "  not yet durable\t%d writes, %d bytes (acknowledged, kept for replay until a flush)\n",
		s.ReplayEntries, s.ReplayBytes)
	for _, op := range []string{"read", "write", "flush", "other"} {
		p := st.Latency[op]
		if p.Count == 0 {
			continue
		}
		fmt.Fprintf(w, "  %s latency\tp50 %v, p99 %v, p99.9 %v (%d requests)\n", op, p.P50, p.P99, p.P999, p.Count)
	}
	w.Flush()
}

func cmdServeStatus(ctx context.Context, args []string) error {
	fs := newFlagSet("serve status", "[flags]")
	asJSON := fs.Bool("json", false, "print JSON")
	sock := fs.String("status-socket", "", "the server's status `PATH` (default <run dir>/serve.sock)")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	if *sock == "" {
		*sock = serveStatusPath()
	}
	var st server.Status
	if err := queryJSON(ctx, *sock, &st); err != nil {
		return fmt.Errorf("no dst serve answers on %s: %w", *sock, err)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintf(w, "instance %s\n\nEXPORT\tSIZE\tMODE\tQUEUES\tIDENTITY\tWRITER\n", st.Instance)
	for _, e := range st.Exports {
		mode := "rw"
		switch {
		case e.ReadOnly:
			mode = "ro"
		case e.Shared:
			mode = "rw,shared"
		}
		writer := cmp.Or(e.Writer, "-")
		if e.Shared {
			writer = "(any)"
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%s\t%s\n", e.Name, e.Size, mode, e.Queues, e.Identity, writer)
	}
	fmt.Fprintf(w, "\nCLIENT\tREMOTE\tHOST\tEPOCH\tSINCE\tQUEUES\tIN FLIGHT\tREAD\tWRITTEN\n")
	for _, se := range st.Sessions {
		who := se.Key
		if se.Comment != "" {
			who = se.Comment
		}
		epoch := fmt.Sprint(se.Epoch)
		if se.Fenced {
			epoch += " (fenced)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", who, se.Remote, se.Client, epoch,
			se.Since.Local().Format(time.DateTime), se.Queues, se.InFlight, se.BytesRead, se.BytesWritten)
	}
	return w.Flush()
}

func cmdEvents(ctx context.Context, args []string) error {
	fs := newFlagSet("events", "[flags] [/dev/nbdN | NAME]...")
	asJSON := fs.Bool("json", false, "print JSON, one object a line")
	pos, err := parse(fs, args, 0, 64)
	if err != nil {
		return err
	}
	var socks []string
	if len(pos) == 0 {
		if socks, err = filepath.Glob(filepath.Join(statusDir(), "*.sock")); err != nil {
			return err
		}
	}
	for _, p := range pos {
		socks = append(socks, filepath.Join(statusDir(), strings.TrimPrefix(p, "/dev/")+".sock"))
	}
	lines := make(chan attachmentEvent)
	errs := make(chan error, len(socks))
	streams := 0
	for _, p := range socks {
		resp, err := openEvents(ctx, p)
		if err != nil {
			if len(pos) > 0 {
				return fmt.Errorf("no dst attach answers on %s: %w", p, err)
			}
			continue // a dst attach that was killed
		}
		streams++
		go func() {
			defer resp.Body.Close()
			dec := json.NewDecoder(resp.Body)
			for {
				var e attachmentEvent
				if err := dec.Decode(&e); err != nil {
					errs <- err
					return
				}
				select {
				case lines <- e:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	if streams == 0 {
		return errors.New("no dst attach is running")
	}
	out := json.NewEncoder(os.Stdout)
	for {
		select {
		case e := <-lines:
			if *asJSON {
				out.Encode(e)
				continue
			}
			fmt.Println(formatEvent(e))
		case <-errs:
			// That dst attach exited; the others go on.
			if streams--; streams == 0 {
				return nil
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// unixClient is an HTTP client whose every request goes to the unix
// socket at path.
func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// openEvents starts GET /events on the socket at path.
func openEvents(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://dst/events", nil)
	if err != nil {
		return nil, err
	}
	resp, err := unixClient(path).Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s", path, resp.Status)
	}
	return resp, nil
}

// formatEvent is an event's text line: time, attachment, type, details.
func formatEvent(e attachmentEvent) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s", e.Time.Local().Format("2006-01-02T15:04:05.000"), e.Name, e.Type)
	if e.Epoch != 0 {
		fmt.Fprintf(&b, " epoch=%d", e.Epoch)
	}
	if e.Count != 0 {
		fmt.Fprintf(&b, " count=%d", e.Count)
	}
	if e.Detail != "" {
		fmt.Fprintf(&b, " %q", e.Detail)
	}
	return b.String()
}
