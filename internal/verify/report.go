package verify

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// OpCounts counts one kind of operation; Issued-OK-Failed are in flight.
type OpCounts struct {
	Issued, OK, Failed int64
}

// Violation is a block whose contents the rule does not allow.
type Violation struct {
	Block int64
	When  string   // "read" during a run, "verify" after it
	Rule  Rule     // the rule it broke
	Want  []uint64 // sequence numbers allowed; 0 is the block's contents before the run
	Found string   // what the block held: "write 12", "data from before the run", ...
}

func (v Violation) String() string {
	return fmt.Sprintf("block %d (%s, %v): found %s, want one of writes %v", v.Block, v.When, v.Rule, v.Found, v.Want)
}

// maxViolations bounds how many violations a Report lists; Violated counts
// them all.
const maxViolations = 100

// maxFirstErrors bounds the error messages kept for diagnosis.
const maxFirstErrors = 8

// Report is what a Workload did and found.
type Report struct {
	Reads, Writes, FUAWrites, Flushes OpCounts // FUAWrites are also in Writes
	BytesRead, BytesWritten           int64    // by successful operations

	// Errors counts failed operations by the errno found in the error's
	// chain ("EIO", "ECONNRESET"), or "other" when there is none.
	Errors      map[string]int64
	FirstErrors []string // the first few error messages

	Checked    int64       // blocks checked by Verify
	Violated   int64       // violations found, during runs and Verify
	Violations []Violation // the first of them
}

// Failed returns how many operations failed.
func (r *Report) Failed() int64 {
	return r.Reads.Failed + r.Writes.Failed + r.Flushes.Failed
}

// Err returns an error describing the violations, or nil if there were none.
func (r *Report) Err() error {
	if r.Violated == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "verify: %d violations", r.Violated)
	for i, v := range r.Violations {
		if i == 5 {
			b.WriteString("; ...")
			break
		}
		b.WriteString("; ")
		b.WriteString(v.String())
	}
	return errors.New(b.String())
}

func (r *Report) String() string {
	keys := slices.Sorted(maps.Keys(r.Errors))
	errs := make([]string, len(keys))
	for i, k := range keys {
		errs[i] = fmt.Sprintf("%s=%d", k, r.Errors[k])
	}
	return fmt.Sprintf("reads %d (%d failed), writes %d (%d failed, %d fua), flushes %d (%d failed), "+
		"%d B read, %d B written, errors [%s], checked %d, violations %d",
		r.Reads.Issued, r.Reads.Failed, r.Writes.Issued, r.Writes.Failed, r.FUAWrites.Issued,
		r.Flushes.Issued, r.Flushes.Failed, r.BytesRead, r.BytesWritten,
		strings.Join(errs, " "), r.Checked, r.Violated)
}

func (r *Report) clone() Report {
	c := *r
	c.Errors = maps.Clone(r.Errors)
	c.FirstErrors = slices.Clone(r.FirstErrors)
	c.Violations = slices.Clone(r.Violations)
	return c
}

func (r *Report) addError(err error) {
	if r.Errors == nil {
		r.Errors = make(map[string]int64)
	}
	r.Errors[errnoName(err)]++
	if len(r.FirstErrors) < maxFirstErrors {
		r.FirstErrors = append(r.FirstErrors, err.Error())
	}
}

func (r *Report) addViolation(v Violation) {
	r.Violated++
	if len(r.Violations) < maxViolations {
		r.Violations = append(r.Violations, v)
	}
}

// errnoName names the errno in err's chain.
func errnoName(err error) string {
	var e syscall.Errno
	if !errors.As(err, &e) {
		return "other"
	}
	if s := unix.ErrnoName(e); s != "" {
		return s
	}
	return fmt.Sprintf("errno%d", int(e))
}
