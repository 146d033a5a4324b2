package nbd

import (
	"errors"
	"syscall"

	"github.com/dstproject/dst/internal/nbdwire"
)

// Errno is the error field of a transmission reply. An Errno is an error,
// so a Device may pass one to Complete.
type Errno = nbdwire.Errno

const (
	EPERM     = nbdwire.EPERM
	EIO       = nbdwire.EIO
	ENOMEM    = nbdwire.ENOMEM
	EINVAL    = nbdwire.EINVAL
	ENOSPC    = nbdwire.ENOSPC
	EOVERFLOW = nbdwire.EOVERFLOW
	ENOTSUP   = nbdwire.ENOTSUP
	ESHUTDOWN = nbdwire.ESHUTDOWN
)

// errnoOf maps a Device error to the errno a client sees. Only the values the
// protocol defines may go on the wire; everything unknown becomes EIO, which
// every client treats as a plain I/O failure.
func errnoOf(err error) Errno {
	if err == nil {
		return 0
	}
	var ne Errno
	if errors.As(err, &ne) {
		if ne.Valid() {
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
