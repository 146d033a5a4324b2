package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The operations tooling: scripts/install, the systemd units it installs
// (checked with systemd-analyze verify) and scripts/dst-mirror (its tables
// and repair logic, against a recording stand-in for dmsetup; the real
// kernel path is tests/vm's mirror scenario).

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// runInstall runs scripts/install --destdir dest with the given extra
// arguments, building dst itself.
func runInstall(t *testing.T, dest string, args ...string) string {
	t.Helper()
	argv := append([]string{filepath.Join(repoRoot(t), "scripts", "install"), "--destdir", dest}, args...)
	return run(t, argv...)
}

func TestInstall(t *testing.T) {
	requireTool(t, "go", "install")
	dest := t.TempDir()
	out := runInstall(t, dest)
	t.Log(out)

	for path, want := range map[string]os.FileMode{
		"usr/local/bin/dst":                            0o755,
		"usr/local/sbin/dst-mirror":                    0o755,
		"etc/systemd/system/dst-serve.service":         0o644,
		"etc/systemd/system/dst-attach@.service":       0o644,
		"etc/udev/rules.d/60-dst.rules":                0o644,
		"etc/dst/serve.toml":                           0o644,
		"etc/dst/authorized_keys":                      0o644,
		"etc/dst/server.key":                           0o600,
		"etc/dst/examples/serve.toml.example":          0o644,
		"etc/dst/examples/attach.conf.example":         0o644,
		"etc/dst/examples/serve-override.conf.example": 0o644,
	} {
		if got := mode(t, filepath.Join(dest, path)); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(dest, "etc/dst/attach")); err != nil || !fi.IsDir() {
		t.Errorf("etc/dst/attach is not a directory: %v", err)
	}

	// The printed public key is the installed server key's.
	bin := filepath.Join(dest, "usr/local/bin/dst")
	key, err := os.Open(filepath.Join(dest, "etc/dst/server.key"))
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	pub, err := runIn(key, bin, "pubkey")
	if err != nil {
		t.Fatalf("dst pubkey: %v\n%s", err, pub)
	}
	if pub = strings.TrimSpace(pub); !strings.Contains(out, pub) {
		t.Errorf("install did not print the server public key %s", pub)
	}

	// The installed config loads as dst serve will load it: known keys
	// only, and its relative key paths resolve inside /etc/dst.
	t.Run("config", func(t *testing.T) {
		cfg := filepath.Join(dest, "etc/dst/serve.toml")
		// An export path dst serve can open here; the example's
		// /var/lib/dst/disk0.img does not exist on the build host.
		disk := filepath.Join(t.TempDir(), "disk0.img")
		if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		text, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		test := filepath.Join(dest, "etc/dst/serve-test.toml")
		patched := strings.Replace(string(text), `"/var/lib/dst/disk0.img"`, `"`+disk+`"`, 1)
		patched = strings.Replace(patched, `":7700"`, `"127.0.0.1:0"`, 1)
		if err := os.WriteFile(test, []byte(patched), 0o644); err != nil {
			t.Fatal(err)
		}
		p := startProc(t, "serve", bin, "serve", "--config", test)
		if err := p.waitFor("listening", startTimeout, func() bool {
			return strings.Contains(p.out.String(), "listening")
		}); err != nil {
			t.Fatalf("%v\n%s", err, p.out.String())
		}
	})

	// A second install keeps the admin's files and keys.
	t.Run("keeps existing", func(t *testing.T) {
		conf := filepath.Join(dest, "etc/dst/serve.toml")
		if err := os.WriteFile(conf, []byte("# mine\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		before, err := os.ReadFile(filepath.Join(dest, "etc/dst/server.key"))
		if err != nil {
			t.Fatal(err)
		}
		runInstall(t, dest, "--bin", bin)
		if b, _ := os.ReadFile(conf); string(b) != "# mine\n" {
			t.Errorf("serve.toml overwritten: %q", b)
		}
		if after, _ := os.ReadFile(filepath.Join(dest, "etc/dst/server.key")); string(after) != string(before) {
			t.Error("server.key replaced by a second install")
		}
	})

	// Packaging: another prefix and unit directory end up in the units,
	// and no key is made.
	t.Run("prefix", func(t *testing.T) {
		d := t.TempDir()
		runInstall(t, d, "--bin", bin, "--prefix", "/usr", "--unitdir", "/lib/systemd/system", "--no-keygen")
		unit, err := os.ReadFile(filepath.Join(d, "lib/systemd/system/dst-serve.service"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(unit), "ExecStart=/usr/bin/dst serve") {
			t.Errorf("dst-serve.service does not run /usr/bin/dst:\n%s", unit)
		}
		if _, err := os.Stat(filepath.Join(d, "etc/dst/server.key")); !os.IsNotExist(err) {
			t.Errorf("--no-keygen made a key (stat: %v)", err)
		}
	})

	t.Run("verify", func(t *testing.T) {
		requireTool(t, "systemd-analyze")
		units := filepath.Join(dest, "etc/systemd/system")
		for _, u := range []string{"dst-serve.service", "dst-attach@.service"} {
			if out, err := verifyUnit(t, dest, filepath.Join(units, u), nil); err != nil {
				t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
			}
		}
	})

	// The check must be able to fail: each broken copy must be refused.
	t.Run("verify catches mistakes", func(t *testing.T) {
		requireTool(t, "systemd-analyze")
		unit := filepath.Join(dest, "etc/systemd/system/dst-serve.service")
		for name, breakIt := range map[string]func(string) string{
			"misspelt key": func(s string) string {
				return strings.Replace(s, "Restart=on-failure", "Restrat=on-failure", 1)
			},
			"bad value": func(s string) string {
				return strings.Replace(s, "Restart=on-failure", "Restart=sometimes", 1)
			},
			"missing binary": func(s string) string {
				return strings.Replace(s, "/usr/local/bin/dst serve", "/usr/local/bin/dts serve", 1)
			},
			"bad section": func(s string) string { return strings.Replace(s, "\n[Service]\n", "\n[Servce]\n", 1) },
		} {
			if out, err := verifyUnit(t, dest, unit, breakIt); err == nil {
				t.Errorf("%s: verify passed a broken unit:\n%s", name, out)
			}
		}
	})
}

// unitProblem matches what systemd-analyze verify prints about a unit
// file: version 252 reports unknown keys and bad values on stderr but
// still exits 0 ("file:LINE: Unknown key ..."), so any such line fails.
var unitProblem = regexp.MustCompile(`(?m)^(.*\.service:\d+: .*|.*[Uu]nknown (key|section).*|.*is not executable.*|.*[Ff]ailed to .*)$`)

// verifyUnit runs systemd-analyze verify on a copy of an installed unit,
// edited by edit (if not nil) and with the binary path pointed into dest,
// so that verify's check that ExecStart= exists tests the installed tree.
func verifyUnit(t *testing.T, dest, unit string, edit func(string) string) (string, error) {
	t.Helper()
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if edit != nil {
		s = edit(s)
	}
	s = strings.ReplaceAll(s, "=/usr/local/bin/", "="+filepath.Join(dest, "usr/local/bin")+"/")
	copy := filepath.Join(t.TempDir(), filepath.Base(unit))
	if err := os.WriteFile(copy, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runErr("systemd-analyze", "verify", "--man=no", copy)
	if err != nil {
		return out, err
	}
	if m := unitProblem.FindAllString(out, -1); len(m) > 0 {
		return out, &verifyError{m}
	}
	return out, nil
}

type verifyError struct{ lines []string }

func (e *verifyError) Error() string {
	return "tests: systemd-analyze verify reported: " + strings.Join(e.lines, "; ")
}

// fakeDmsetup is a stand-in for dmsetup that keeps each device's table,
// status and uuid in files under dir, as the kernel would report them
// (devices as MAJ:MIN), and logs every call. A device it creates gets a
// MAJ:MIN of its own and a 4 MiB file in $DM_DIR/mapper.
const fakeDmsetup = `#!/bin/sh
echo "dmsetup $*" >>"$FAKE_DM/log"
norm() {
	for w in $1; do
		case $w in
		"$DM_DIR"/mapper/*) cat "$FAKE_DM/$(basename "$w").dev" ;;
		/dev/*) cat "/sys/class/block/$(basename "$(readlink -f "$w")")/dev" ;;
		*) echo "$w" ;;
		esac
	done | tr '\n' ' ' | sed 's/ $//'
}
cmd=$1
shift
case $cmd in
info)
	if [ "$4" = name,uuid ]; then
		for f in "$FAKE_DM"/*.uuid; do
			[ -e "$f" ] || continue
			n=$(basename "$f" .uuid)
			echo "$n $(cat "$f")"
		done
	elif [ "$1" = -c ]; then cat "$FAKE_DM/$5.uuid"
	else [ -e "$FAKE_DM/$1.table" ]; fi ;;
create)
	echo "$3" >"$FAKE_DM/$1.uuid"; norm "$5" >"$FAKE_DM/$1.table"; echo >>"$FAKE_DM/$1.table"
	n=$(($(cat "$FAKE_DM/minor" 2>/dev/null || echo 0) + 1)); echo $n >"$FAKE_DM/minor"
	echo "254:$n" >"$FAKE_DM/$1.dev"
	truncate -s 4M "$DM_DIR/mapper/$1" ;;
table)
	if [ "$1" = -j ]; then
		for f in "$FAKE_DM"/*.dev; do
			[ "$(cat "$f")" = "$2:$4" ] && cat "${f%.dev}.table"
		done
	else cat "$FAKE_DM/$1.table"; fi ;;
status) cat "$FAKE_DM/$1.status" ;;
suspend | resume) ;;
reload) norm "$3" >"$FAKE_DM/$1.table"; echo >>"$FAKE_DM/$1.table"; rm -f "$FAKE_DM/$1.status" ;;
remove) rm -f "$FAKE_DM/$1".* "$DM_DIR/mapper/$1" ;;
*) echo "fake dmsetup: $cmd?" >&2; exit 1 ;;
esac
`

// fakeBlockdev answers --getsz from $FAKE_DM/size.NAME, else 131072.
const fakeBlockdev = `#!/bin/sh
f="$FAKE_DM/size.$(basename "$2")"
if [ -e "$f" ]; then cat "$f"; else echo 131072; fi
`

type mirrorEnv struct {
	dir  string // the fake's state
	path string // PATH with the fakes first
	bin  string // scripts/dst-mirror
}

func newMirrorEnv(t *testing.T) *mirrorEnv {
	t.Helper()
	dir := t.TempDir()
	fakes := filepath.Join(dir, "bin")
	if err := os.Mkdir(fakes, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "dm", "mapper"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{"dmsetup": fakeDmsetup, "blockdev": fakeBlockdev} {
		if err := os.WriteFile(filepath.Join(fakes, name), []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &mirrorEnv{dir: dir, path: fakes + ":" + os.Getenv("PATH"),
		bin: filepath.Join(repoRoot(t), "scripts", "dst-mirror")}
}

func (e *mirrorEnv) run(args ...string) (string, error) {
	cmd := exec.Command("sh", append([]string{e.bin}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+e.path, "FAKE_DM="+e.dir, "DM_DIR="+filepath.Join(e.dir, "dm"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (e *mirrorEnv) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.run(args...)
	if err != nil {
		t.Fatalf("dst-mirror %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (e *mirrorEnv) fails(t *testing.T, want string, args ...string) {
	t.Helper()
	out, err := e.run(args...)
	if err == nil || !strings.Contains(out, want) {
		t.Errorf("dst-mirror %s: got %v %q, want failure saying %q", strings.Join(args, " "), err, out, want)
	}
}

func (e *mirrorEnv) file(name string) string {
	b, _ := os.ReadFile(filepath.Join(e.dir, name))
	return strings.TrimSpace(string(b))
}

func (e *mirrorEnv) set(t *testing.T, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, name), []byte(text+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// loopDev attaches a 4 MiB file as a loop device (a readable leg).
func loopDev(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "leg.img")
	if err := os.WriteFile(f, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := strings.TrimSpace(run(t, "losetup", "--find", "--show", f))
	t.Cleanup(func() { _, _ = runErr("losetup", "-d", dev) })
	return dev
}

// majMin is how the kernel names a device in a table.
func majMin(t *testing.T, dev string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(dev), "dev"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestDstMirror(t *testing.T) {
	requireRoot(t)
	requireTool(t, "losetup", "sh", "dd", "awk")
	e := newMirrorEnv(t)
	a, b, c := loopDev(t), loopDev(t), loopDev(t)
	ma, mb, mc := majMin(t, a), majMin(t, b), majMin(t, c)

	// dev is the MAJ:MIN the fake gave a device it created.
	dev := func(name string) string { return e.file(name + ".dev") }
	A, B, C := filepath.Base(a), filepath.Base(b), filepath.Base(c)
	raidLegs := func(name string, legs ...string) string {
		var w []string
		for _, l := range legs {
			w = append(w, dev(name+"_rmeta_"+l), dev(name+"_rimage_"+l))
		}
		return strings.Join(w, " ")
	}

	// raid1, the default: each leg's first 4 MiB is its metadata part,
	// the rest its data part, both dm-linear; the array is as long as
	// the smallest data part, in whole MiB.
	t.Run("create raid1", func(t *testing.T) {
		e.set(t, "size."+filepath.Base(b), "140000")
		out := e.must(t, "create", "r", "--type", "raid1", a, b)
		if !strings.Contains(out, "using the smallest, 131072 sectors") {
			t.Errorf("no warning about the size difference:\n%s", out)
		}
		for name, want := range map[string]string{
			"r_rmeta_" + A:  "0 8192 linear " + ma + " 0",
			"r_rimage_" + A: "0 122880 linear " + ma + " 8192",
			"r_rmeta_" + B:  "0 8192 linear " + mb + " 0",
			"r_rimage_" + B: "0 131808 linear " + mb + " 8192",
		} {
			if got := e.file(name + ".table"); got != want {
				t.Errorf("%s: table %q, want %q", name, got, want)
			}
		}
		if got, want := e.file("r.table"), "0 122880 raid raid1 3 0 region_size 1024 2 "+raidLegs("r", A, B); got != want {
			t.Errorf("table %q, want %q", got, want)
		}
		os.Remove(filepath.Join(e.dir, "size."+filepath.Base(b)))
	})
	t.Run("create mirror", func(t *testing.T) {
		e.must(t, "create", "m", "--type", "mirror", "--handle-errors", "--region-size", "1M", "--nosync", a, b)
		if got, want := e.file("m.table"), "0 131072 mirror core 2 2048 nosync 2 "+ma+" 0 "+mb+" 0 1 handle_errors"; got != want {
			t.Errorf("table %q, want %q", got, want)
		}
	})
	t.Run("create errors", func(t *testing.T) {
		e.fails(t, "not a block device", "create", "x", a, "/dev/null")
		e.fails(t, "given twice", "create", "x", a, a)
		e.fails(t, "two or more", "create", "x", a)
		e.fails(t, "already exists", "create", "r", a, b)
		e.must(t, "create", "plain", "--nosync", a, b)
		if got, want := e.file("plain.table"), "0 122880 raid raid1 4 0 region_size 1024 nosync 2 "+raidLegs("plain", A, B); got != want {
			t.Errorf("default type: table %q, want %q", got, want)
		}
		e.fails(t, "is for --type mirror", "create", "x", "--type", "raid1", "--handle-errors", a, b)
		e.fails(t, "power of two", "create", "x", "--region-size", "3", a, b)
		e.fails(t, "want raid1 or mirror", "create", "x", "--type", "raid5", a, b)
		cmd := exec.Command("sh", e.bin, "create", "x", a, b)
		cmd.Env = append(os.Environ(), "PATH=/nonexistent")
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "dmsetup not found") {
			t.Errorf("without dmsetup: %v %s", err, out)
		}
	})

	t.Run("status", func(t *testing.T) {
		e.set(t, "r.status", "0 131072 raid raid1 2 aa 65536/131072 resync 0 0 -")
		if out := e.must(t, "status", "r"); !strings.Contains(out, "resyncing 50.0%") {
			t.Errorf("status during resync:\n%s", out)
		}
		e.set(t, "r.status", "0 131072 raid raid1 2 AD 131072/131072 idle 0 0 -")
		out := e.must(t, "status", "r")
		for _, want := range []string{"DEGRADED, 1 of 2 legs alive", "leg 0  " + a + "  alive", "leg 1  " + b + "  DEAD"} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
		e.set(t, "m.status", "0 131072 mirror 2 "+ma+" "+mb+" 128/128 1 AA 1 core")
		if out := e.must(t, "status", "m"); !strings.Contains(out, "m: mirror, legs: 2, in sync") {
			t.Errorf("mirror status:\n%s", out)
		}
	})

	// raid1: a faulty leg that reads again is revived in place by a
	// suspend and resume, with no new table (its bitmap says what to
	// copy); one that does not read is replaced by NEWDEV in its slot,
	// rebuilt in full, and its parts are removed.
	t.Run("repair raid1", func(t *testing.T) {
		e.set(t, "r.status", "0 122880 raid raid1 2 DA 122880/122880 idle 0 0 -")
		os.Remove(filepath.Join(e.dir, "log"))
		out := e.must(t, "repair", "r")
		if !strings.Contains(out, "reviving leg 0 ("+a+")") {
			t.Errorf("repair did not revive leg 0:\n%s", out)
		}
		if got, want := e.file("r.table"), "0 122880 raid raid1 3 0 region_size 1024 2 "+raidLegs("r", A, B); got != want {
			t.Errorf("revive changed the table to %q, want %q", got, want)
		}
		if log := e.file("log"); !strings.Contains(log, "dmsetup suspend r\ndmsetup resume r") || strings.Contains(log, "reload") {
			t.Errorf("revive is a suspend and resume, without a reload:\n%s", log)
		}

		run(t, "losetup", "-d", b) // leg 1 no longer reads
		e.set(t, "r.status", "0 122880 raid raid1 2 AD 122880/122880 idle 0 0 -")
		e.fails(t, "already a leg", "repair", "r", a)
		e.must(t, "repair", "r", c)
		if got, want := e.file("r.table"), "0 122880 raid raid1 5 0 region_size 1024 rebuild 1 2 "+raidLegs("r", A, C); got != want {
			t.Errorf("with NEWDEV: table %q, want %q", got, want)
		}
		for _, gone := range []string{"r_rmeta_" + B, "r_rimage_" + B} {
			if _, err := os.Stat(filepath.Join(e.dir, gone+".table")); !os.IsNotExist(err) {
				t.Errorf("%s left behind after its leg was replaced", gone)
			}
		}
		e.set(t, "r.status", "0 122880 raid raid1 2 AA 122880/122880 idle 0 0 -")
		e.fails(t, "no failed leg", "repair", "r")

		// Legacy raid1 without metadata: a dead leg is rebuilt in full.
		unattached := strings.TrimSpace(run(t, "losetup", "--find"))
		e.set(t, "r2.table", "0 131072 raid raid1 1 0 2 - "+ma+" - "+majMin(t, unattached))
		e.set(t, "r2.uuid", "DSTMIRROR-raid1-0-0-r2")
		e.set(t, "r2.status", "0 131072 raid raid1 2 AD 131072/131072 idle 0 0 -")
		e.must(t, "repair", "r2")
		if got, want := e.file("r2.table"), "0 131072 raid raid1 1 0 2 - "+ma+" - -"; got != want {
			t.Errorf("still-dead leg: table %q, want %q", got, want)
		}
		e.set(t, "r2.status", "0 131072 raid raid1 2 AD 131072/131072 idle 0 0 -")
		e.must(t, "repair", "r2", c)
		if got, want := e.file("r2.table"), "0 131072 raid raid1 3 0 rebuild 1 2 - "+ma+" - "+mc; got != want {
			t.Errorf("with NEWDEV: table %q, want %q", got, want)
		}
		e.set(t, "r2.status", "0 131072 raid raid1 2 AA 131072/131072 idle 0 0 -")
		e.fails(t, "already a leg", "repair", "r2", a)
		e.fails(t, "nothing to repair", "repair", "r2")
	})

	// mirror: a leg that still fails is dropped, down to linear; NEWDEV
	// turns it back into a mirror with the settings it was created with.
	t.Run("repair mirror", func(t *testing.T) {
		unattached := strings.TrimSpace(run(t, "losetup", "--find"))
		e.set(t, "m.table", "0 131072 mirror core 2 2048 nosync 2 "+majMin(t, unattached)+" 0 "+ma+" 0 1 handle_errors")
		e.set(t, "m.status", "0 131072 mirror 2 "+majMin(t, unattached)+" "+ma+" 100/128 1 DA 1 core")
		e.must(t, "repair", "m")
		if got, want := e.file("m.table"), "0 131072 linear "+ma+" 0"; got != want {
			t.Errorf("table %q, want %q", got, want)
		}
		e.set(t, "m.status", "0 131072 linear")
		if out := e.must(t, "status", "m"); !strings.Contains(out, "DEGRADED to one leg") {
			t.Errorf("status of a mirror down to one leg:\n%s", out)
		}
		e.fails(t, "give a new device", "repair", "m")
		e.must(t, "repair", "m", c)
		if got, want := e.file("m.table"), "0 131072 mirror core 1 2048 2 "+ma+" 0 "+mc+" 0 1 handle_errors"; got != want {
			t.Errorf("table %q, want %q (no nosync: the new leg is copied)", got, want)
		}
	})

	t.Run("remove", func(t *testing.T) {
		e.must(t, "remove", "m")
		if _, err := os.Stat(filepath.Join(e.dir, "m.table")); !os.IsNotExist(err) {
			t.Error("remove left the device")
		}
		e.fails(t, "no device-mapper device", "status", "m")
	})
}

// TestPackage: scripts/package builds a .deb holding the binary, dst-mirror,
// the units, the udev rule, the examples as conffiles, the man pages and
// completion, and lintian finds no error in it. (TestVMSystemd installs it
// in a Debian root and runs it under systemd.)
func TestPackage(t *testing.T) {
	requireDst(t)
	requireTool(t, "dpkg-deb", "lintian", "strip")
	dir := t.TempDir()
	requireTool(t, "go")
	// Built by scripts/package itself: static, stripped, as shipped.
	out := run(t, "../scripts/package", "-o", dir, "--version", "1.2.3-1")
	t.Logf("scripts/package:\n%s", out)
	deb := filepath.Join(dir, "dst_1.2.3-1_amd64.deb")
	if strings.Contains(out, "\nE: ") {
		t.Errorf("lintian reports errors:\n%s", out)
	}
	contents := run(t, "dpkg-deb", "-c", deb)
	for _, f := range []string{"./usr/bin/dst", "./usr/sbin/dst-mirror", "./lib/systemd/system/dst-serve.service",
		"./lib/systemd/system/dst-attach@.service", "./lib/udev/rules.d/60-dst.rules", "./etc/dst/serve.toml",
		"./etc/dst/examples/attach.conf.example", "./usr/share/man/man8/dst.8.gz", "./usr/share/man/man8/dst-mirror.8.gz",
		"./usr/share/man/man5/dst-serve.toml.5.gz", "./usr/share/bash-completion/completions/dst",
		"./usr/share/zsh/vendor-completions/_dst", "./usr/share/doc/dst/copyright"} {
		if !strings.Contains(contents, " "+f+"\n") {
			t.Errorf("the package lacks %s", f)
		}
	}
	if v := strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, "Version")); v != "1.2.3-1" {
		t.Errorf("Version %q", v)
	}
	conf := run(t, "sh", "-c", "dpkg-deb --ctrl-tarfile "+deb+" | tar -xOf - ./conffiles")
	if !strings.Contains(conf, "/etc/dst/serve.toml") || !strings.Contains(conf, "/etc/dst/authorized_keys") {
		t.Errorf("conffiles:\n%s", conf)
	}
	unit := run(t, "sh", "-c", "dpkg-deb --fsys-tarfile "+deb+" | tar -xOf - ./lib/systemd/system/dst-serve.service")
	if !strings.Contains(unit, "ExecStart=/usr/bin/dst serve") {
		t.Errorf("the packaged unit does not run /usr/bin/dst:\n%s", unit)
	}
}
