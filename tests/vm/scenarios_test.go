package vm

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// disk is the usual export: sparse, small, since guest I/O under TCG runs
// at a few MB/s.
func disk(name string) exportSpec { return exportSpec{name: name, size: 128 << 20} }

func TestVMExt4(t *testing.T) {
	runScenario(t, scenario{
		script:  "ext4.sh",
		timeout: 3 * time.Minute,
		servers: []serverSpec{{name: "a", exports: []exportSpec{disk("disk")}}},
		check:   cleanOnServer,
	})
}

// TestVMExt4BusyPoll is TestVMExt4 with dst attach --busy-poll: the
// kernel's socket joins the poll set, and ext4 still comes out whole.
func TestVMExt4BusyPoll(t *testing.T) {
	runScenario(t, scenario{
		script:  "ext4.sh",
		timeout: 3 * time.Minute,
		servers: []serverSpec{{name: "a", exports: []exportSpec{disk("disk")}}},
		env:     map[string]string{"BUSY_POLL": "100us"},
		check:   cleanOnServer,
	})
}

// cleanOnServer checks that the filesystem the guest wrote is on server
// a's export "disk", clean.
func cleanOnServer(t *testing.T, h *host) {
	f := h.servers["a"].files["disk"]
	if out, err := exec.Command("e2fsck", "-f", "-n", f).CombinedOutput(); err != nil {
		t.Errorf("host e2fsck of the backing file: %v\n%s", err, out)
	}
}

func TestVMFlush(t *testing.T) {
	runScenario(t, scenario{
		script:  "flush.sh",
		timeout: 3 * time.Minute,
		servers: []serverSpec{{name: "a", exports: []exportSpec{disk("disk")}, countFlushes: true}},
	})
}

func TestVMServerKill(t *testing.T) {
	runScenario(t, scenario{
		script:  "serverkill.sh",
		timeout: 4 * time.Minute,
		servers: []serverSpec{{name: "a", exports: []exportSpec{disk("disk")}}},
	})
}

func TestVMAttachKill(t *testing.T) {
	runScenario(t, scenario{
		script:  "attachkill.sh",
		timeout: 4 * time.Minute,
		servers: []serverSpec{{name: "a", exports: []exportSpec{disk("disk")}}},
	})
}

// TestVMResize grows an export under a mounted ext4: the device follows,
// resize2fs grows the file system online, and the new space is used.
func TestVMResize(t *testing.T) {
	runScenario(t, scenario{
		script:  "resize.sh",
		timeout: 4 * time.Minute,
		servers: []serverSpec{{name: "a", exports: []exportSpec{disk("disk")}}},
	})
}

func TestVMDetach(t *testing.T) {
	ro := disk("ro")
	ro.readOnly = true
	runScenario(t, scenario{
		script:  "detach.sh",
		timeout: 3 * time.Minute,
		servers: []serverSpec{{name: "a", exports: []exportSpec{disk("disk"), ro}}},
	})
}

// TestVMScript runs any guest script against the usual server "a" (exports
// disk and ro), for developing scenarios: DST_VM_SCRIPT=path/to/x.sh.
// TestVMMirror builds a dm mirror over two dst devices with dst-mirror,
// kills one leg's server for longer than its io-timeout, and checks the
// mirror degrades, keeps serving, and resyncs to identical legs after
// the repair.
func TestVMMirror(t *testing.T) {
	small := func(n string) exportSpec { return exportSpec{name: n, size: 64 << 20} }
	runScenario(t, scenario{
		script:  "mirror.sh",
		timeout: 6 * time.Minute,
		files:   []string{"scripts/dst-mirror"},
		servers: []serverSpec{
			{name: "a", exports: []exportSpec{small("disk")}},
			{name: "b", exports: []exportSpec{small("disk")}},
		},
	})
}

// TestVMRaid1 builds dst-mirror's default raid1 (dm-raid with metadata and
// a write-intent bitmap) over two dst devices, kills one leg's server,
// and checks that the repair copies only what was written meanwhile.
func TestVMRaid1(t *testing.T) {
	leg := func(n string) exportSpec { return exportSpec{name: n, size: 256 << 20} }
	runScenario(t, scenario{
		script:  "raid1.sh",
		timeout: 8 * time.Minute,
		files:   []string{"scripts/dst-mirror"},
		servers: []serverSpec{
			{name: "a", exports: []exportSpec{leg("disk")}},
			{name: "b", exports: []exportSpec{leg("disk")}},
		},
	})
}

// TestVMFreshDevice is the guard against the nbd driver's receive-work
// starvation: attach, partition scan, a burst of pinned O_DIRECT reads and
// detach, with real-time spinners on every CPU while the device starts.
// CI runs 5 cycles; DST_VM_LONG=1 (scripts/test --long) runs 100, and
// DST_VM_CYCLES as many as it says.
// DST_VM_QUEUES passes --queues, to show what more sockets do on a
// kernel without the workqueue fix; DST_VM_SPIN_CPUS and
// DST_VM_KTHREADD_CPU choose the forcing recipe (guest/freshdev.sh).
func TestVMFreshDevice(t *testing.T) {
	cycles, timeout := "5", 4*time.Minute
	if os.Getenv("DST_VM_LONG") == "1" {
		cycles, timeout = "100", 40*time.Minute
	}
	if n, err := strconv.Atoi(os.Getenv("DST_VM_CYCLES")); err == nil && n > 0 {
		cycles, timeout = strconv.Itoa(n), time.Duration(n)*24*time.Second+time.Minute
	}
	runScenario(t, scenario{
		script:  "freshdev.sh",
		timeout: timeout,
		servers: []serverSpec{{name: "a", exports: []exportSpec{disk("disk")}}},
		env: map[string]string{"CYCLES": cycles, "QUEUES": os.Getenv("DST_VM_QUEUES"),
			"SPIN_CPUS": os.Getenv("DST_VM_SPIN_CPUS"), "KTHREADD_CPU": os.Getenv("DST_VM_KTHREADD_CPU")},
	})
}

// TestVMSystemd installs dst's Debian package (scripts/package) in a
// Debian root file system and runs dst-serve and dst-attach@data under a
// real systemd across a reboot, then purges the package
// (guest/systemd.sh).
func TestVMSystemd(t *testing.T) {
	runScenario(t, scenario{
		script:  "systemd.sh",
		timeout: 6 * time.Minute,
		systemd: true,
		deb:     true,
	})
}
