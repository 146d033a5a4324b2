// Package tests holds dst's end-to-end tests: they build the dst binary, run
// `dst serve` and `dst attach` as real processes on loopback, and drive the
// attached export with stock NBD clients (nbdinfo, nbdcopy, qemu-img,
// qemu-io, fio, qemu-storage-daemon + loop + ext4).
//
// The package owns the process harness (harness_test.go), a minimal raw NBD
// client for requests that well-behaved clients refuse to send
// (nbdraw_test.go), and the scenarios themselves. It has no non-test code.
//
// Environment:
//
//	CI=true              a missing tool fails the test instead of skipping it
//	DST_BIN=PATH         use this dst binary instead of building ./cmd/dst
//	DST_TEST_STANDIN=nbdkit
//	                     serve exports with nbdkit instead of dst; tests that
//	                     need dst itself skip. Only for developing the tests.
//
// The FUSE test needs root, /dev/fuse and loop devices.
package tests
