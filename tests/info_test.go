package tests

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// nbdinfoExport runs `nbdinfo --json` and returns its one export.
func nbdinfoExport(t testing.TB, uri string) map[string]any {
	t.Helper()
	out := run(t, "nbdinfo", "--json", uri)
	var doc struct {
		Exports []map[string]any `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("tests: nbdinfo --json %s: %v\n%s", uri, err, out)
	}
	if len(doc.Exports) != 1 {
		t.Fatalf("tests: nbdinfo --json %s: %d exports, want 1\n%s", uri, len(doc.Exports), out)
	}
	return doc.Exports[0]
}

func jsonInt(t testing.TB, m map[string]any, key string) (int64, bool) {
	t.Helper()
	v, ok := m[key]
	if !ok {
		return 0, false
	}
	f, ok := v.(float64)
	if !ok {
		t.Fatalf("tests: nbdinfo %s = %v (%T), want a number", key, v, v)
	}
	return int64(f), true
}

// checkFlags fails for every key whose value is not the wanted bool.
func checkFlags(t testing.TB, what string, m map[string]any, want map[string]bool) {
	t.Helper()
	for _, k := range slices.Sorted(maps.Keys(want)) {
		got, ok := m[k].(bool)
		if !ok || got != want[k] {
			t.Errorf("tests: %s: nbdinfo %s = %v, want %v", what, k, m[k], want[k])
		}
	}
}

// blockSizes checks the block size constraints nbdinfo reports for consistency
// with each other and the export size, and returns them.
func blockSizes(t testing.TB, what string, m map[string]any, size int64) (bmin, pref, bmax int64, ok bool) {
	t.Helper()
	bmin, ok1 := jsonInt(t, m, "block_size_minimum")
	pref, ok2 := jsonInt(t, m, "block_size_preferred")
	bmax, ok3 := jsonInt(t, m, "block_size_maximum")
	if !ok1 || !ok2 || !ok3 {
		return 0, 0, 0, false
	}
	pow2 := func(v int64) bool { return v > 0 && v&(v-1) == 0 }
	if !pow2(bmin) || !pow2(pref) || bmin > 64<<10 || pref < bmin || bmax < pref || bmax > 32<<20 {
		t.Errorf("tests: %s: inconsistent block sizes min %d preferred %d max %d", what, bmin, pref, bmax)
	}
	if size%bmin != 0 {
		t.Errorf("tests: %s: size %d is not a multiple of the minimum block size %d", what, size, bmin)
	}
	return bmin, pref, bmax, true
}

// containsNumber reports whether n appears in s as a whole decimal number.
func containsNumber(s string, n int64) bool {
	return regexp.MustCompile(`(^|[^0-9])` + strconv.FormatInt(n, 10) + `([^0-9]|$)`).MatchString(s)
}

func TestNBDInfo(t *testing.T) {
	requireTool(t, "nbdinfo")
	s := startServer(t,
		&export{Name: "disk", Size: 64 << 20},
		&export{Name: "ro", Size: 16 << 20, ReadOnly: true})
	info := ""
	if !standin() {
		info = s.info(t)
	}
	for _, e := range s.exports {
		a := s.attach(t, e.Name)
		what := "export " + e.Name
		m := nbdinfoExport(t, a.uri())
		if got, _ := jsonInt(t, m, "export-size"); got != e.Size {
			t.Errorf("tests: %s: nbdinfo export-size %d, want %d", what, got, e.Size)
		}
		want := map[string]bool{"is_read_only": e.ReadOnly, "can_flush": true}
		if !e.ReadOnly {
			for _, k := range []string{"can_fua", "can_trim", "can_zero", "can_multi_conn"} {
				want[k] = true
			}
		}
		checkFlags(t, what, m, want)

		bmin, pref, bmax, ok := blockSizes(t, what, m, e.Size)
		switch {
		case !ok && !standin():
			t.Errorf("tests: %s: nbdinfo shows no block size constraints (NBD_INFO_BLOCK_SIZE)", what)
		case ok && !standin():
			for _, v := range []int64{bmin, pref, bmax} {
				if !containsNumber(info, v) {
					t.Errorf("tests: %s: block size %d (min %d, preferred %d, max %d) missing from dst info:\n%s",
						what, v, bmin, pref, bmax, info)
				}
			}
		}

		// The same export by name must look the same.
		named := nbdinfoExport(t, a.namedURI())
		if fmt.Sprint(named["export-size"]) != fmt.Sprint(m["export-size"]) ||
			named["is_read_only"] != m["is_read_only"] {
			t.Errorf("tests: %s by name differs from the default export: %v vs %v", what, named, m)
		}

		list := run(t, "nbdinfo", "--list", "--json", a.uri())
		var doc struct {
			Exports []struct {
				Name string `json:"export-name"`
			} `json:"exports"`
		}
		if err := json.Unmarshal([]byte(list), &doc); err != nil {
			t.Fatalf("tests: nbdinfo --list --json: %v\n%s", err, list)
		}
		var names []string
		for _, x := range doc.Exports {
			names = append(names, x.Name)
		}
		if !standin() && !slices.Contains(names, e.Name) {
			t.Errorf("tests: %s: nbdinfo --list shows %q, want it to name %q", what, names, e.Name)
		}
	}
}

func TestDstInfo(t *testing.T) {
	requireDst(t)
	s := startServer(t,
		&export{Name: "alpha", Size: 48 << 20},
		&export{Name: "beta", Size: 8 << 20, ReadOnly: true})
	out := s.info(t)
	t.Logf("dst info:\n%s", out)
	lines := strings.Split(out, "\n")
	lineOf := func(name string) string {
		for _, l := range lines {
			if regexp.MustCompile(`(^|\W)` + name + `(\W|$)`).MatchString(l) {
				return l
			}
		}
		return ""
	}
	lower := strings.ToLower(out)
	roMark := regexp.MustCompile(`read-only|readonly|\bro\b`)
	for _, e := range s.exports {
		l := strings.ToLower(lineOf(e.Name))
		if l == "" {
			t.Errorf("tests: dst info does not name export %q", e.Name)
			continue
		}
		if !containsNumber(l, e.Size) && !strings.Contains(l, fmt.Sprintf("%d.0mib", e.Size>>20)) {
			t.Errorf("tests: dst info line for %q does not show its size (%d bytes)", e.Name, e.Size)
		}
		if roMark.MatchString(l) != e.ReadOnly {
			t.Errorf("tests: dst info line for %q: read-only marked %v, want %v", e.Name, !e.ReadOnly, e.ReadOnly)
		}
	}
	if !strings.Contains(lower, "flush") {
		t.Errorf("tests: dst info shows no flags (expected at least flush)")
	}
	if !regexp.MustCompile(`chacha|aes`).MatchString(lower) {
		t.Errorf("tests: dst info does not name the cipher")
	}
}
