package server_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/dstproject/dst/server"
	"github.com/dstproject/dst/wire"
)

// openFlags opens a queue on export name with QUEUE flags f, bound to
// sess, and returns it, or the ERROR that refused it.
func (e *env) openFlags(sess *ctl, name string, f wire.QueueFlags) (*client, *wire.ErrorMsg) {
	e.t.Helper()
	qm := sess.queueMsg(name)
	qm.Flags = f
	st, typ, body := e.queue(sess.key, qm)
	if typ == wire.MsgError {
		em, err := wire.DecodeError(body)
		if err != nil {
			e.t.Fatal(err)
		}
		st.Close()
		return nil, &em
	}
	o, err := wire.DecodeOpened(body)
	if typ != wire.MsgOpened || err != nil {
		e.t.Fatalf("QUEUE %q: %v, %v", name, typ, err)
	}
	c := &client{t: e.t, st: st, info: o.Export, pending: make(map[uint64]chan result), closed: make(chan struct{})}
	go c.readLoop()
	return c, nil
}

// TestWriterLease: one read-write attachment at a time. A second writer is
// refused with EBUSY naming the holder, while readers join; the holder's
// reconnect keeps the lease; a take-over fences the holder, whose later
// sessions are refused and whose writes never land; BYE frees the lease at
// once, a silent holder's only after the grace; a shared export takes
// several writers.
func TestWriterLease(t *testing.T) {
	e := newEnvConfig(t, &server.Config{LeaseGrace: 300 * time.Millisecond},
		exportSpec{name: "disk", size: 1 << 20, leased: true}, exportSpec{name: "gfs", size: 1 << 20})
	p := func(c byte) []byte { return bytes.Repeat([]byte{c}, 4096) }
	session := func(id byte, epoch uint64) *ctl {
		c := e.connect()
		if _, typ, _ := hello(t, c, wire.Identity{id}, epoch); typ != wire.MsgServerInfo {
			t.Fatalf("HELLO of attachment %d epoch %d: %v", id, epoch, typ)
		}
		return c
	}

	a1 := session(1, 1)
	qa, _ := e.openFlags(a1, "disk", 0)
	must(t, qa.write(0, p('a'), 0), wire.StatusOK, "the holder's write")

	b := session(2, 1)
	if _, em := e.openFlags(b, "disk", 0); em == nil || em.Status != wire.StatusEBUSY ||
		!strings.Contains(em.Message, `"disk" is held for writing by test (`) || !strings.Contains(em.Message, "since") {
		t.Fatalf("a second writer: %+v", em)
	}
	r, em := e.openFlags(b, "disk", wire.QueueReadOnly)
	if em != nil || r.info.Flags&wire.ExportReadOnly == 0 {
		t.Fatalf("a reader alongside the writer: %+v, flags %v", em, r.info.Flags)
	}
	must(t, r.write(0, p('r'), 0), wire.StatusEPERM, "a write on a read-only queue")
	if got, st := r.read(0, 4096); st != wire.StatusOK || !bytes.Equal(got, p('a')) {
		t.Fatalf("the reader reads %v", st)
	}
	if st := e.srv.Status(); st.Exports[0].Writer == "" || !strings.HasPrefix(st.Exports[0].Writer, "test (") {
		t.Errorf("serve status: writer %q", st.Exports[0].Writer)
	}

	// The holder reconnects (a new epoch): still the holder.
	a2 := session(1, 2)
	qa2, em := e.openFlags(a2, "disk", 0)
	if em != nil {
		t.Fatalf("the holder's next epoch: %+v", em)
	}
	must(t, qa2.write(0, p('A'), 0), wire.StatusOK, "the holder's write at epoch 2")

	// B takes over: A is fenced, and stays out.
	qb, em := e.openFlags(b, "disk", wire.QueueTakeOver)
	if em != nil {
		t.Fatalf("take-over: %+v", em)
	}
	select {
	case <-qa2.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the old holder's queue is still open after the take-over")
	}
	must(t, qb.write(0, p('b'), 0), wire.StatusOK, "the new holder's write")
	a3 := session(1, 3)
	if _, em := e.openFlags(a3, "disk", 0); em == nil || em.Status != wire.StatusEBUSY {
		t.Fatalf("the old holder after the take-over: %+v", em)
	}
	if !bytes.Equal(e.mem["disk"].Bytes()[:4096], p('b')) {
		t.Fatal("the data is not the new holder's")
	}

	// B says BYE and goes: C writes at once.
	bye(t, b)
	qb.st.Close()
	b.mux.Close()
	c := session(3, 1)
	deadline := time.Now().Add(5 * time.Second)
	var qc *client
	for qc == nil {
		if qc, em = e.openFlags(c, "disk", 0); em != nil && time.Now().After(deadline) {
			t.Fatalf("a writer after the holder said BYE: %+v", em)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if time.Until(deadline) < 4*time.Second {
		t.Errorf("the lease took %v to free after BYE", 5*time.Second-time.Until(deadline))
	}

	// C vanishes without BYE: D waits out the grace.
	qc.st.Close()
	c.mux.Close()
	d := session(4, 1)
	gone := time.Now()
	if _, em := e.openFlags(d, "disk", 0); em == nil || em.Status != wire.StatusEBUSY {
		t.Fatalf("a writer right after the holder vanished: %+v", em)
	}
	for {
		if _, em := e.openFlags(d, "disk", 0); em == nil {
			break
		}
		if time.Since(gone) > 5*time.Second {
			t.Fatal("the lease never lapsed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if waited := time.Since(gone); waited < 250*time.Millisecond {
		t.Errorf("the lease lapsed after %v, before the 300ms grace", waited)
	}

	// A shared export takes two writers.
	g1, em1 := e.openFlags(a3, "gfs", 0)
	g2, em2 := e.openFlags(d, "gfs", 0)
	if em1 != nil || em2 != nil || g1.info.Flags&wire.ExportShared == 0 {
		t.Fatalf("two writers on a shared export: %+v %+v", em1, em2)
	}
	must(t, g1.write(0, p('1'), 0), wire.StatusOK, "writer 1 on the shared export")
	must(t, g2.write(4096, p('2'), 0), wire.StatusOK, "writer 2 on the shared export")
}

// bye sends BYE on sess's control stream.
func bye(t *testing.T, sess *ctl) {
	t.Helper()
	sess.mu.Lock()
	st := sess.ctlStream
	sess.mu.Unlock()
	if _, err := st.Write(wire.AppendMessage(nil, wire.MsgBye, nil)); err != nil {
		t.Fatal(err)
	}
}
