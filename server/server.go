package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"
	"unicode/utf8"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/inflight"
	"github.com/dstproject/dst/internal/nbdwire"
	"github.com/dstproject/dst/wire"
)

// DefaultWorkers is the size of the I/O worker pool when Config.Workers is
// zero.
const DefaultWorkers = 64

// DefaultMaxSessionsPerKey bounds the control sessions of one client key
// (Config.MaxSessionsPerKey). An attachment holds one at a time; a host
// with a few dozen devices, each reconnecting, stays well under it.
const DefaultMaxSessionsPerKey = 64

// ErrServerClosed is returned by Serve and ServeConn after Close.
var ErrServerClosed = errors.New("server: closed")

// Server serves exports to authenticated clients. Create it with New; it
// is safe for concurrent use, and Serve may run on several listeners.
type Server struct {
	cfg Config
	log *slog.Logger
	// table is the export table; SetExports replaces it (reload.go).
	table atomic.Pointer[exportTable]
	info  wire.ServerInfo // without exports and instance: Info adds them
	// instance is the instance id: new at every start, and at every reset
	// of an upstream's storage.
	instance atomic.Pointer[wire.Identity]
	// exportsMu serializes SetExports; retiring counts exports replaced or
	// removed whose queues still drain.
	exportsMu sync.Mutex
	retiring  sync.WaitGroup

	replay     *crypto.ReplayFilter
	keys       atomic.Pointer[keyring]
	authorized atomic.Pointer[crypto.AuthorizedKeys]
	// sessions holds every live control session, so that SetAuthorized
	// can end those of keys it no longer lists; tokens finds a session by
	// the token its queue connections present. Both under mu.
	sessions map[*session]struct{}
	tokens   map[wire.Identity]*session
	perKey   map[crypto.PublicKey]*keyState // live sessions of each client key
	// ended sums what sessions that have ended served, so that Totals
	// never goes back. Under mu.
	ended Totals
	// keyCapLog reports sessions refused for their key's bound.
	keyCapLog *rateLog
	// resizeMu serializes CheckSizes.
	resizeMu sync.Mutex
	// admission bounds the connections in their handshake (admission.go).
	admission *admission

	fenceMu sync.Mutex
	attach  map[attachKey]*attachment // see fence.go
	leases  map[string]*lease         // writer leases by export name, see lease.go

	jobs    chan *op      // requests for the worker pool
	stopped chan struct{} // closed after every session ended: workers exit
	workers sync.WaitGroup

	ctx    context.Context // cancelled by Close: ends Serve and sessions
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	active sync.WaitGroup // Serve loops, connections and sessions
}

// export is one entry of the export table.
type export struct {
	cfg      ExportConfig
	info     wire.ExportInfo // as opened; the size is size's
	b        Backend
	up       *Upstream // b, when the storage is another NBD server
	readOnly bool
	owned    bool // opened by New rather than passed in ExportConfig.Backend
	// size is what clients are told: it only grows (resize.go).
	size atomic.Uint64
	// shrunk is the smaller size last seen and logged, under resizeMu.
	shrunk int64
	// removed is set when a reload took the export out of the table; its
	// queues then drain (reload.go). users counts the queues bound to it;
	// drained is made at the removal and closed once users is zero.
	removed atomic.Bool
	usersMu sync.Mutex
	users   int
	drained chan struct{}
}

// describe returns the export's current ExportInfo.
func (e *export) describe() wire.ExportInfo {
	i := e.info
	i.Size = e.size.Load()
	if e.up != nil {
		i.Identity = e.up.Identity() // another if the upstream was replaced
	}
	return i
}

