//go:build vmscript

package vm

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestVMScript runs any guest script against server a, for developing
// scenarios; it is behind the vmscript build tag, so CI never sees it:
//
//	DST_VM_SCRIPT=x.sh go test -tags vmscript -run TestVMScript ./tests/vm/
func TestVMScript(t *testing.T) {
	script := os.Getenv("DST_VM_SCRIPT")
	if script == "" {
		t.Fatal("set DST_VM_SCRIPT to a guest script to run")
	}
	abs, err := filepath.Abs(script)
	if err != nil {
		t.Fatal(err)
	}
	ro := disk("ro")
	ro.readOnly = true
	runScenario(t, scenario{
		script:  abs,
		timeout: 5 * time.Minute,
		servers: []serverSpec{{name: "a", exports: []exportSpec{disk("disk"), ro}, countFlushes: true}},
	})
}
