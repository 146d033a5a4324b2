package main

import (
	"context"
	"fmt"
	"time"

	"github.com/dstproject/dst/client/kernel"
)

func cmdDetach(ctx context.Context, args []string) error {
	fs := newFlagSet("detach", "/dev/nbdN")
	wait := fs.Duration("wait", 10*time.Second, "how long to wait for the serving dst attach to exit")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	index, err := kernel.ParsePath(resolveDevice(pos[0]))
	if err != nil {
		return usageError{err}
	}
	st, err := kernel.Status(index)
	if err != nil {
		return err
	}
	if !st.Connected {
		states().Remove(index, 0)
		return fmt.Errorf("%s is not attached", kernel.Path(index))
	}
	if err := kernel.Disconnect(index); err != nil {
		return err
	}
	// The attach process sees its sockets end and exits; wait for it so
	// that detach returning means the device is free.
	if s, err := states().Read(index); err == nil {
		deadline := time.Now().Add(*wait)
		for s.Alive() && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		if s.Alive() {
			return fmt.Errorf("%s is detached but dst attach (pid %d) has not exited after %v", kernel.Path(index), s.PID, *wait)
		}
		states().Remove(index, s.PID)
	}
	return nil
}
