package nbdwire

import (
	"testing"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Every value below is fixed by proto.md; changing one breaks every peer.
// Each is pinned to the number written out by hand and, where go-nbd
// defines it, to go-nbd's constant.

type pin struct {
	name string
	got  uint64
	want uint64
}

func checkPins(t *testing.T, pins []pin) {
	t.Helper()
	for _, p := range pins {
		if p.got != p.want {
			t.Errorf("%s = %#x, want %#x", p.name, p.got, p.want)
		}
	}
}

func TestConstMagic(t *testing.T) {
	checkPins(t, []pin{
		{"MagicNBD", MagicNBD, 0x4e42444d41474943}, // "NBDMAGIC"
		{"MagicOpt", MagicOpt, 0x49484156454f5054}, // "IHAVEOPT"
		{"MagicOptReply", MagicOptReply, 0x3e889045565a9},
		{"MagicRequest", uint64(MagicRequest), 0x25609513},
		{"MagicSimpleReply", uint64(MagicSimpleReply), 0x67446698},
		{"MagicStructuredReply", uint64(MagicStructuredReply), 0x668e33ef},

		{"MagicNBD (go-nbd)", MagicNBD, protocol.NEGOTIATION_MAGIC_OLDSTYLE},
		{"MagicOpt (go-nbd)", MagicOpt, protocol.NEGOTIATION_MAGIC_OPTION},
		{"MagicOptReply (go-nbd)", MagicOptReply, protocol.NEGOTIATION_MAGIC_REPLY},
		{"MagicRequest (go-nbd)", uint64(MagicRequest), uint64(protocol.TRANSMISSION_MAGIC_REQUEST)},
		{"MagicSimpleReply (go-nbd)", uint64(MagicSimpleReply), uint64(protocol.TRANSMISSION_MAGIC_REPLY)},
	})
	if s := string(ServerHello{}.Append(nil)[:16]); s != "NBDMAGICIHAVEOPT" {
		t.Errorf("greeting magics spell %q", s)
	}
}

func TestConstSizes(t *testing.T) {
	checkPins(t, []pin{
		{"ServerHelloSize", ServerHelloSize, 18},
		{"ClientFlagsSize", ClientFlagsSize, 4},
		{"OptHeaderSize", OptHeaderSize, 16},
		{"OptReplyHeaderSize", OptReplyHeaderSize, 20},
		{"ExportNameReplySize", ExportNameReplySize, 10},
		{"ExportNameZeroes", ExportNameZeroes, 124},
		{"InfoTypeSize", InfoTypeSize, 2},
		{"InfoExportSize", InfoExportSize, 12},
		{"InfoBlockSizeSize", InfoBlockSizeSize, 14},
		{"RequestSize", RequestSize, 28},
		{"SimpleReplySize", SimpleReplySize, 16},
		{"MaxString", MaxString, 4096},
	})
}

func TestConstFlags(t *testing.T) {
	checkPins(t, []pin{
		{"HandshakeFixedNewstyle", uint64(HandshakeFixedNewstyle), 1 << 0},
		{"HandshakeNoZeroes", uint64(HandshakeNoZeroes), 1 << 1},
		{"ClientFixedNewstyle", uint64(ClientFixedNewstyle), 1 << 0},
		{"ClientNoZeroes", uint64(ClientNoZeroes), 1 << 1},
		{"KnownClientFlags", uint64(KnownClientFlags), 3},

		{"TransHasFlags", uint64(TransHasFlags), 1 << 0},
		{"TransReadOnly", uint64(TransReadOnly), 1 << 1},
		{"TransSendFlush", uint64(TransSendFlush), 1 << 2},
		{"TransSendFUA", uint64(TransSendFUA), 1 << 3},
		{"TransRotational", uint64(TransRotational), 1 << 4},
		{"TransSendTrim", uint64(TransSendTrim), 1 << 5},
		{"TransSendWriteZeroes", uint64(TransSendWriteZeroes), 1 << 6},
		{"TransCanMultiConn", uint64(TransCanMultiConn), 1 << 8},

		{"FlagFUA", uint64(FlagFUA), 1 << 0},
		{"FlagNoHole", uint64(FlagNoHole), 1 << 1},
		{"FlagDF", uint64(FlagDF), 1 << 2},
		{"FlagReqOne", uint64(FlagReqOne), 1 << 3},
		{"FlagFastZero", uint64(FlagFastZero), 1 << 4},

		{"HandshakeFixedNewstyle (go-nbd)", uint64(HandshakeFixedNewstyle), uint64(protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE)},
		{"TransHasFlags (go-nbd)", uint64(TransHasFlags), uint64(protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS)},
		{"TransCanMultiConn (go-nbd)", uint64(TransCanMultiConn), uint64(protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN)},
	})
}

func TestConstOptions(t *testing.T) {
	checkPins(t, []pin{
		{"OptExportName", uint64(OptExportName), 1},
		{"OptAbort", uint64(OptAbort), 2},
		{"OptList", uint64(OptList), 3},
		{"OptPeekExport", uint64(OptPeekExport), 4},
		{"OptStartTLS", uint64(OptStartTLS), 5},
		{"OptInfo", uint64(OptInfo), 6},
		{"OptGo", uint64(OptGo), 7},
		{"OptStructuredReply", uint64(OptStructuredReply), 8},
		{"OptListMetaContext", uint64(OptListMetaContext), 9},
		{"OptSetMetaContext", uint64(OptSetMetaContext), 10},
		{"OptExtendedHeaders", uint64(OptExtendedHeaders), 11},

		{"OptAbort (go-nbd)", uint64(OptAbort), uint64(protocol.NEGOTIATION_ID_OPTION_ABORT)},
		{"OptList (go-nbd)", uint64(OptList), uint64(protocol.NEGOTIATION_ID_OPTION_LIST)},
		{"OptInfo (go-nbd)", uint64(OptInfo), uint64(protocol.NEGOTIATION_ID_OPTION_INFO)},
		{"OptGo (go-nbd)", uint64(OptGo), uint64(protocol.NEGOTIATION_ID_OPTION_GO)},
	})
}

func TestConstReplyTypes(t *testing.T) {
	const e = 1 << 31
	checkPins(t, []pin{
		{"RepAck", uint64(RepAck), 1},
		{"RepServer", uint64(RepServer), 2},
		{"RepInfo", uint64(RepInfo), 3},
		{"RepMetaContext", uint64(RepMetaContext), 4},
		{"RepErrUnsup", uint64(RepErrUnsup), e + 1},
		{"RepErrPolicy", uint64(RepErrPolicy), e + 2},
		{"RepErrInvalid", uint64(RepErrInvalid), e + 3},
		{"RepErrPlatform", uint64(RepErrPlatform), e + 4},
		{"RepErrTLSReqd", uint64(RepErrTLSReqd), e + 5},
		{"RepErrUnknown", uint64(RepErrUnknown), e + 6},
		{"RepErrShutdown", uint64(RepErrShutdown), e + 7},
		{"RepErrBlockSizeReqd", uint64(RepErrBlockSizeReqd), e + 8},
		{"RepErrTooBig", uint64(RepErrTooBig), e + 9},
		{"RepErrExtHeaderReqd", uint64(RepErrExtHeaderReqd), e + 10},

		{"RepAck (go-nbd)", uint64(RepAck), uint64(protocol.NEGOTIATION_TYPE_REPLY_ACK)},
		{"RepServer (go-nbd)", uint64(RepServer), uint64(protocol.NEGOTIATION_TYPE_REPLY_SERVER)},
		{"RepInfo (go-nbd)", uint64(RepInfo), uint64(protocol.NEGOTIATION_TYPE_REPLY_INFO)},
		{"RepErrUnsup (go-nbd)", uint64(RepErrUnsup), uint64(protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED)},
		{"RepErrUnknown (go-nbd)", uint64(RepErrUnknown), uint64(protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN)},
	})
	for typ := range replyTypeNames {
		if typ.IsError() != (typ >= e) {
			t.Errorf("%v.IsError() = %v", typ, typ.IsError())
		}
	}
}

func TestConstInfoTypes(t *testing.T) {
	checkPins(t, []pin{
		{"InfoExport", uint64(InfoExport), 0},
		{"InfoName", uint64(InfoName), 1},
		{"InfoDescription", uint64(InfoDescription), 2},
		{"InfoBlockSize", uint64(InfoBlockSize), 3},

		{"InfoExport (go-nbd)", uint64(InfoExport), uint64(protocol.NEGOTIATION_TYPE_INFO_EXPORT)},
		{"InfoName (go-nbd)", uint64(InfoName), uint64(protocol.NEGOTIATION_TYPE_INFO_NAME)},
		{"InfoDescription (go-nbd)", uint64(InfoDescription), uint64(protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION)},
		{"InfoBlockSize (go-nbd)", uint64(InfoBlockSize), uint64(protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE)},
	})
}

func TestConstCommands(t *testing.T) {
	checkPins(t, []pin{
		{"CmdRead", uint64(CmdRead), 0},
		{"CmdWrite", uint64(CmdWrite), 1},
		{"CmdDisc", uint64(CmdDisc), 2},
		{"CmdFlush", uint64(CmdFlush), 3},
		{"CmdTrim", uint64(CmdTrim), 4},
		{"CmdCache", uint64(CmdCache), 5},
		{"CmdWriteZeroes", uint64(CmdWriteZeroes), 6},
		{"CmdBlockStatus", uint64(CmdBlockStatus), 7},
		{"CmdResize", uint64(CmdResize), 8},

		{"CmdRead (go-nbd)", uint64(CmdRead), uint64(protocol.TRANSMISSION_TYPE_REQUEST_READ)},
		{"CmdWrite (go-nbd)", uint64(CmdWrite), uint64(protocol.TRANSMISSION_TYPE_REQUEST_WRITE)},
		{"CmdDisc (go-nbd)", uint64(CmdDisc), uint64(protocol.TRANSMISSION_TYPE_REQUEST_DISC)},
	})
}

func TestConstErrno(t *testing.T) {
	checkPins(t, []pin{
		{"EPERM", uint64(EPERM), 1},
		{"EIO", uint64(EIO), 5},
		{"ENOMEM", uint64(ENOMEM), 12},
		{"EINVAL", uint64(EINVAL), 22},
		{"ENOSPC", uint64(ENOSPC), 28},
		{"EOVERFLOW", uint64(EOVERFLOW), 75},
		{"ENOTSUP", uint64(ENOTSUP), 95},
		{"ESHUTDOWN", uint64(ESHUTDOWN), 108},

		{"EPERM (go-nbd)", uint64(EPERM), uint64(protocol.TRANSMISSION_ERROR_EPERM)},
		{"EINVAL (go-nbd)", uint64(EINVAL), uint64(protocol.TRANSMISSION_ERROR_EINVAL)},
	})
	if len(errnoNames) != 9 {
		t.Errorf("%d errno values have names, 8 and OK are pinned here", len(errnoNames))
	}
	for e := range errnoNames {
		if e.Valid() != (e != 0) {
			t.Errorf("%v.Valid() = %v", e, e.Valid())
		}
	}
	for _, e := range []Errno{2, 4, 109, 1 << 31} {
		if e.Valid() {
			t.Errorf("Errno(%d) is Valid", uint32(e))
		}
	}
}

func TestStrings(t *testing.T) {
	tests := []struct {
		got  interface{ String() string }
		want string
	}{
		{HandshakeFixedNewstyle | HandshakeNoZeroes, "FIXED_NEWSTYLE|NO_ZEROES"},
		{HandshakeFlags(0), "0"},
		{ClientNoZeroes | 1<<7, "NO_ZEROES|0x80"},
		{OptGo, "GO"},
		{OptExtendedHeaders, "EXTENDED_HEADERS"},
		{Option(0), "OPT_0"},
		{Option(1000), "OPT_1000"},
		{RepAck, "ACK"},
		{RepErrTooBig, "ERR_TOO_BIG"},
		{ReplyType(5), "REP_5"},
		{repErrBit | 99, "REP_2147483747"},
		{InfoBlockSize, "BLOCK_SIZE"},
		{InfoType(4), "INFO_4"},
		{CmdWriteZeroes, "WRITE_ZEROES"},
		{CmdCache, "CACHE"},
		{Command(99), "CMD_99"},
		{CmdFlags(0), "0"},
		{FlagFUA | FlagNoHole, "FUA|NO_HOLE"},
		{FlagFUA | 1<<9, "FUA|0x200"},
		{TransHasFlags | TransReadOnly | TransCanMultiConn, "HAS_FLAGS|READ_ONLY|CAN_MULTI_CONN"},
		{TransFlags(1<<11 | 1<<15), "SEND_FAST_ZERO|0x8000"},
		{Errno(0), "OK"},
		{ENOSPC, "ENOSPC"},
		{Errno(7), "ERRNO_7"},
	}
	for _, tt := range tests {
		if s := tt.got.String(); s != tt.want {
			t.Errorf("String() = %q, want %q", s, tt.want)
		}
	}
	if s := EIO.Error(); s != "nbd: EIO" {
		t.Errorf("EIO.Error() = %q", s)
	}
}
