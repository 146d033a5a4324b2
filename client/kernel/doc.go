// Package kernel attaches an NBD export to a Linux /dev/nbdN through the
// kernel's generic-netlink "nbd" family (include/uapi/linux/nbd-netlink.h)
// and serves the kernel's requests with the same transmission engine as the
// userspace NBD front end (client/nbd).
//
// The package owns the netlink messages (netlink.go: CONNECT, RECONFIGURE,
// DISCONNECT, STATUS and their attributes, encoded and decoded over []byte so
// they are tested without a kernel) and a device's lifetime (device.go):
// one AF_UNIX socketpair per queue, the kernel holding one end of each and
// client/nbd.ServeTransmission serving the other. The kernel speaks only the
// transmission phase on these sockets; there is no handshake.
//
// state.go keeps what a serving process records about its device (Store,
// State) and decides, from that record and the kernel's view, whether a
// new attach connects a device or takes one back (Decide).
//
// # Restart without unmounting
//
// The device is configured with a dead-connection timeout. When the serving
// process dies its socket ends close, the kernel marks the connections dead
// and holds (requeues) the I/O it had in flight. A new process calls
// Reconfigure within the timeout with fresh sockets, one per dead
// connection, and the kernel resends what it held: the filesystem above
// sees a pause, not an error. Requests the dead process had been sent are
// resent at the kernel's next look at them (Config.Recheck), where the
// kernel allows it, or else at its NBD timeout (Config.Timeout). The backend identifier (e.g.
// "dst:HOST:PORT/EXPORT") is passed on both calls so the kernel refuses to
// reconfigure a device onto a different export.
package kernel
