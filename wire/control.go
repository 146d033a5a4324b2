package wire

import (
	"encoding/binary"
	"fmt"
	"io"
)

// MsgType is a control message's type.
type MsgType uint16

const (
	MsgHello      MsgType = 1 // client → server, first on the control stream
	MsgServerInfo MsgType = 2 // server → client, answers Hello
	// 3 was OPEN, which bound a yamux data stream to an export (versions 1
	// and 2); a queue connection's QUEUE does that now.
	MsgOpened  MsgType = 4  // server → client, answers Queue
	MsgError   MsgType = 5  // server → client, refuses Control, Hello or Queue
	MsgPing    MsgType = 6  // client → server, on the control stream
	MsgPong    MsgType = 7  // server → client, answers Ping
	MsgControl MsgType = 8  // client → server, first on a control connection
	MsgQueue   MsgType = 9  // client → server, first on a queue connection
	MsgEvent   MsgType = 10 // server → client, on the control stream
	MsgBye     MsgType = 11 // client → server, on the control stream: the attachment closes
)

var msgNames = map[MsgType]string{
	MsgHello:      "HELLO",
	MsgServerInfo: "SERVER_INFO",
	MsgOpened:     "OPENED",
	MsgError:      "ERROR",
	MsgPing:       "PING",
	MsgPong:       "PONG",
	MsgControl:    "CONTROL",
	MsgQueue:      "QUEUE",
	MsgEvent:      "EVENT",
	MsgBye:        "BYE",
}

func (t MsgType) String() string {
	if s, ok := msgNames[t]; ok {
		return s
	}
	return fmt.Sprintf("MSG_%d", uint16(t))
}

// Control message header layout (big endian):
//
//	0 type     u16
//	2 reserved u16 (zero)
//	4 length   u32 body bytes that follow, at most MaxMessage
const (
	msgType     = 0
	msgReserved = 2
	msgLength   = 4
)

// MsgHeader is a control message header.
type MsgHeader struct {
	Type   MsgType
	Length uint32
}

// DecodeMsgHeader parses a control message header.
func DecodeMsgHeader(b []byte) (MsgHeader, error) {
	if len(b) < MsgHeaderSize {
		return MsgHeader{}, short("message header", MsgHeaderSize, len(b))
	}
	h := MsgHeader{
		Type:   MsgType(binary.BigEndian.Uint16(b[msgType:])),
		Length: binary.BigEndian.Uint32(b[msgLength:]),
	}
	switch {
	case msgNames[h.Type] == "":
		return h, malformed("unknown message type %v", h.Type)
	case binary.BigEndian.Uint16(b[msgReserved:]) != 0:
		return h, malformed("%v message with nonzero reserved field", h.Type)
	case h.Length > MaxMessage:
		return h, malformed("%v message of %d bytes exceeds the %d byte maximum", h.Type, h.Length, MaxMessage)
	}
	return h, nil
}

// AppendMessage appends a framed control message: header, then body.
func AppendMessage(b []byte, t MsgType, body []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(t))
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	return append(b, body...)
}

// ReadMessage reads one framed control message from r. The body is freshly
// allocated, after its length was checked against MaxMessage.
func ReadMessage(r io.Reader) (MsgType, []byte, error) {
	return ReadMessageLimit(r, MaxMessage)
}

// ReadMessageLimit is ReadMessage for a message whose body may not exceed
// limit bytes: a longer one is refused before anything is allocated for
// it.
func ReadMessageLimit(r io.Reader, limit uint32) (MsgType, []byte, error) {
	var hb [MsgHeaderSize]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return 0, nil, err
	}
	h, err := DecodeMsgHeader(hb[:])
	if err != nil {
		return 0, nil, err
	}
	if h.Length > limit {
		return h.Type, nil, malformed("%v message of %d bytes exceeds the %d bytes it may have here", h.Type, h.Length, limit)
	}
	body := make([]byte, h.Length)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the header promised a body
		}
		return 0, nil, fmt.Errorf("wire: reading %v body: %w", h.Type, err)
	}
	return h.Type, body, nil
}

