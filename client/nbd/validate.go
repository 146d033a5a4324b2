package nbd

// check decides whether a request may reach the Device. A non-zero result is
// sent back as the reply's error and the connection stays up: the spec treats
// these as the client's mistakes on one transaction, not on the session.
func (c *conn) check(cmd Command, flags CmdFlags, off uint64, length uint32) Errno {
	e := c.e
	switch cmd {
	case CmdRead, CmdWrite, CmdFlush, CmdTrim, CmdWriteZeroes:
	default:
		return EINVAL
	}
	// FUA is valid on every command once advertised (clients are known to
	// set it on reads); NO_HOLE only means something to WRITE_ZEROES.
	var allowed CmdFlags
	if e.FUA {
		allowed |= FlagFUA
	}
	if cmd == CmdWriteZeroes {
		allowed |= FlagNoHole
	}
	if flags&^allowed != 0 {
		return EINVAL
	}
	switch {
	case cmd == CmdFlush && !e.Flush,
		cmd == CmdTrim && !e.Trim,
		cmd == CmdWriteZeroes && !e.WriteZeroes:
		return EINVAL
	case cmd == CmdFlush:
		return 0 // offset and length are reserved; nothing more to check
	case e.ReadOnly && cmd != CmdRead:
		return EPERM
	case (cmd == CmdRead || cmd == CmdWrite) && length > c.maxLen:
		// TRIM and WRITE_ZEROES carry no payload, so the spec lets their
		// effect length exceed the maximum payload size.
		return EINVAL
	case off > e.Size || uint64(length) > e.Size-off:
		if cmd == CmdWrite || cmd == CmdWriteZeroes {
			return ENOSPC
		}
		return EINVAL
	case (off|uint64(length))&uint64(c.minLen-1) != 0:
		return EINVAL // not aligned to the advertised minimum block size
	}
	return 0
}
