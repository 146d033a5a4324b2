// Package client is dst's client engine: it dials a server, authenticates
// over the encrypted channel, learns the server's exports
// (autoconfiguration), and runs an Attachment that carries block requests
// to one export as transactions.
//
// An Attachment takes Requests, the engine's own type (request.go); the
// NBD adapter (nbd.go) puts any NBD front end on top of it: the local NBD
// socket of `dst attach --nbd-listen` (package client/nbd) and the
// kernel's /dev/nbdX (package client/kernel).
//
// Layers, from the socket up:
//
//	control: TCP ─ crypto.Conn (Noise IK) ─ yamux (internal/mux)
//	         HELLO → SERVER_INFO (session token), PING/PONG (session.go)
//	queues:  TCP ─ crypto.Conn (Noise IK), one per queue connection
//	         QUEUE → OPENED, then requests and replies in records (queue.go)
//
// Files by job: attach.go (lifecycle), table.go (transactions and their
// states), submit.go (requests in, results out), gen.go (a generation of
// connections, reconnect and resend), replay.go (the replay log), dial.go.
// A queue's requests are sealed and written by whichever submitter finds
// its writer idle (internal/qconn); its recvLoop completes transactions
// and writes the NBD reply from the same goroutine.
package client