// New validates cfg, opens every export and starts the worker pool. The
// server instance id is chosen here, so it changes at every start.
func New(cfg *Config) (*Server, error) {
	s := &Server{cfg: *cfg}
	c := &s.cfg
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	if c.MaxSessionsPerKey <= 0 {
		c.MaxSessionsPerKey = DefaultMaxSessionsPerKey
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	s.log = c.Logger
	if err := checkExports(c.Exports); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	t := &exportTable{byName: make(map[string]*export)}
	for _, ec := range c.Exports {
		e, err := s.openExport(ec)
		if err != nil {
			t.closeOwned()
			return nil, err
		}
		t.add(e)
	}
	s.table.Store(t)
	if err := s.makeInfo(); err != nil {
		t.closeOwned()
		return nil, err
	}
	s.replay = crypto.NewReplayFilter()
	s.keys.Store(&keyring{c.PrivateKey, c.MoreKeys})
	s.authorized.Store(c.Authorized)
	s.sessions = make(map[*session]struct{})
	s.tokens = make(map[wire.Identity]*session)
	s.perKey = make(map[crypto.PublicKey]*keyState)
	s.keyCapLog = newRateLog(s.log, logEvery, "refusing session: too many sessions for its key")
	s.attach = make(map[attachKey]*attachment)
	s.leases = make(map[string]*lease)
	if c.LeaseGrace <= 0 {
		c.LeaseGrace = DefaultLeaseGrace
	}
	s.admission = newAdmission(s.log, maxHandshakes, maxHandshakesPerSource)
	s.jobs = make(chan *op)
	s.stopped = make(chan struct{})
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for range c.Workers {
		s.workers.Add(1)
		go s.worker()
	}
	if c.SizeCheck == 0 {
		c.SizeCheck = DefaultSizeCheck
	}
	if c.SizeCheck > 0 {
		s.active.Add(1)
		go s.checkSizes(c.SizeCheck)
	}
	return s, nil
}

func (s *Server) makeInfo() error {
	s.info.Version = wire.Version
	if err := s.newInstance(); err != nil {
		return err
	}
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	s.info.Server = host
	return s.checkInfo(s.table.Load())
}

// newInstance chooses a new instance id: at the start, and when an
// upstream's storage was reset (upstream.go).
func (s *Server) newInstance() error {
	var id wire.Identity
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("server: choosing instance id: %w", err)
	}
	s.instance.Store(&id)
	return nil
}

// checkInfo refuses an export table whose SERVER_INFO would not fit in a
// message.
func (s *Server) checkInfo(t *exportTable) error {
	info := s.info
	for _, n := range t.names {
		info.Exports = append(info.Exports, t.byName[n].describe())
	}
	if n := len(wire.AppendServerInfo(nil, &info)); n > wire.MaxMessage {
		return fmt.Errorf("server: export list of %d bytes exceeds the %d byte message limit", n, wire.MaxMessage)
	}
	return nil
}

// checkExports refuses export lists the protocol cannot carry or a user
// could not name on a command line.
func checkExports(exports []ExportConfig) error {
	if len(exports) == 0 {
		return errors.New("no exports configured")
	}
	if len(exports) > wire.MaxExports {
		return fmt.Errorf("%d exports exceeds the maximum of %d", len(exports), wire.MaxExports)
	}
	seen := make(map[string]bool)
	for _, e := range exports {
		if err := checkExportName(e.Name); err != nil {
			return err
		}
		if seen[e.Name] {
			return fmt.Errorf("export %q is configured twice", e.Name)
		}
		seen[e.Name] = true
		if e.Path == "" && e.Backend == nil && e.Upstream == "" {
			return fmt.Errorf("export %q has no path", e.Name)
		}
	}
	return nil
}

func checkExportName(name string) error {
	switch {
	case name == "":
		return errors.New("empty export name")
	case len(name) > wire.MaxName:
		return fmt.Errorf("export name %.20q... is %d bytes, more than %d", name, len(name), wire.MaxName)
	case !utf8.ValidString(name):
		return fmt.Errorf("export name %q is not valid UTF-8", name)
	case strings.ContainsAny(name, "/=,"):
		return fmt.Errorf("export name %q contains one of / = ,", name)
	case strings.IndexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return fmt.Errorf("export name %q contains white space or control characters", name)
	}
	return nil
}

