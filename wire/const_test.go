package wire

import "testing"

// Every value below is on the wire or sizes something on the wire. Pinning
// them to numbers makes a renumbering fail here rather than between a new
// client and an old server.

func TestConstCmd(t *testing.T) {
	pins := []struct {
		c    Cmd
		want uint8
		name string
	}{
		{CmdRead, 1, "READ"},
		{CmdWrite, 2, "WRITE"},
		{CmdFlush, 3, "FLUSH"},
		{CmdTrim, 4, "TRIM"},
		{CmdWriteZeroes, 5, "WRITE_ZEROES"},
		{CmdDisconnect, 6, "DISCONNECT"},
	}
	for _, p := range pins {
		if uint8(p.c) != p.want {
			t.Errorf("%s = %d, want %d", p.name, uint8(p.c), p.want)
		}
		if p.c.String() != p.name {
			t.Errorf("Cmd(%d).String() = %q, want %q", p.want, p.c.String(), p.name)
		}
		if !p.c.Valid() {
			t.Errorf("%s is not Valid", p.name)
		}
	}
	if len(cmdNames) != len(pins) {
		t.Errorf("%d commands have names, %d are pinned here", len(cmdNames), len(pins))
	}
	for _, c := range []Cmd{0, 7, 0x80, 0xff} {
		if c.Valid() {
			t.Errorf("Cmd(%d) is Valid", uint8(c))
		}
	}
	if s := Cmd(0).String(); s != "CMD_0" {
		t.Errorf("Cmd(0).String() = %q, want CMD_0", s)
	}
	if s := Cmd(200).String(); s != "CMD_200" {
		t.Errorf("Cmd(200).String() = %q, want CMD_200", s)
	}
}

func TestConstReqFlags(t *testing.T) {
	if FlagFUA != 1 {
		t.Errorf("FlagFUA = %d, want 1", FlagFUA)
	}
	if FlagNoHole != 2 {
		t.Errorf("FlagNoHole = %d, want 2", FlagNoHole)
	}
	if knownReqFlags != 3 {
		t.Errorf("knownReqFlags = %#x, want 0x03", uint8(knownReqFlags))
	}
	for _, tt := range []struct {
		f    ReqFlags
		want string
	}{
		{0, "0"},
		{FlagFUA, "FUA"},
		{FlagNoHole, "NO_HOLE"},
		{FlagFUA | FlagNoHole, "FUA|NO_HOLE"},
		{0x80, "0x80"},
		{FlagFUA | 0x0c, "FUA|0x0c"},
		{0xff, "FUA|NO_HOLE|0xfc"},
	} {
		if got := tt.f.String(); got != tt.want {
			t.Errorf("ReqFlags(%#x).String() = %q, want %q", uint8(tt.f), got, tt.want)
		}
	}
}

func TestConstStatus(t *testing.T) {
	pins := []struct {
		s    Status
		want uint16
		name string
	}{
		// Linux errno numbers, as NBD uses them.
		{StatusOK, 0, "OK"},
		{StatusEPERM, 1, "EPERM"},
		{StatusEIO, 5, "EIO"},
		{StatusENOMEM, 12, "ENOMEM"},
		{StatusEBUSY, 16, "EBUSY"}, // the export's writer lease is held
		{StatusEINVAL, 22, "EINVAL"},
		{StatusENOSPC, 28, "ENOSPC"},
		{StatusEOVERFLOW, 75, "EOVERFLOW"},
		{StatusENOTSUP, 95, "ENOTSUP"},
		{StatusESHUTDOWN, 108, "ESHUTDOWN"},
		{StatusETIMEDOUT, 110, "ETIMEDOUT"}, // version 2: request expired before it started
		{StatusESTALE, 116, "ESTALE"},       // version 2: session fenced by a newer epoch
		// dst's own, above 0xff.
		{StatusBadChecksum, 0x100, "BAD_CHECKSUM"},
	}
	for _, p := range pins {
		if uint16(p.s) != p.want {
			t.Errorf("Status%s = %d, want %d", p.name, uint16(p.s), p.want)
		}
		if p.s.String() != p.name {
			t.Errorf("Status(%d).String() = %q, want %q", p.want, p.s.String(), p.name)
		}
	}
	if len(statusNames) != len(pins) {
		t.Errorf("%d statuses have names, %d are pinned here", len(statusNames), len(pins))
	}
	for _, tt := range []struct {
		s    Status
		want string
	}{{2, "STATUS_2"}, {109, "STATUS_109"}, {111, "STATUS_111"}, {0x101, "STATUS_257"}, {0xffff, "STATUS_65535"}} {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("Status(%d).String() = %q, want %q", uint16(tt.s), got, tt.want)
		}
	}
}

func TestConstMsgType(t *testing.T) {
	pins := []struct {
		m    MsgType
		want uint16
		name string
	}{
		{MsgHello, 1, "HELLO"},
		{MsgServerInfo, 2, "SERVER_INFO"},
		{MsgOpened, 4, "OPENED"},
		{MsgError, 5, "ERROR"},
		{MsgPing, 6, "PING"},       // version 2
		{MsgPong, 7, "PONG"},       // version 2
		{MsgControl, 8, "CONTROL"}, // version 3
		{MsgQueue, 9, "QUEUE"},
		{MsgEvent, 10, "EVENT"},
		{MsgBye, 11, "BYE"},
	}
	for _, p := range pins {
		if uint16(p.m) != p.want {
			t.Errorf("Msg%s = %d, want %d", p.name, uint16(p.m), p.want)
		}
		if p.m.String() != p.name {
			t.Errorf("MsgType(%d).String() = %q, want %q", p.want, p.m.String(), p.name)
		}
	}
	if len(msgNames) != len(pins) {
		t.Errorf("%d message types have names, %d are pinned here", len(msgNames), len(pins))
	}
	for _, tt := range []struct {
		m    MsgType
		want string
	}{{0, "MSG_0"}, {12, "MSG_12"}, {0x0100, "MSG_256"}, {0xffff, "MSG_65535"}} {
		if got := tt.m.String(); got != tt.want {
			t.Errorf("MsgType(%d).String() = %q, want %q", uint16(tt.m), got, tt.want)
		}
	}
}