// ExportFlags describe what an export supports.
type ExportFlags uint32

const (
	ExportReadOnly    ExportFlags = 1 << 0
	ExportFlush       ExportFlags = 1 << 1 // FLUSH and FUA are meaningful
	ExportFUA         ExportFlags = 1 << 2
	ExportTrim        ExportFlags = 1 << 3
	ExportWriteZeroes ExportFlags = 1 << 4
	ExportRotational  ExportFlags = 1 << 5
	ExportMultiConn   ExportFlags = 1 << 6 // a FLUSH on any queue covers writes completed on all
	ExportShared      ExportFlags = 1 << 7 // several attachments may write at once (no writer lease)

	knownExportFlags = ExportReadOnly | ExportFlush | ExportFUA | ExportTrim |
		ExportWriteZeroes | ExportRotational | ExportMultiConn | ExportShared
)

var exportFlagNames = []struct {
	f ExportFlags
	s string
}{
	{ExportReadOnly, "read-only"},
	{ExportFlush, "flush"},
	{ExportFUA, "fua"},
	{ExportTrim, "trim"},
	{ExportWriteZeroes, "write-zeroes"},
	{ExportRotational, "rotational"},
	{ExportMultiConn, "multi-conn"},
	{ExportShared, "shared"},
}

func (f ExportFlags) String() string {
	s := ""
	for _, n := range exportFlagNames {
		if f&n.f != 0 {
			s += "," + n.s
		}
	}
	if rest := f &^ knownExportFlags; rest != 0 {
		s += fmt.Sprintf(",0x%x", uint32(rest))
	}
	if s == "" {
		return "none"
	}
	return s[1:]
}

// ExportInfo is what autoconfiguration tells a client about one export.
type ExportInfo struct {
	Name          string
	Size          uint64
	LogicalBlock  uint32 // smallest addressable unit; offsets and lengths are multiples
	PhysicalBlock uint32 // preferred I/O granularity
	MaxTransfer   uint32 // largest READ or WRITE payload
	Flags         ExportFlags
	Identity      Identity // stable for one backing disk, different for another
}

func appendExport(b []byte, e *ExportInfo) []byte {
	b = appendString(b, e.Name)
	b = binary.BigEndian.AppendUint64(b, e.Size)
	b = binary.BigEndian.AppendUint32(b, e.LogicalBlock)
	b = binary.BigEndian.AppendUint32(b, e.PhysicalBlock)
	b = binary.BigEndian.AppendUint32(b, e.MaxTransfer)
	b = binary.BigEndian.AppendUint32(b, uint32(e.Flags))
	return append(b, e.Identity[:]...)
}

func (d *decoder) export() ExportInfo {
	e := ExportInfo{
		Name:          d.string(),
		Size:          d.u64(),
		LogicalBlock:  d.u32(),
		PhysicalBlock: d.u32(),
		MaxTransfer:   d.u32(),
		Flags:         ExportFlags(d.u32()),
	}
	copy(e.Identity[:], d.bytes(IdentitySize))
	if d.err != nil {
		return e
	}
	switch {
	case e.Flags&^knownExportFlags != 0:
		d.fail("export %q has unknown flags %v", e.Name, e.Flags)
	case !validBlock(e.LogicalBlock) || !validBlock(e.PhysicalBlock) || e.PhysicalBlock < e.LogicalBlock:
		d.fail("export %q has block sizes %d/%d: want powers of two from 512 to 64 KiB, physical ≥ logical",
			e.Name, e.LogicalBlock, e.PhysicalBlock)
	case e.MaxTransfer < e.LogicalBlock || e.MaxTransfer > MaxPayload || e.MaxTransfer%e.LogicalBlock != 0:
		d.fail("export %q has maximum transfer %d: want a multiple of %d up to %d",
			e.Name, e.MaxTransfer, e.LogicalBlock, MaxPayload)
	case e.Size%uint64(e.LogicalBlock) != 0:
		d.fail("export %q has size %d, not a multiple of its %d byte block", e.Name, e.Size, e.LogicalBlock)
	}
	return e
}