// openExport opens an export's backend and describes it.
func (s *Server) openExport(ec ExportConfig) (*export, error) {
	cfg := ec // as configured, for reloads to compare (reload.go)
	b, owned := ec.Backend, ec.Backend == nil
	var up *Upstream
	if owned && ec.Upstream != "" {
		var err error
		if up, err = OpenUpstream(ec.Upstream, ec.Name, ec.Connections, s.cfg.UpstreamID, s.log); err != nil {
			return nil, fmt.Errorf("server: export %q: %w", ec.Name, err)
		}
		// A reset (upstream.go) takes a new instance id before requests
		// of the new generation can run.
		up.onReset = func(error) { s.newInstance() }
		if up.has(nbdwire.TransReadOnly) {
			ec.ReadOnly = true
		}
		b = up
	} else if owned {
		f, err := OpenFile(ec.Path, ec.ReadOnly, s.log)
		if err != nil {
			return nil, fmt.Errorf("server: export %q: %w", ec.Name, err)
		}
		b = f
	}
	if ec.Volatile {
		s.log.Warn("export has a volatile write cache (a testing option): writes not flushed die with this process",
			"name", ec.Name)
		b = NewVolatile(b)
	}
	info, err := describe(ec, b)
	if err != nil {
		if owned {
			b.Close()
		}
		return nil, fmt.Errorf("server: export %q: %w", ec.Name, err)
	}
	where := ec.Path
	if up != nil {
		where = ec.Upstream
	}
	s.log.Info("export", "name", ec.Name, "path", where, "size", info.Size,
		"block", info.LogicalBlock, "flags", info.Flags, "identity", info.Identity)
	e := &export{cfg: cfg, info: info, b: b, up: up, readOnly: ec.ReadOnly, owned: owned}
	e.size.Store(info.Size)
	return e, nil
}

func describe(ec ExportConfig, b Backend) (wire.ExportInfo, error) {
	size, err := b.Size()
	if err != nil {
		return wire.ExportInfo{}, err
	}
	logical, physical, rotational, canTrim := b.Info()
	e := wire.ExportInfo{
		Name:          ec.Name,
		Size:          uint64(size),
		LogicalBlock:  logical,
		PhysicalBlock: physical,
		MaxTransfer:   wire.MaxPayload,
		Flags:         wire.ExportFlush | wire.ExportFUA | wire.ExportMultiConn,
	}
	switch {
	case !validBlockSize(logical) || !validBlockSize(physical) || physical < logical:
		return e, fmt.Errorf("block sizes %d/%d: want powers of two from 512 to 64 KiB, physical ≥ logical", logical, physical)
	case size < int64(logical) || size%int64(logical) != 0:
		return e, fmt.Errorf("size %d is not a positive multiple of the %d byte block", size, logical)
	}
	if ec.Shared {
		e.Flags |= wire.ExportShared
	}
	if ec.ReadOnly {
		e.Flags |= wire.ExportReadOnly
	} else {
		e.Flags |= wire.ExportWriteZeroes
		if canTrim {
			e.Flags |= wire.ExportTrim
		}
	}
	if rotational {
		e.Flags |= wire.ExportRotational
	}
	if up, ok := b.(*Upstream); ok {
		up.exportInfo(&e)
	}
	if id, ok := b.(Identifier); ok {
		e.Identity = id.Identity()
	}
	if e.Identity.IsZero() {
		if _, err := rand.Read(e.Identity[:]); err != nil {
			return e, err
		}
	}
	return e, nil
}

// Info returns what the server tells clients in SERVER_INFO, with every
// export's current size.
func (s *Server) Info() wire.ServerInfo {
	info := s.info
	info.Instance = *s.instance.Load()
	t := s.table.Load()
	info.Exports = make([]wire.ExportInfo, len(t.names))
	for i, name := range t.names {
		info.Exports[i] = t.byName[name].describe()
	}
	return info
}

// enter registers a Serve loop, connection or session, so Close can wait
// for it. It fails after Close.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.active.Add(1)
	return true
}

// Close ends every session and Serve loop, waits for in-flight requests,
// stops the workers and closes the backends.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.active.Wait()
	s.retiring.Wait() // exports a reload removed: closed once their queues drained
	close(s.stopped)
	s.workers.Wait()
	return s.table.Load().closeAll()
}

