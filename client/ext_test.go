package client

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/dstproject/dst/client/nbd"
	"github.com/dstproject/dst/crypto"
)

func TestExternalQD1(t *testing.T) {
	if os.Getenv("EXT") == "" {
		t.Skip()
	}
	k, _ := crypto.LoadPrivateKey("/tmp/e2e/c.key")
	sk, _ := crypto.LoadPrivateKey("/tmp/e2e/s.key")
	a, err := Attach(context.Background(), &AttachConfig{Config: Config{Server: "127.0.0.1:7701", PrivateKey: k, ServerKey: sk.Public()}, Export: "disk0", Queues: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	buf := make([]byte, 4096)
	done := make(chan error, 1)
	cb := func(_ *nbd.Request, err error) { done <- err }
	n := 20000
	start := time.Now()
	for i := 0; i < n; i++ {
		a.Submit(nbd.NewRequest(nbd.CmdRead, 0, uint64(i%1000)*4096, 4096, buf, cb))
		<-done
	}
	t.Logf("%.1f us per op", float64(time.Since(start).Microseconds())/float64(n))
}