func validBlock(n uint32) bool { return n >= 512 && n <= 64<<10 && n&(n-1) == 0 }

// HelloFlags say what a client accepts on its control stream.
type HelloFlags uint16

const (
	// HelloEvents: the client reads EVENT messages between PONGs.
	HelloEvents HelloFlags = 1 << 0

	knownHelloFlags = HelloEvents
)

// Hello opens the control stream.
//
//	0  version    u16
//	2  flags      u16 HelloFlags
//	4  attachment [16] random, chosen once per client attachment
//	20 epoch      u64 the attachment's session generation, from 1, one
//	              higher at every reconnect
//	28 client     string (u8 length, bytes): the client's host name, for logs
//
// The server fences older epochs of the same attachment (PROTOCOL.md,
// "Transactions, fencing and replay"). An all-zero attachment opts out of
// fencing.
type Hello struct {
	Version    uint16
	Flags      HelloFlags
	Attachment Identity
	Epoch      uint64
	Client     string
}

// AppendHello appends h's body.
func AppendHello(b []byte, h *Hello) []byte {
	b = binary.BigEndian.AppendUint16(b, h.Version)
	b = binary.BigEndian.AppendUint16(b, uint16(h.Flags))
	b = append(b, h.Attachment[:]...)
	b = binary.BigEndian.AppendUint64(b, h.Epoch)
	return appendString(b, h.Client)
}

// DecodeHello parses a Hello body.
func DecodeHello(body []byte) (Hello, error) {
	d := decoder{b: body, what: "HELLO"}
	h := Hello{Version: d.u16(), Flags: HelloFlags(d.u16())}
	if h.Flags&^knownHelloFlags != 0 && d.err == nil {
		d.fail("unknown flags %#x", uint16(h.Flags&^knownHelloFlags))
	}
	copy(h.Attachment[:], d.bytes(IdentitySize))
	h.Epoch = d.u64()
	h.Client = d.string()
	return h, d.finish()
}

// ServerInfo answers Hello with everything autoconfiguration needs.
//
//	0  version  u16
//	2  flags    u16 (zero)
//	4  instance [16] new at every server start
//	20 clock    u64  the server's clock in nanoseconds (arbitrary origin)
//	28 session  [16] names this control session to the client's queue
//	                 connections (Queue), random per session
//	44 server   string
//	   count    u16, then count exports:
//	     name string, size u64, logical u32, physical u32, max transfer u32,
//	     flags u32, identity [16]
type ServerInfo struct {
	Version  uint16
	Instance Identity
	Clock    uint64
	Session  Identity
	Server   string
	Exports  []ExportInfo
}

// MaxExports bounds the export list of one server.
const MaxExports = 1024

// AppendServerInfo appends s's body.
func AppendServerInfo(b []byte, s *ServerInfo) []byte {
	b = binary.BigEndian.AppendUint16(b, s.Version)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = append(b, s.Instance[:]...)
	b = binary.BigEndian.AppendUint64(b, s.Clock)
	b = append(b, s.Session[:]...)
	b = appendString(b, s.Server)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s.Exports)))
	for i := range s.Exports {
		b = appendExport(b, &s.Exports[i])
	}
	return b
}

// DecodeServerInfo parses a ServerInfo body.
func DecodeServerInfo(body []byte) (ServerInfo, error) {
	d := decoder{b: body, what: "SERVER_INFO"}
	s := ServerInfo{Version: d.u16()}
	if d.u16() != 0 && d.err == nil {
		d.fail("nonzero flags")
	}
	copy(s.Instance[:], d.bytes(IdentitySize))
	s.Clock = d.u64()
	copy(s.Session[:], d.bytes(IdentitySize))
	s.Server = d.string()
	n := int(d.u16())
	if n > MaxExports && d.err == nil {
		d.fail("%d exports exceeds the maximum of %d", n, MaxExports)
	}
	for i := 0; i < n && d.err == nil; i++ {
		s.Exports = append(s.Exports, d.export())
	}
	return s, d.finish()
}

