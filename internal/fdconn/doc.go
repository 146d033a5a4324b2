// Package fdconn turns a connected socket into a net.Conn that reads and
// writes with blocking system calls on its own file descriptor, bypassing
// Go's network poller.
//
// Why: on the data path every request crosses sockets twice per process,
// and a read parked in the poller is woken through epoll and a futex hand-off
// between threads. On virtual machines those wake-ups dominate: on the 2-vCPU
// development VM a 4 KiB request/response between two Go processes took
// 45-54 µs through the poller and 9 µs with blocking reads (measured with a
// ping-pong pair of programs, the same bytes in both). A blocking read costs
// a thread per connection, which is cheap next to that for a block device
// with a handful of connections.
//
// Deadlines are kernel socket timeouts (SO_RCVTIMEO, SO_SNDTIMEO), set
// relative to the time of the call.
package fdconn