func TestConstExportFlags(t *testing.T) {
	pins := []struct {
		f    ExportFlags
		want uint32
		name string
	}{
		{ExportReadOnly, 1 << 0, "read-only"},
		{ExportFlush, 1 << 1, "flush"},
		{ExportFUA, 1 << 2, "fua"},
		{ExportTrim, 1 << 3, "trim"},
		{ExportWriteZeroes, 1 << 4, "write-zeroes"},
		{ExportRotational, 1 << 5, "rotational"},
		{ExportMultiConn, 1 << 6, "multi-conn"},
		{ExportShared, 1 << 7, "shared"},
	}
	var all ExportFlags
	for _, p := range pins {
		if uint32(p.f) != p.want {
			t.Errorf("export flag %s = %#x, want %#x", p.name, uint32(p.f), p.want)
		}
		if p.f.String() != p.name {
			t.Errorf("ExportFlags(%#x).String() = %q, want %q", p.want, p.f.String(), p.name)
		}
		all |= p.f
	}
	if all != knownExportFlags {
		t.Errorf("knownExportFlags = %#x, pinned flags make %#x", uint32(knownExportFlags), uint32(all))
	}
	for _, tt := range []struct {
		f    ExportFlags
		want string
	}{
		{0, "none"},
		{ExportReadOnly | ExportTrim, "read-only,trim"},
		{all, "read-only,flush,fua,trim,write-zeroes,rotational,multi-conn,shared"},
		{0x100, "0x100"},
		{ExportFlush | 0x80000000, "flush,0x80000000"},
		{0xffffffff, "read-only,flush,fua,trim,write-zeroes,rotational,multi-conn,shared,0xffffff00"},
	} {
		if got := tt.f.String(); got != tt.want {
			t.Errorf("ExportFlags(%#x).String() = %q, want %q", uint32(tt.f), got, tt.want)
		}
	}
}

func TestConstSizes(t *testing.T) {
	pins := []struct {
		name      string
		got, want int
	}{
		{"Version", Version, 3},
		{"RequestSize", RequestSize, 40},
		{"ReplySize", ReplySize, 24},
		{"MsgHeaderSize", MsgHeaderSize, 8},
		{"IdentitySize", IdentitySize, 16},
		{"MaxMessage", MaxMessage, 1 << 20},
		{"MaxName", MaxName, 255},
		{"MaxPayload", MaxPayload, 32 << 20},
		{"MaxExports", MaxExports, 1024},
		// Field offsets, from the layout comments.
		{"reqCmd", reqCmd, 0},
		{"reqFlags", reqFlags, 1},
		{"reqReserved", reqReserved, 2},
		{"reqLength", reqLength, 4},
		{"reqID", reqID, 8},
		{"reqOffset", reqOffset, 16},
		{"reqChecksum", reqChecksum, 24},
		{"reqExpires", reqExpires, 32},
		{"repCmd", repCmd, 0},
		{"repReserved", repReserved, 1},
		{"repStatus", repStatus, 2},
		{"repLength", repLength, 4},
		{"repID", repID, 8},
		{"repChecksum", repChecksum, 16},
		{"msgType", msgType, 0},
		{"msgReserved", msgReserved, 2},
		{"msgLength", msgLength, 4},
	}
	for _, p := range pins {
		if p.got != p.want {
			t.Errorf("%s = %d, want %d", p.name, p.got, p.want)
		}
	}
	// The last field of each header ends exactly at its size.
	if reqExpires+8 != RequestSize || repChecksum+8 != ReplySize || msgLength+4 != MsgHeaderSize {
		t.Errorf("header sizes disagree with their layouts")
	}
	// A name's length is one byte on the wire.
	if MaxName > 0xff {
		t.Errorf("MaxName %d does not fit the u8 length prefix", MaxName)
	}
	// An export count is a u16 on the wire.
	if MaxExports > 0xffff {
		t.Errorf("MaxExports %d does not fit the u16 count", MaxExports)
	}
	// A full export list must fit one control message.
	const maxExportSize = 1 + MaxName + 8 + 4*4 + IdentitySize
	const maxServerInfo = 2 + 2 + IdentitySize + 8 + 1 + MaxName + 2 + MaxExports*maxExportSize
	if maxServerInfo > MaxMessage {
		t.Errorf("the largest ServerInfo is %d bytes, over MaxMessage %d", maxServerInfo, MaxMessage)
	}
}

func TestIdentity(t *testing.T) {
	var id Identity
	if !id.IsZero() {
		t.Error("zero Identity is not IsZero")
	}
	if s := id.String(); s != "00000000000000000000000000000000" {
		t.Errorf("zero Identity String() = %q", s)
	}
	id[15] = 1
	if id.IsZero() {
		t.Error("nonzero Identity IsZero")
	}
	id = Identity{0xde, 0xad, 0xbe, 0xef}
	if s := id.String(); s != "deadbeef000000000000000000000000" {
		t.Errorf("Identity String() = %q", s)
	}
}
