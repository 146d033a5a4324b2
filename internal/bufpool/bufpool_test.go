package bufpool

import "testing"

func TestGetPut(t *testing.T) {
	for _, headroom := range []int{0, 24} {
		p := New(headroom)
		for _, n := range []int{0, 24, 4096 + headroom, 4097 + headroom, 1<<20 + headroom, MaxSize + headroom} {
			b := p.Get(n)
			if len(*b) != n || cap(*b) < n {
				t.Fatalf("headroom %d: Get(%d): len %d cap %d", headroom, n, len(*b), cap(*b))
			}
			if c := cap(*b) - headroom; c&(c-1) != 0 {
				t.Fatalf("headroom %d: Get(%d): cap %d is not a class size", headroom, n, cap(*b))
			}
			p.Put(b)
			if again := p.Get(n); len(*again) != n {
				t.Fatalf("headroom %d: reused Get(%d): len %d", headroom, n, len(*again))
			}
		}
		foreign := make([]byte, 1000)
		p.Put(&foreign) // not a class size: dropped, no panic
	}
}

func TestNoAllocs(t *testing.T) {
	p := New(24)
	p.Put(p.Get(4096))
	if n := testing.AllocsPerRun(100, func() { p.Put(p.Get(4096)) }); n != 0 {
		t.Fatalf("%v allocations per Get/Put", n)
	}
}
