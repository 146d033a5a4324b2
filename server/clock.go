package server

import (
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// serverClock is the clock clients map their deadlines onto: nanoseconds
// of CLOCK_BOOTTIME, which keeps counting while the host is suspended or
// the process is stopped, so a request that waited through either is seen
// to have waited. It is only compared with itself, within one boot.
//
// Reading CLOCK_BOOTTIME is a system call, which every request would pay
// (8% of 4 KiB random reads at QD32 here). CLOCK_MONOTONIC, read through
// the vDSO by time.Now, ticks at the same rate except across a suspend, so
// the clock is monotonic time plus an offset, re-read when it may have
// changed: a suspend moves the wall clock but not the monotonic one, so a
// growing gap between the two (or a second since the last reading) sends
// it back to the system call.
func serverClock() uint64 {
	now := time.Now()
	mono := now.Sub(clockStart)
	gap := now.Round(0).Sub(clockStart.Round(0)) - mono
	if c := clockCache.Load(); c != nil && gap-c.gap < clockGapMax && mono-c.mono < clockAgeMax {
		return uint64(mono + c.offset)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		// Cannot happen on Linux ≥ 2.6.39; monotonic time is the next best.
		return uint64(mono)
	}
	boot := time.Duration(ts.Nano())
	clockCache.Store(&clockReading{mono: mono, gap: gap, offset: boot - mono})
	return uint64(boot)
}

// clockReading relates CLOCK_BOOTTIME to time since clockStart.
type clockReading struct {
	mono   time.Duration // monotonic time since clockStart when read
	gap    time.Duration // wall minus monotonic time since clockStart then
	offset time.Duration // CLOCK_BOOTTIME minus mono
}

const (
	clockGapMax = time.Millisecond
	clockAgeMax = time.Second
)

var (
	clockStart = time.Now()
	clockCache atomic.Pointer[clockReading]
)
