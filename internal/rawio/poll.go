package rawio

import (
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Busy polling.
//
// A process that sleeps until a socket has data is woken by whoever sends
// it: the sender's kernel finds the sleeping thread and, when its CPU is
// idle, interrupts that CPU, which then switches to the thread. On a
// virtual machine whose idle CPUs halt, both halves are exits to the
// hypervisor, and they are most of what a request costs at queue depth
// one: dst attach spends 57 µs of CPU per QD1 read when its peers run on
// the other CPU, 26 µs when every process shares one CPU and no wake-up
// crosses CPUs (2-vCPU development VM, scripts/bench --pin 0).
//
// A Poller lets one goroutine of a process, when the socket it reads has
// nothing for it, go on polling every socket of the Poller's set for a
// while before it sleeps. Data that arrives meanwhile finds the process
// awake: its sender wakes nobody, and the process does not switch. The
// price is a CPU kept busy while requests come one at a time, so it is
// for hosts where latency at low queue depth is worth a core, and a Gate
// keeps it to the moments it pays (dst attach: while requests come one at
// a time; deeper queues keep their CPUs busy anyway).
//
// One goroutine polls at a time: every other one that finds its socket
// empty parks on the runtime's poller as usual. The poller polls the whole
// set, so a parked goroutine's data ends the polling at once, and the
// runtime, finding the P idle, hands that goroutine its data without
// sleeping. Between polls the poller yields to the goroutines the runtime
// has ready to run, and then its CPU to any other thread ready there
// (sched_yield): at a deep queue that drains for a moment, the process
// that is to refill it may be the one waiting for that CPU.

// A Poller polls a set of sockets before the goroutines reading them sleep.
// Its zero value is not usable; make one with NewPoller.
type Poller struct {
	budget time.Duration
	gate   atomic.Pointer[func() bool]

	polling atomic.Bool // one goroutine polls at a time

	mu   sync.Mutex
	fds  []int32       // the set, one entry per Conn added
	scan []unix.PollFd // the poller's copy of the set, used only while polling

	rounds, data, other, expired atomic.Uint64 // see PollStats
}

// NewPoller returns a Poller whose goroutines poll for up to budget before
// they sleep. A budget of zero or less never polls.
func NewPoller(budget time.Duration) *Poller {
	return &Poller{budget: budget}
}

// Gate makes the Poller poll only while f reports true. f is called each
// time a goroutine would begin a round, so it must be cheap.
func (p *Poller) Gate(f func() bool) { p.gate.Store(&f) }

// Add puts c in the set. c must come from Wrap, and Add must come before c
// is read; it reports whether c could be added (a connection Wrap could
// not wrap cannot). Closing c takes it out again. A nil Poller adds
// nothing.
func (p *Poller) Add(c net.Conn) bool {
	rc, ok := c.(*Conn)
	if p == nil || !ok || p.budget <= 0 {
		return false
	}
	fd := int32(-1)
	if err := rc.rc.Control(func(f uintptr) { fd = int32(f) }); err != nil || fd < 0 {
		return false
	}
	p.mu.Lock()
	p.fds = append(p.fds, fd)
	p.mu.Unlock()
	rc.poller, rc.fd = p, fd
	return true
}

// remove takes fd out of the set.
func (p *Poller) remove(fd int32) {
	p.mu.Lock()
	for i, f := range p.fds {
		if f == fd {
			p.fds = append(p.fds[:i], p.fds[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
}

// PollStats counts the rounds of polling and how they ended.
type PollStats struct {
	Sockets int    `json:"sockets"` // in the set now
	Rounds  uint64 `json:"rounds"`  // rounds of polling begun
	Data    uint64 `json:"data"`    // ended by data on the poller's own socket
	Other   uint64 `json:"other"`   // ended by data on another socket of the set
	Expired uint64 `json:"expired"` // ended by the budget running out
}

// Stats returns what the Poller has done so far.
func (p *Poller) Stats() PollStats {
	p.mu.Lock()
	n := len(p.fds)
	p.mu.Unlock()
	return PollStats{
		Sockets: n,
		Rounds:  p.rounds.Load(),
		Data:    p.data.Load(),
		Other:   p.other.Load(),
		Expired: p.expired.Load(),
	}
}

// poll is called by a goroutine whose socket fd had nothing to read. It
// reports whether fd has data now; false means the caller is to park on
// the runtime's poller (another goroutine polls, the gate is shut, the
// budget ran out, or another socket has data for a parked goroutine).
func (p *Poller) poll(fd int32) bool {
	if !p.polling.CompareAndSwap(false, true) {
		return false
	}
	defer p.polling.Store(false)
	if g := p.gate.Load(); g != nil && !(*g)() {
		return false
	}
	p.rounds.Add(1)
	p.mu.Lock()
	p.scan = p.scan[:0]
	for _, f := range p.fds {
		p.scan = append(p.scan, unix.PollFd{Fd: f, Events: unix.POLLIN})
	}
	p.mu.Unlock()
	if len(p.scan) == 0 {
		return false
	}
	var zero unix.Timespec
	end := time.Now().Add(p.budget)
	for {
		// Ready goroutines first, then other threads ready on this CPU:
		// the poller holds its P, and its CPU, only while neither has
		// anything to run. Neither sched_yield nor ppoll with a zero
		// timeout blocks (the thread stays runnable), so raw calls are
		// safe (see the package comment on why the other kind is avoided).
		runtime.Gosched()
		syscall.RawSyscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
		n, _, e := syscall.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&p.scan[0])),
			uintptr(len(p.scan)), uintptr(unsafe.Pointer(&zero)), 0, 0, 0)
		if e == 0 && n > 0 {
			for i := range p.scan {
				if p.scan[i].Fd == fd && p.scan[i].Revents != 0 {
					p.data.Add(1)
					return true
				}
			}
			p.other.Add(1)
			return false
		}
		if e != 0 && e != syscall.EINTR || time.Now().After(end) {
			p.expired.Add(1)
			return false
		}
	}
}
