package kernel

import "testing"

func TestRescuerFixed(t *testing.T) {
	for rel, want := range map[string]bool{
		"6.1.0-57-amd64":    false,
		"6.18.44-fc-v1147":  false,
		"6.19.3":            false,
		"7.0":               true,
		"7.0.1-1-amd64":     true,
		"7.1rc2":            true,
		"8.2.0":             true,
		"garbage":           false,
		"":                  false,
		"x.y":               false,
		"5.10.0-30-generic": false,
	} {
		if got := rescuerFixed(rel); got != want {
			t.Errorf("rescuerFixed(%q) = %v, want %v", rel, got, want)
		}
	}
}
