package nbd

import "github.com/dstproject/dst/internal/nbdwire"

// check decides whether a request may reach the Device. A non-zero result is
// sent back as the reply's error and the connection stays up: the spec treats
// these as the client's mistakes on one transaction, not on the session.
func (c *conn) check(cmd nbdwire.Command, flags nbdwire.CmdFlags, off uint64, length uint32) nbdwire.Errno {
	e := c.e
	switch cmd {
	case nbdwire.CmdRead, nbdwire.CmdWrite, nbdwire.CmdFlush, nbdwire.CmdTrim, nbdwire.CmdWriteZeroes:
	default:
		return nbdwire.EINVAL
	}
	// FUA is valid on every command once advertised (clients are known to
	// set it on reads); NO_HOLE only means something to WRITE_ZEROES.
	var allowed nbdwire.CmdFlags
	if e.FUA {
		allowed |= nbdwire.FlagFUA
	}
	if cmd == nbdwire.CmdWriteZeroes {
		allowed |= nbdwire.FlagNoHole
	}
	if flags&^allowed != 0 {
		return nbdwire.EINVAL
	}
	size := e.size()
	switch {
	case cmd == nbdwire.CmdFlush && !e.Flush,
		cmd == nbdwire.CmdTrim && !e.Trim,
		cmd == nbdwire.CmdWriteZeroes && !e.WriteZeroes:
		return nbdwire.EINVAL
	case cmd == nbdwire.CmdFlush:
		return 0 // offset and length are reserved; nothing more to check
	case e.ReadOnly && cmd != nbdwire.CmdRead:
		return nbdwire.EPERM
	case (cmd == nbdwire.CmdRead || cmd == nbdwire.CmdWrite) && length > c.maxLen:
		// TRIM and WRITE_ZEROES carry no payload, so the spec lets their
		// effect length exceed the maximum payload size.
		return nbdwire.EINVAL
	case off > size || uint64(length) > size-off:
		if cmd == nbdwire.CmdWrite || cmd == nbdwire.CmdWriteZeroes {
			return nbdwire.ENOSPC
		}
		return nbdwire.EINVAL
	case (off|uint64(length))&uint64(c.minLen-1) != 0:
		return nbdwire.EINVAL // not aligned to the advertised minimum block size
	}
	return 0
}
