package nbd

import "github.com/dstproject/dst/internal/nbdwire"

// The protocol's values and byte layouts are declared once, in
// internal/nbdwire. The names a Device and other packages use are aliases
// of those.

// Transmission flags, announced per export (see Export.TransmissionFlags).
const (
	TransHasFlags        = nbdwire.TransHasFlags
	TransReadOnly        = nbdwire.TransReadOnly
	TransSendFlush       = nbdwire.TransSendFlush
	TransSendFUA         = nbdwire.TransSendFUA
	TransRotational      = nbdwire.TransRotational
	TransSendTrim        = nbdwire.TransSendTrim
	TransSendWriteZeroes = nbdwire.TransSendWriteZeroes
	TransCanMultiConn    = nbdwire.TransCanMultiConn
)

// Command is the type field of a transmission request.
type Command = nbdwire.Command

const (
	CmdRead        = nbdwire.CmdRead
	CmdWrite       = nbdwire.CmdWrite
	CmdDisc        = nbdwire.CmdDisc
	CmdFlush       = nbdwire.CmdFlush
	CmdTrim        = nbdwire.CmdTrim
	CmdWriteZeroes = nbdwire.CmdWriteZeroes
)

// CmdFlags is the flags field of a transmission request.
type CmdFlags = nbdwire.CmdFlags

const (
	FlagFUA      = nbdwire.FlagFUA
	FlagNoHole   = nbdwire.FlagNoHole
	FlagDF       = nbdwire.FlagDF       // only with structured replies; never valid here
	FlagReqOne   = nbdwire.FlagReqOne   // only for BLOCK_STATUS; never valid here
	FlagFastZero = nbdwire.FlagFastZero // never advertised; never valid here
)
