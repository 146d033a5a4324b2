// Package client is dst's client engine: it dials a server, authenticates
// over the encrypted channel, learns the server's exports
// (autoconfiguration), and runs an Attachment that carries block requests
// to one export as transactions.
//
// An Attachment implements nbd.Device, so any NBD front end can sit on top
// of it: the local NBD socket of `dst attach --nbd-listen` (package
// client/nbd), and later the kernel's /dev/nbdX.
//
// Layers, from the socket up:
//
//	TCP ─ crypto.Conn (Noise IK records) ─ yamux session (internal/mux)
//	  ├─ control stream: HELLO → SERVER_INFO
//	  └─ data streams ("queues"): OPEN → OPENED, then requests and replies
//
// A queue's requests are written by whichever submitter finds it idle, or
// by its sendLoop under load, many to one stream write; its recvLoop
// matches replies to transactions by id.
package client