// keyring is the server's own keys: the current one and those of a
// rotation in progress.
type keyring struct {
	current crypto.PrivateKey
	more    []crypto.PrivateKey
}

// SetKeys replaces the server's private keys, as on a reload during a key
// rotation: new handshakes answer to current and to each of more; live
// sessions are not touched (their channels keep their session keys).
func (s *Server) SetKeys(current crypto.PrivateKey, more []crypto.PrivateKey) error {
	if current.IsZero() || slices.ContainsFunc(more, crypto.PrivateKey.IsZero) {
		return errors.New("server: SetKeys: a key is zero")
	}
	s.keys.Store(&keyring{current, slices.Clone(more)})
	return nil
}

// SetAuthorized replaces the authorized client keys, as on a reload of the
// authorized keys file: new connections are checked against a, and the
// sessions of clients whose key a no longer lists, or no longer allows an
// export they have open, are fenced and ended at once, with their queue
// connections. A key that became read-only gets EPERM from its next write.
func (s *Server) SetAuthorized(a *crypto.AuthorizedKeys) {
	s.authorized.Store(a)
	s.mu.Lock()
	var revoked []*session
	for se := range s.sessions {
		acc, ok := a.Access(se.key)
		if !ok {
			revoked = append(revoked, se)
			s.log.Warn("ending session: client key no longer authorized", "key", se.key)
			continue
		}
		se.access.Store(&acc) // read-only from its next request, if it became so
		if lost := se.lostExport(&acc); lost != "" {
			revoked = append(revoked, se)
			s.log.Warn("ending session: client key may no longer open an export it has open",
				"key", se.key, "export", lost)
		}
	}
	s.mu.Unlock()
	// Fenced, not just closed: a revoked key's requests already read
	// (queued for a worker, or buffered on a queue connection) must never
	// be applied after the reload. Fencing waits for the requests those
	// sessions have on the backend, so SetAuthorized returns only when
	// nothing of a revoked key can be applied any more.
	var wg sync.WaitGroup
	for _, se := range revoked {
		wg.Go(se.fence)
	}
	wg.Wait()
}

// keyState is what the live sessions of one client key share.
type keyState struct {
	sessions int
	bytes    *inflight.Limiter // payload bytes in flight, all the key's sessions
}

// liveSessions returns the live sessions, for work that must not hold mu
// while it visits them.
func (s *Server) liveSessions() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	sessions := make([]*session, 0, len(s.sessions))
	for se := range s.sessions {
		sessions = append(sessions, se)
	}
	return sessions
}

// track registers a live control session until the returned function is
// called, and gives it its key's byte budget. n counts the live sessions
// of se's key, se included.
func (s *Server) track(se *session) (untrack func(), n int) {
	s.mu.Lock()
	s.sessions[se] = struct{}{}
	k := s.perKey[se.key]
	if k == nil {
		k = &keyState{bytes: inflight.New(0, keyBytes)}
		s.perKey[se.key] = k
	}
	k.sessions++
	n = k.sessions
	se.keyBytes = k.bytes
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.ended.Sessions++
		se.mu.Lock()
		s.ended.add(se.servedLocked())
		se.mu.Unlock()
		delete(s.sessions, se)
		if k.sessions--; k.sessions == 0 {
			delete(s.perKey, se.key)
		}
		s.mu.Unlock()
	}, n
}

// register makes se findable by its session token.
func (s *Server) register(se *session, token wire.Identity) {
	s.mu.Lock()
	s.tokens[token] = se
	s.mu.Unlock()
}

// forget makes se's token find nothing, so no queue binds to it any more.
func (s *Server) forget(se *session) {
	s.mu.Lock()
	if s.tokens[se.token] == se {
		delete(s.tokens, se.token)
	}
	s.mu.Unlock()
}

// lookup returns the live session with the given token, or nil.
func (s *Server) lookup(token wire.Identity) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens[token]
}
