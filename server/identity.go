package server

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/dstproject/dst/wire"
	"golang.org/x/sys/unix"
)

// identityXattr holds a regular file's export identity. Random bytes kept
// with the file survive restarts and renames, and a new file at the same
// path starts without them, so it gets a new identity.
const identityXattr = "user.dst.identity"

// fileIdentity returns the identity stored in the file's xattr, creating
// it on first use. File systems without user xattrs get one derived from
// the inode instead.
func fileIdentity(fd int, log *slog.Logger) (wire.Identity, error) {
	var id wire.Identity
	n, err := unix.Fgetxattr(fd, identityXattr, id[:])
	switch {
	case err == nil && n == len(id) && !id.IsZero():
		return id, nil
	case err == nil, errors.Is(err, unix.ENODATA), errors.Is(err, unix.ERANGE):
		// Absent, or not one of ours: make a new one.
		if _, err := rand.Read(id[:]); err != nil {
			return id, fmt.Errorf("identity: %w", err)
		}
		err = unix.Fsetxattr(fd, identityXattr, id[:], 0)
		if err == nil {
			return id, nil
		}
		log.Debug("cannot store export identity; deriving it from the inode", "err", err)
	default:
		log.Debug("cannot read export identity; deriving it from the inode", "err", err)
	}
	return inodeIdentity(fd)
}

// inodeIdentity hashes what names one inode for its lifetime: device,
// inode number and birth time. The birth time tells a new file apart from a
// deleted one whose inode number was reused; without it, ctime is the best
// approximation.
func inodeIdentity(fd int) (wire.Identity, error) {
	var stx unix.Statx_t
	err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_INO|unix.STATX_BTIME|unix.STATX_CTIME, &stx)
	if err != nil {
		return wire.Identity{}, fmt.Errorf("identity: statx: %w", err)
	}
	t := stx.Ctime
	if stx.Mask&unix.STATX_BTIME != 0 {
		t = stx.Btime
	}
	var b []byte
	b = binary.BigEndian.AppendUint32(b, stx.Dev_major)
	b = binary.BigEndian.AppendUint32(b, stx.Dev_minor)
	b = binary.BigEndian.AppendUint64(b, stx.Ino)
	b = binary.BigEndian.AppendUint64(b, uint64(t.Sec))
	b = binary.BigEndian.AppendUint32(b, t.Nsec)
	return hashIdentity("dst file identity v1", b), nil
}

// blockIdentity derives a block device's identity from what the hardware
// reports about itself (WWID, serial, device-mapper UUID), so the same disk
// keeps it across reboots even if its device number changes. Partitions add
// their start sector. Devices without any of these fall back to device
// number and size.
func blockIdentity(sys string, rdev, size uint64) wire.Identity {
	dir, part := sys, ""
	if readSysfs(sys, "partition") != "" {
		dir = filepath.Join(sys, "..")
		part = "partition " + readSysfs(sys, "partition") + " start " + readSysfs(sys, "start")
	}
	for _, name := range []string{"wwid", "device/wwid", "device/serial", "serial", "dm/uuid"} {
		if v := readSysfs(dir, name); v != "" {
			return hashIdentity("dst block identity v1", []byte(name+"="+v+"\n"+part))
		}
	}
	var b []byte
	b = binary.BigEndian.AppendUint32(b, unix.Major(rdev))
	b = binary.BigEndian.AppendUint32(b, unix.Minor(rdev))
	b = binary.BigEndian.AppendUint64(b, size)
	return hashIdentity("dst block device number v1", b)
}

func hashIdentity(domain string, b []byte) wire.Identity {
	h := sha256.New()
	h.Write([]byte(domain))
	h.Write([]byte{0})
	h.Write(b)
	var id wire.Identity
	copy(id[:], h.Sum(nil))
	return id
}

// sysBlockDir is the sysfs directory of a block device number, with the
// /sys/dev/block symlink resolved so that ".." of a partition is its disk.
func sysBlockDir(rdev uint64) string {
	dir := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(rdev), unix.Minor(rdev))
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		return real
	}
	return dir
}

// readSysfs reads a sysfs attribute, trimmed; "" if absent. Partitions
// have no queue directory of their own, so queue/ falls back to the
// parent's.
func readSysfs(dir, name string) string {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil && strings.HasPrefix(name, "queue/") {
		b, err = os.ReadFile(filepath.Join(dir, "..", name))
	}
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
