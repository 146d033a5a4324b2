package server

import (
	"errors"
	"io"
	"os"
	"syscall"

	"github.com/dstproject/dst/wire"
	"github.com/pojntfx/go-nbd/pkg/backend"
)

// Backend is the storage behind one export.
//
// It embeds go-nbd's backend interface (ReadAt, WriteAt, Size, Sync), so
// any go-nbd backend can be adapted by adding the methods below. The server
// calls every method concurrently from its workers; implementations must be
// safe for that. Sync must make every write that has returned durable, not
// only those made through one stream: exports announce multi-conn.
type Backend interface {
	backend.Backend

	// WriteAtFUA writes p at off and makes it durable before returning.
	WriteAtFUA(p []byte, off int64) error
	// Trim tells the backend that n bytes at off are unused. Reads of the
	// range afterwards may return anything; in practice zeroes or the old
	// data.
	Trim(off, n int64) error
	// WriteZeroes makes n bytes at off read as zero. Unless noHole is set
	// the backend may deallocate the range.
	WriteZeroes(off, n int64, noHole bool) error
	// Close releases the backend. No method is called after it.
	Close() error
	// Info describes the storage: its logical and physical block sizes,
	// whether it is rotational, and whether Trim does anything.
	Info() (logical, physical uint32, rotational, canTrim bool)
}

// Identifier is implemented by backends that know a stable identity for
// their disk. Backends passed in ExportConfig.Backend without it get a
// fresh random identity at every start.
type Identifier interface {
	Identity() wire.Identity
}

// errnoStatus lists the errnos that travel to the client as themselves.
// Anything else becomes EIO: the client only needs to know the request
// failed, the server log has the details.
var errnoStatus = map[syscall.Errno]wire.Status{
	syscall.EPERM:     wire.StatusEPERM,
	syscall.EACCES:    wire.StatusEPERM,
	syscall.EROFS:     wire.StatusEPERM,
	syscall.EBADF:     wire.StatusEPERM, // writing through a read-only descriptor
	syscall.EIO:       wire.StatusEIO,
	syscall.ENOMEM:    wire.StatusENOMEM,
	syscall.EINVAL:    wire.StatusEINVAL,
	syscall.ENOSPC:    wire.StatusENOSPC,
	syscall.EDQUOT:    wire.StatusENOSPC,
	syscall.EFBIG:     wire.StatusENOSPC,
	syscall.EOVERFLOW: wire.StatusEOVERFLOW,
	syscall.ENOTSUP:   wire.StatusENOTSUP,
	syscall.ENOSYS:    wire.StatusENOTSUP,
}

// errStatus maps a backend error to the Status of its request.
func errStatus(err error) wire.Status {
	switch {
	case err == nil:
		return wire.StatusOK
	case errors.Is(err, os.ErrPermission):
		return wire.StatusEPERM
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return wire.StatusEIO
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if s, ok := errnoStatus[errno]; ok {
			return s
		}
	}
	return wire.StatusEIO
}
