// Package discover finds dst servers on the local network with multicast
// DNS (RFC 6762, DNS-SD service _dst._tcp) and announces them.
//
// An announcement carries the server's public key in its TXT record. That
// key is not trusted: it only says which announcements to try. A client
// that pins a key connects to the hosts announcing it, and the Noise IK
// handshake (which encrypts to the pinned key) succeeds only with the
// host that holds the private key, so a spoofed announcement costs a
// failed handshake and learns nothing: the client's first handshake
// message is readable only by the pinned key's owner.
package discover

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/hashicorp/mdns"
)

// Service is dst's DNS-SD service type.
const Service = "_dst._tcp"

// Announcement is a server found on the network, as it described itself.
type Announcement struct {
	Instance string
	Addr     string // HOST:PORT
	Key      string // the public key it claims, base64; unproven
	Version  string // protocol version it claims
}

// Announce advertises a server holding key, listening on port at ips,
// until stop is called. Each server names its instance and host after
// the host name and a random suffix, so several servers on one host (or
// in network namespaces sharing a host name) do not shadow each other.
func Announce(key crypto.PublicKey, port int, ips []net.IP) (stop func(), err error) {
	if len(ips) == 0 {
		return nil, fmt.Errorf("discover: no address to announce")
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "dst"
	}
	host, _, _ = strings.Cut(host, ".")
	var suffix [4]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return nil, err
	}
	name := host + "-" + hex.EncodeToString(suffix[:])
	txt := []string{"pk=" + key.String(), "v=3"}
	svc, err := mdns.NewMDNSService(name, Service, "", name+".local.", port, ips, txt)
	if err != nil {
		return nil, fmt.Errorf("discover: %w", err)
	}
	srv, err := mdns.NewServer(&mdns.Config{Zone: svc, Logger: quiet})
	if err != nil {
		return nil, fmt.Errorf("discover: %w", err)
	}
	return func() { srv.Shutdown() }, nil
}

// quiet drops the mdns package's own log lines (malformed packets from
// the network); errors that matter come back as values.
var quiet = log.New(io.Discard, "", 0)

// Browse lists the dst servers that answer within timeout.
func Browse(ctx context.Context, timeout time.Duration) ([]Announcement, error) {
	entries := make(chan *mdns.ServiceEntry, 64)
	params := mdns.DefaultParams(Service)
	params.Entries, params.Timeout, params.DisableIPv6, params.Logger = entries, timeout, true, quiet
	errc := make(chan error, 1)
	go func() { errc <- mdns.QueryContext(ctx, params); close(entries) }()
	var found []Announcement
	seen := map[string]bool{}
	for e := range entries {
		a := Announcement{Instance: strings.TrimSuffix(e.Name, "."+Service+".local.")}
		if e.AddrV4 == nil || e.Port == 0 {
			continue
		}
		a.Addr = net.JoinHostPort(e.AddrV4.String(), strconv.Itoa(e.Port))
		for _, f := range e.InfoFields {
			if k, ok := strings.CutPrefix(f, "pk="); ok {
				a.Key = k
			} else if v, ok := strings.CutPrefix(f, "v="); ok {
				a.Version = v
			}
		}
		if id := a.Addr + " " + a.Key; !seen[id] {
			seen[id] = true
			found = append(found, a)
		}
	}
	if err := <-errc; err != nil {
		return found, fmt.Errorf("discover: %w", err)
	}
	slices.SortFunc(found, func(x, y Announcement) int { return strings.Compare(x.Addr, y.Addr) })
	return found, nil
}

// Candidates returns the addresses of the servers announcing one of the
// pinned keys, for the caller to try in turn: only the handshake proves
// which one holds the key.
func Candidates(ctx context.Context, pins []crypto.PublicKey, timeout time.Duration) ([]string, error) {
	found, err := Browse(ctx, timeout)
	var addrs []string
	for _, a := range found {
		for _, p := range pins {
			if a.Key == p.String() {
				addrs = append(addrs, a.Addr)
				break
			}
		}
	}
	if len(addrs) == 0 {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("discover: no server on the local network announces the pinned key (%d dst servers answered)", len(found))
	}
	return addrs, nil
}

// LocalIPs lists the IPv4 addresses of the host's interfaces that are up,
// not loopback, and multicast capable: what a server listening on every
// address announces.
func LocalIPs() []net.IP {
	var ips []net.IP
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 || ifc.Flags&net.FlagMulticast == 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
				ips = append(ips, n.IP.To4())
			}
		}
	}
	return ips
}
