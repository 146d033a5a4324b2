package kernel

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// State is what a serving dst attach records about its device, so that
// dst list can show it and a restarted attach can take the device back.
type State struct {
	Device string `json:"device"`
	Server string `json:"server"`
	Export string `json:"export"`
	// Name is the attachment's name (--name; the export's by default) and
	// Identity its export's, hex: dst udev makes /dev/dst/NAME and
	// /dev/disk/by-id/dst-IDENTITY from them.
	Name     string `json:"name,omitempty"`
	Identity string `json:"identity,omitempty"`
	// Attachment is the attachment id, hex: a restarted attach that takes
	// the device over continues the attachment, and its writer lease.
	Attachment string `json:"attachment,omitempty"`
	PID        int    `json:"pid"`
	Queues     int    `json:"queues"` // kernel sockets, which a reconfigure must match
	Started    string `json:"started"`
}

// Alive reports whether the recorded process still runs and is a dst:
// after a reboot or a crash its pid may belong to something else.
func (s *State) Alive() bool {
	if s.PID <= 0 {
		return false
	}
	if err := syscall.Kill(s.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(s.PID) + "/comm")
	return err != nil || strings.HasPrefix(strings.TrimSpace(string(comm)), "dst")
}

// Store keeps one State file per device, DIR/nbdN.json.
type Store struct {
	Dir string
}

func (st Store) path(index int) string {
	return filepath.Join(st.Dir, "nbd"+strconv.Itoa(index)+".json")
}

// Write records s for device index, replacing any earlier record at once
// (a reader sees the old file or the new one, never a part).
func (st Store) Write(index int, s *State) error {
	if err := os.MkdirAll(st.Dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := st.path(index) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, st.path(index))
}

// Read returns the record of device index.
func (st Store) Read(index int) (*State, error) {
	b, err := os.ReadFile(st.path(index))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", st.path(index), err)
	}
	return &s, nil
}

// Remove deletes the record of device index if it still names pid (0: any
// process), so an exiting attach never removes its successor's record.
func (st Store) Remove(index, pid int) {
	if s, err := st.Read(index); err == nil && (pid == 0 || s.PID == pid) {
		os.Remove(st.path(index))
	}
}

// Want is what an attach is about to serve on a device.
type Want struct {
	Server, Export string
	Queues         int // kernel sockets asked for
}

// Plan is how to bring a device up.
type Plan struct {
	// Reconfigure: the device is still configured and waits for a
	// restarted attach; hand it new sockets instead of connecting.
	Reconfigure bool
	// Queues is the number of kernel sockets to give it. A reconfigure
	// replaces the device's dead sockets one for one, so it takes the
	// count the device was connected with, whatever was asked.
	Queues int
}

// Decide plans the start of an attach on device index before anything is
// dialed. connected is the kernel's view of the device; saved and readErr
// are what Store.Read returned for it; alive tells whether a recorded
// process still serves it (State.Alive, replaced in tests). A device
// configured but served by nobody is one whose dst attach died and is
// taken back if it waits for the same server and export; any other
// configured device is refused with an error that says what to do.
func Decide(index int, connected bool, saved *State, readErr error, w Want, alive func(*State) bool) (Plan, error) {
	if !connected {
		return Plan{Queues: w.Queues}, nil
	}
	path := Path(index)
	if readErr != nil {
		return Plan{}, fmt.Errorf("%s is attached by another program (no dst state: %v)", path, readErr)
	}
	if alive(saved) {
		return Plan{}, fmt.Errorf("%s is served by dst attach (pid %d); run dst detach %s first", path, saved.PID, path)
	}
	if saved.Server != w.Server || saved.Export != w.Export {
		return Plan{}, fmt.Errorf("%s waits for %s on %s, not %s on %s; run dst detach %s first",
			path, saved.Export, saved.Server, w.Export, w.Server, path)
	}
	p := Plan{Reconfigure: true, Queues: saved.Queues}
	if p.Queues <= 0 {
		p.Queues = w.Queues // a record from before Queues was kept
	}
	return p, nil
}
