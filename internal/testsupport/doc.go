// Package testsupport holds what the tests of several packages share: a
// check that a test's goroutines end with it, and a logger that writes to
// the test. It is imported by _test files only, and imports nothing of dst,
// so the tests of any package, crypto included, can use it.
package testsupport
