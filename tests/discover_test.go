package tests

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dstproject/dst/crypto"
	"github.com/dstproject/dst/internal/discover"
)

// spoof announces key at addr (HOST:PORT) and accepts connections there,
// answering each with a few bytes and closing it, until SIGTERM: a host
// that claims to be another's server.
func spoof(key, addr string) int {
	pk, err := crypto.LoadPublicKey(key)
	if err != nil {
		fmt.Fprintln(os.Stderr, "spoof:", err)
		return 1
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "spoof:", err)
		return 1
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 4096)
			n, _ := c.Read(buf)
			fmt.Fprintf(os.Stderr, "spoof: a client sent %d bytes\n", n)
			c.Write([]byte("not a server"))
			c.Close()
		}
	}()
	ta := l.Addr().(*net.TCPAddr)
	stop, err := discover.Announce(pk, ta.Port, []net.IP{ta.IP})
	if err != nil {
		fmt.Fprintln(os.Stderr, "spoof:", err)
		return 1
	}
	defer stop()
	fmt.Fprintln(os.Stderr, "spoof: announcing")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
}

// TestDiscovery: in network namespaces on a bridge (a LAN of their own),
// two servers announce themselves with --announce and a third host
// announces the first server's key at its own address. dst discover lists
// all three; dst attach --server-key KEY auto reaches the server that
// holds KEY, whichever announcement it tries first: the spoofer fails the
// handshake and is never sent anything it could read.
func TestDiscovery(t *testing.T) {
	requireDst(t)
	requireRoot(t)
	requireTool(t, "ip", "nbdcopy")
	tag := fmt.Sprintf("%d", os.Getpid()%100000)
	// The spoofer has the lowest address, so a client tries it first.
	br, nss := "dstbr"+tag, []string{"dstsp" + tag, "dsts1" + tag, "dsts2" + tag, "dstcl" + tag}
	ipRun := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ipRun("netns", "add", br)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", br).Run() })
	ipRun("-n", br, "link", "add", "br0", "type", "bridge")
	ipRun("-n", br, "link", "set", "br0", "up")
	for i, ns := range nss {
		ipRun("netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		peer := fmt.Sprintf("p%d", i)
		ipRun("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", br)
		ipRun("-n", br, "link", "set", peer, "master", "br0", "up")
		ipRun("-n", ns, "addr", "add", fmt.Sprintf("10.91.0.%d/24", i+1), "dev", "eth0")
		ipRun("-n", ns, "link", "set", "eth0", "up", "multicast", "on")
		ipRun("-n", ns, "link", "set", "lo", "up")
		ipRun("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
	}
	dir := t.TempDir()
	t.Setenv("DST_RUN_DIR", shortTempDir(t))
	clientKey, clientPub := keygen(t, dir, "client")
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, []byte(clientPub+" client\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var pubs [2]string
	var serves [2]*proc
	for i := range 2 {
		key, pub := keygen(t, dir, fmt.Sprintf("server%d", i+1))
		pubs[i] = pub
		img := filepath.Join(dir, fmt.Sprintf("disk%d.img", i+1))
		writeRandomFile(t, img, 4<<20)
		serves[i] = startProc(t, fmt.Sprintf("dst serve %d", i+1), "ip", "netns", "exec", nss[i+1], dstBin, "serve",
			"--listen", fmt.Sprintf("10.91.0.%d:7700", i+2), "--key", key, "--authorized-keys", authorized,
			"--export", "disk="+img, "--announce", "--status-socket", "none")
		if err := serves[i].waitFor("announcing", startTimeout, func() bool {
			return strings.Contains(serves[i].out.String(), "announcing on the local network")
		}); err != nil {
			t.Fatal(err)
		}
	}
	sp := exec.Command("ip", "netns", "exec", nss[0], os.Args[0])
	sp.Env = append(os.Environ(), "DST_TEST_SPOOF_KEY="+pubs[0], "DST_TEST_SPOOF_ADDR=10.91.0.1:7700")
	var spOut lockedBuffer
	sp.Stdout, sp.Stderr = &spOut, &spOut
	if err := sp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Process.Signal(syscall.SIGTERM); sp.Wait() })
	for deadline := time.Now().Add(startTimeout); !strings.Contains(spOut.String(), "spoof: announcing"); {
		if time.Now().After(deadline) {
			t.Fatalf("the spoofer did not start:\n%s", spOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	in := func(args ...string) (string, error) {
		return runErr(append([]string{"ip", "netns", "exec", nss[3]}, args...)...)
	}
	out, err := in(dstBin, "discover")
	t.Logf("dst discover:\n%s", out)
	if err != nil {
		t.Fatalf("dst discover: %v", err)
	}
	for _, want := range []string{"10.91.0.1:7700  " + pubs[0], "10.91.0.2:7700  " + pubs[0], "10.91.0.3:7700  " + pubs[1]} {
		if !strings.Contains(out, want) {
			t.Errorf("dst discover lacks %q", want)
		}
	}

	// dst info auto, pinned to server 1's key: it tries the spoofer first
	// (the lower address), whose handshake fails, then server 1.
	out, err = in(dstBin, "info", "--key", clientKey, "--server-key", pubs[0], "auto")
	t.Logf("dst info auto:\n%s", out)
	if err != nil || !strings.Contains(out, "(10.91.0.2:7700)") {
		t.Fatalf("dst info auto: %v", err)
	}
	if !strings.Contains(out, "a server announcing the pinned key failed") || !strings.Contains(out, "addr=10.91.0.1:7700") {
		t.Errorf("dst info auto did not try, and reject, the spoofer first")
	}
	sock := filepath.Join(shortTempDir(t), "nbd.sock")
	att := startProc(t, "dst attach auto", "ip", "netns", "exec", nss[3], dstBin, "attach", "--key", clientKey,
		"--server-key", pubs[1], "auto", "disk", "--nbd-listen", "unix:"+sock)
	if err := att.waitFor("NBD socket", startTimeout, func() bool { return isSocket(sock) }); err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(dir, "back")
	run(t, "nbdcopy", "nbd+unix:///disk?socket="+sock, back)
	sameContent(t, filepath.Join(dir, "disk2.img"), back, 4<<20)
	if !strings.Contains(att.out.String(), "addr=10.91.0.3:7700") {
		t.Errorf("dst attach auto did not report the server it found:\n%s", att.out.String())
	}
	// The spoofer got only the client's first handshake message, which is
	// sealed to the pinned key it does not hold.
	t.Logf("spoofer:\n%s", spOut.String())
	if !strings.Contains(spOut.String(), "spoof: a client sent") {
		t.Error("the spoofer was never tried")
	}
}
