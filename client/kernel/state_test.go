package kernel

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestStore(t *testing.T) {
	st := Store{Dir: t.TempDir() + "/run"}
	if _, err := st.Read(3); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Read of a missing record: %v, want ErrNotExist", err)
	}
	want := &State{Device: "/dev/nbd3", Server: "h:7000", Export: "disk", PID: 42, Queues: 2, Started: "now"}
	if err := st.Write(3, want); err != nil {
		t.Fatal(err)
	}
	got, err := st.Read(3)
	if err != nil || *got != *want {
		t.Fatalf("Read = %+v, %v; want %+v", got, err, want)
	}
	st.Remove(3, 43) // another process's exit must not remove it
	if _, err := st.Read(3); err != nil {
		t.Fatalf("Remove with another pid removed the record: %v", err)
	}
	st.Remove(3, 42)
	if _, err := st.Read(3); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record still there after Remove by its pid: %v", err)
	}
	if err := os.WriteFile(st.path(4), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Read(4); err == nil || !strings.Contains(err.Error(), "nbd4.json") {
		t.Fatalf("a corrupt record: %v, want an error naming the file", err)
	}
}

func TestAlive(t *testing.T) {
	if (&State{PID: 0}).Alive() {
		t.Error("pid 0 alive")
	}
	// The test binary is not named dst*: a recycled pid is not a dst.
	if (&State{PID: os.Getpid()}).Alive() {
		t.Error("a process not named dst counted as a live dst attach")
	}
	if (&State{PID: 1 << 22}).Alive() {
		t.Error("a pid beyond pid_max counted as alive")
	}
}

func TestDecide(t *testing.T) {
	want := Want{Server: "h:7000", Export: "disk", Queues: 4}
	saved := &State{Server: "h:7000", Export: "disk", PID: 9, Queues: 1}
	dead := func(*State) bool { return false }
	live := func(*State) bool { return true }
	for _, tt := range []struct {
		name      string
		connected bool
		saved     *State
		readErr   error
		alive     func(*State) bool
		plan      Plan
		err       string
	}{
		{name: "free device", plan: Plan{Queues: 4}, readErr: os.ErrNotExist, alive: live},
		{name: "dead attach, same export", connected: true, saved: saved, alive: dead,
			plan: Plan{Reconfigure: true, Queues: 1}},
		{name: "record without queues", connected: true, alive: dead,
			saved: &State{Server: "h:7000", Export: "disk"}, plan: Plan{Reconfigure: true, Queues: 4}},
		{name: "another program", connected: true, readErr: os.ErrNotExist, alive: dead,
			err: "attached by another program"},
		{name: "live attach", connected: true, saved: saved, alive: live, err: "served by dst attach (pid 9)"},
		{name: "other export", connected: true, alive: dead,
			saved: &State{Server: "h:7000", Export: "other"}, err: "waits for other on h:7000"},
		{name: "other server", connected: true, alive: dead,
			saved: &State{Server: "g:7000", Export: "disk"}, err: "waits for disk on g:7000"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Decide(5, tt.connected, tt.saved, tt.readErr, want, tt.alive)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "/dev/nbd5") {
					t.Fatalf("Decide: %v, want an error naming /dev/nbd5 with %q", err, tt.err)
				}
				return
			}
			if err != nil || p != tt.plan {
				t.Fatalf("Decide = %+v, %v; want %+v", p, err, tt.plan)
			}
		})
	}
}