// Ping probes a session on its control stream: the client sends one
// every keepalive interval, and declares the session dead when an answer
// is overdue. Its answer also tells the client the server's clock.
//
//	0 seq u64, echoed in the Pong
type Ping struct {
	Seq uint64
}

// AppendPing appends p's body.
func AppendPing(b []byte, p *Ping) []byte { return binary.BigEndian.AppendUint64(b, p.Seq) }

// DecodePing parses a Ping body.
func DecodePing(body []byte) (Ping, error) {
	d := decoder{b: body, what: "PING"}
	p := Ping{Seq: d.u64()}
	return p, d.finish()
}

// Pong answers a Ping.
//
//	0 seq   u64 the Ping's
//	8 clock u64 the server's clock when it answered
type Pong struct {
	Seq   uint64
	Clock uint64
}

// AppendPong appends p's body.
func AppendPong(b []byte, p *Pong) []byte {
	b = binary.BigEndian.AppendUint64(b, p.Seq)
	return binary.BigEndian.AppendUint64(b, p.Clock)
}

// DecodePong parses a Pong body.
func DecodePong(body []byte) (Pong, error) {
	d := decoder{b: body, what: "PONG"}
	p := Pong{Seq: d.u64(), Clock: d.u64()}
	return p, d.finish()
}

// EventKind says what an Event reports.
type EventKind uint16

const (
	// EventResized: an export grew. Size is its new size.
	EventResized EventKind = 1
	// EventShutdown: the server is stopping; its sessions end next.
	// Message says why (for example, a restart by its service manager).
	EventShutdown EventKind = 2
)

// Event tells a client, on its control stream, of something that happened
// on the server. Only clients whose HELLO set HelloEvents get them. A
// client ignores a kind it does not know, so new kinds need no new flag.
//
//	0 kind     u16
//	2 reserved u16 (zero)
//	4 size     u64 the export's new size (EventResized), else zero
//	12 export  string (EventResized), else empty
//	   message string
type Event struct {
	Kind    EventKind
	Size    uint64
	Export  string
	Message string
}

// AppendEvent appends e's body.
func AppendEvent(b []byte, e *Event) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(e.Kind))
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint64(b, e.Size)
	b = appendString(b, e.Export)
	return appendString(b, e.Message)
}

// DecodeEvent parses an Event body. Kinds it does not know decode without
// error; the caller ignores them.
func DecodeEvent(body []byte) (Event, error) {
	d := decoder{b: body, what: "EVENT"}
	e := Event{Kind: EventKind(d.u16())}
	if d.u16() != 0 && d.err == nil {
		d.fail("nonzero reserved field")
	}
	e.Size = d.u64()
	e.Export = d.string()
	e.Message = d.string()
	return e, d.finish()
}

// Control is the first message of a control connection; the yamux
// session starts right after it.
//
//	0 version u16
//	2 flags   u16 (zero)
type Control struct {
	Version uint16
}

// AppendControl appends c's body.
func AppendControl(b []byte, c *Control) []byte {
	b = binary.BigEndian.AppendUint16(b, c.Version)
	return binary.BigEndian.AppendUint16(b, 0)
}

// DecodeControl parses a Control body. Like DecodeHello it returns the
// version even when the rest does not parse.
func DecodeControl(body []byte) (Control, error) {
	d := decoder{b: body, what: "CONTROL"}
	c := Control{Version: d.u16()}
	if d.u16() != 0 && d.err == nil {
		d.fail("nonzero flags")
	}
	return c, d.finish()
}

// Queue is the first message of a queue connection: it binds the
// connection to a live control session of the same client key (its
// session token, attachment and epoch, as HELLO and SERVER_INFO gave
// them) and to an export. Requests and replies follow it.
//
//	0  version    u16
//	2  flags      u16  QueueFlags
//	4  attachment [16] the control session's HELLO attachment
//	20 epoch      u64  the control session's HELLO epoch
//	28 session    [16] the control session's SERVER_INFO session
//	44 export     string
type Queue struct {
	Version    uint16
	Flags      QueueFlags
	Attachment Identity
	Epoch      uint64
	Session    Identity
	Export     string
}

