package nbd

import (
	"errors"
	"syscall"

	"github.com/dstproject/dst/internal/nbdwire"
)

// errnoOf maps a Device error to the errno a client sees. Only the values the
// protocol defines may go on the wire; everything unknown becomes EIO, which
// every client treats as a plain I/O failure.
func errnoOf(err error) nbdwire.Errno {
	if err == nil {
		return 0
	}
	var ne nbdwire.Errno
	if errors.As(err, &ne) {
		if ne.Valid() {
			return ne
		}
		return nbdwire.EIO
	}
	var se syscall.Errno
	if !errors.As(err, &se) {
		return nbdwire.EIO
	}
	switch se {
	case syscall.EPERM:
		return nbdwire.EPERM
	case syscall.ENOMEM:
		return nbdwire.ENOMEM
	case syscall.EINVAL:
		return nbdwire.EINVAL
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG: // the spec asks for this folding
		return nbdwire.ENOSPC
	case syscall.EOVERFLOW:
		return nbdwire.EOVERFLOW
	case syscall.ENOTSUP: // == EOPNOTSUPP on Linux
		return nbdwire.ENOTSUP
	case syscall.ESHUTDOWN:
		return nbdwire.ESHUTDOWN
	}
	return nbdwire.EIO
}
