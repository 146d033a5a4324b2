package nbd

import (
	"errors"
	"strconv"
	"syscall"
)

// Errno is the error field of a transmission reply. The values are fixed by
// the protocol, not by the host's errno numbering (they happen to match
// Linux). An Errno is an error, so a Device may pass one to Complete.
type Errno uint32

const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

var errnoNames = map[Errno]string{
	0:         "OK",
	EPERM:     "EPERM",
	EIO:       "EIO",
	ENOMEM:    "ENOMEM",
	EINVAL:    "EINVAL",
	ENOSPC:    "ENOSPC",
	EOVERFLOW: "EOVERFLOW",
	ENOTSUP:   "ENOTSUP",
	ESHUTDOWN: "ESHUTDOWN",
}

func (e Errno) String() string {
	if s, ok := errnoNames[e]; ok {
		return s
	}
	return "ERRNO_" + strconv.FormatUint(uint64(e), 10)
}

func (e Errno) Error() string { return "nbd: " + e.String() }

// errnoOf maps a Device error to the errno a client sees. Only the values the
// protocol defines may go on the wire; everything unknown becomes EIO, which
// every client treats as a plain I/O failure.
func errnoOf(err error) Errno {
	if err == nil {
		return 0
	}
	var ne Errno
	if errors.As(err, &ne) {
		if _, ok := errnoNames[ne]; ok && ne != 0 {
			return ne
		}
		return EIO
	}
	var se syscall.Errno
	if !errors.As(err, &se) {
		return EIO
	}
	switch se {
	case syscall.EPERM:
		return EPERM
	case syscall.ENOMEM:
		return ENOMEM
	case syscall.EINVAL:
		return EINVAL
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG: // the spec asks for this folding
		return ENOSPC
	case syscall.EOVERFLOW:
		return EOVERFLOW
	case syscall.ENOTSUP: // == EOPNOTSUPP on Linux
		return ENOTSUP
	case syscall.ESHUTDOWN:
		return ESHUTDOWN
	}
	return EIO
}