// QueueFlags say how a queue connection uses its export.
type QueueFlags uint16

const (
	// QueueReadOnly: the queue only reads; it takes no writer lease, and
	// the server refuses its writes.
	QueueReadOnly QueueFlags = 1 << 0
	// QueueTakeOver: take the export's writer lease even if another
	// attachment holds it, fencing that one first.
	QueueTakeOver QueueFlags = 1 << 1

	knownQueueFlags = QueueReadOnly | QueueTakeOver
)

// AppendQueue appends q's body.
func AppendQueue(b []byte, q *Queue) []byte {
	b = binary.BigEndian.AppendUint16(b, q.Version)
	b = binary.BigEndian.AppendUint16(b, uint16(q.Flags))
	b = append(b, q.Attachment[:]...)
	b = binary.BigEndian.AppendUint64(b, q.Epoch)
	b = append(b, q.Session[:]...)
	return appendString(b, q.Export)
}

// DecodeQueue parses a Queue body, returning the version even when the
// rest does not parse.
func DecodeQueue(body []byte) (Queue, error) {
	d := decoder{b: body, what: "QUEUE"}
	q := Queue{Version: d.u16(), Flags: QueueFlags(d.u16())}
	if q.Flags&^knownQueueFlags != 0 && d.err == nil {
		d.fail("unknown flags %#x", uint16(q.Flags&^knownQueueFlags))
	}
	copy(q.Attachment[:], d.bytes(IdentitySize))
	q.Epoch = d.u64()
	copy(q.Session[:], d.bytes(IdentitySize))
	q.Export = d.string()
	return q, d.finish()
}

// Opened accepts a Queue; its body is the export's ExportInfo, which the
// client checks against what autoconfiguration told it.
type Opened struct {
	Export ExportInfo
}

// AppendOpened appends o's body.
func AppendOpened(b []byte, o *Opened) []byte { return appendExport(b, &o.Export) }

// DecodeOpened parses an Opened body.
func DecodeOpened(body []byte) (Opened, error) {
	d := decoder{b: body, what: "OPENED"}
	o := Opened{Export: d.export()}
	return o, d.finish()
}

// ErrorMsg refuses a Control, a Hello or a Queue.
//
//	0 status  u16
//	2 message string (u8 length), for the user
type ErrorMsg struct {
	Status  Status
	Message string
}

func (e *ErrorMsg) Error() string {
	return fmt.Sprintf("server refused: %s (%v)", e.Message, e.Status)
}

// AppendError appends e's body. Messages are cut to MaxName bytes.
func AppendError(b []byte, e *ErrorMsg) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(e.Status))
	return appendString(b, e.Message)
}

// DecodeError parses an Error body.
func DecodeError(body []byte) (ErrorMsg, error) {
	d := decoder{b: body, what: "ERROR"}
	e := ErrorMsg{Status: Status(d.u16())}
	e.Message = d.string()
	return e, d.finish()
}

// appendString appends a u8 length and the bytes, cutting s to MaxName.
func appendString(b []byte, s string) []byte {
	if len(s) > MaxName {
		s = s[:MaxName]
	}
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// decoder reads big-endian fields from a message body with explicit length
// checks. The first failure sticks; later reads return zero values.
type decoder struct {
	b    []byte
	what string
	err  error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = malformed("%s: %s", d.what, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = fmt.Errorf("%w: %s truncated: need %d more bytes, have %d", ErrShort, d.what, n, len(d.b))
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) u16() uint16 {
	if p := d.bytes(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if p := d.bytes(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.bytes(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) string() string {
	n := d.bytes(1)
	if n == nil {
		return ""
	}
	return string(d.bytes(int(n[0])))
}

// finish reports the first error, or trailing bytes.
func (d *decoder) finish() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	return d.err
}
