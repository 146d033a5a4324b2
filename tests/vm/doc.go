// Package vm proves dst's kernel paths (/dev/nbdN over netlink, ext4 and
// device-mapper on top) on a real Linux kernel booted under QEMU.
//
// The package owns the guest harness (run, guest/vmlib.sh), the guest
// scenarios (guest/*.sh) and the Go driver that builds a static dst, runs
// host-side dst servers the guest reaches at 10.0.2.2, and acts on them when
// a guest asks over the control channel. README.md says how to add a
// scenario.
package vm
