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
//
// A round is worth its CPU only when data comes before it ends: one that
// runs out and then sleeps anyway pays for both. So the poller keeps a
// score for each socket of how the rounds its reader began have ended, and
// stops beginning them for a reader whose rounds run out too often (a link
// whose round trip is longer than the budget, a device left idle), but for
// one in every probeEvery, whose ending keeps the score current. The score
// belongs to the reader that begins the round, not to the socket whose
// data ends it, because that tells the waits apart: at queue depth one in
// dst attach, the NBD connection's reader polls after sending a request,
// so its waits are the server's round trips, and the queue connection's
// reader polls after answering one, so its waits are the application's
// time between requests. A budget shorter than the link's round trip then
// stops the first kind of round and keeps the second. (Timing the waits
// would not do: one that outlasts a round can only be timed by its reader,
// after the wake-up that polling is there to avoid, which makes it look
// longer than the budget when it was not.)

// A Poller polls a set of sockets before the goroutines reading them sleep.
// Its zero value is not usable; make one with NewPoller.
type Poller struct {
	budget time.Duration // how long a round may last
	gate   atomic.Pointer[func() bool]

	polling atomic.Bool // one goroutine polls at a time

	mu   sync.Mutex
	set  []*Conn       // one entry per Conn added
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
	rc.poller, rc.fd = p, fd
	rc.score.Store(scoreAll)
	p.mu.Lock()
	p.set = append(p.set, rc)
	p.mu.Unlock()
	return true
}

// remove takes c out of the set.
func (p *Poller) remove(c *Conn) {
	p.mu.Lock()
	for i, x := range p.set {
		if x == c {
			p.set = append(p.set[:i], p.set[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
}

// PollStats counts the rounds of polling and how they ended.
type PollStats struct {
	Sockets int    `json:"sockets"` // in the set now
	Polling int    `json:"polling"` // of those, the ones whose readers poll now (see Conn.tally)
	Rounds  uint64 `json:"rounds"`  // rounds of polling begun
	Data    uint64 `json:"data"`    // ended by data on the poller's own socket
	Other   uint64 `json:"other"`   // ended by data on another socket of the set
	Expired uint64 `json:"expired"` // ended by the budget running out
}

// Stats returns what the Poller has done so far.
func (p *Poller) Stats() PollStats {
	st := PollStats{
		Rounds:  p.rounds.Load(),
		Data:    p.data.Load(),
		Other:   p.other.Load(),
		Expired: p.expired.Load(),
	}
	p.mu.Lock()
	st.Sockets = len(p.set)
	for _, c := range p.set {
		if c.score.Load() >= scorePoll {
			st.Polling++
		}
	}
	p.mu.Unlock()
	return st
}

// poll is called by c's reader, which found c empty. It reports whether c
// has data now; false means the caller is to park on the runtime's poller
// (another goroutine polls, the gate is shut, c's rounds run out too often,
// the budget ran out, or another socket has data for a parked goroutine).
func (p *Poller) poll(c *Conn) bool {
	if !p.polling.CompareAndSwap(false, true) {
		return false
	}
	defer p.polling.Store(false)
	if g := p.gate.Load(); g != nil && !(*g)() {
		return false
	}
	if c.score.Load() < scorePoll {
		if c.skipped++; c.skipped < probeEvery {
			return false
		}
		c.skipped = 0 // a probe
	}
	p.rounds.Add(1)
	p.mu.Lock()
	p.scan = p.scan[:0]
	for _, x := range p.set {
		p.scan = append(p.scan, unix.PollFd{Fd: x.fd, Events: unix.POLLIN})
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
			c.tally(true)
			for i := range p.scan {
				if p.scan[i].Fd == c.fd && p.scan[i].Revents != 0 {
					p.data.Add(1)
					return true
				}
			}
			p.other.Add(1)
			return false
		}
		if e != 0 && e != syscall.EINTR || time.Now().After(end) {
			c.tally(false)
			p.expired.Add(1)
			return false
		}
	}
}

// A Conn's score is a moving average of how its reader's rounds end, in
// parts of scoreAll: each round moves it 1/scoreStep of the way towards
// scoreAll when data came, towards zero when the budget ran out. Below
// scorePoll (from the eleventh round in a row to run out; a machine's
// hiccup runs out a few), half or more of the recent rounds have run out,
// each costing the budget and then the wake-up as well, about what the
// others saved: the reader then begins only every probeEvery-th round, and
// one that finds data opens them again (half way between scorePoll and
// scoreAll: seven more rounds in a row that run out shut them).
const (
	scoreAll   = 1 << 10
	scoreStep  = 16
	scorePoll  = scoreAll / 2
	probeEvery = 16
)

// tally counts a round of c's reader that found data, or ran out. Only the
// goroutine that polls calls it.
func (c *Conn) tally(found bool) {
	s := c.score.Load()
	switch {
	case found && s < scorePoll:
		s = (scorePoll + scoreAll) / 2 // a probe found data
	case found:
		s += (scoreAll - s) / scoreStep
	default:
		s -= s / scoreStep
	}
	c.score.Store(s)
}
