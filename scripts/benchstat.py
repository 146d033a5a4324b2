#!/usr/bin/env python3
"""benchstat: the python half of scripts/bench.

  watch READY OUT DENSE_AFTER LABEL=PID...
      Sample CPU time and context switches of the processes until SIGTERM,
      then write "cpu_ticks<TAB>ctxsw<TAB>label" deltas to OUT.
  cputime OUT PID... -- COMMAND...
      Run COMMAND and write "wall_s cpu_s" to OUT: its wall time, and the CPU time
      it and the processes PID used meanwhile (all of a copy's processes).
  fio FILE
      Print "iops total_ios" of a fio --output-format=json run (reads plus writes).
  perf FILE
      Print "cpu_us ctxsw" from a `perf stat -x,` output file.
  report TSV [--json FILE] [--title TEXT] [--meta KEY=VALUE]...
      Print the markdown tables of the figures in TSV (round, target, key, value)
      and write them all as JSON.
"""

import json
import os
import re
import resource
import signal
import statistics
import sys
import time

# --- watch -------------------------------------------------------------------


class Stop(Exception):
    pass


def cpu_ticks(pid):
    """utime+stime of the whole process, exited threads included, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    # The command name may hold spaces and parentheses; the fields after it do not.
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def thread_switches(pid):
    """{tid: voluntary+nonvoluntary context switches} of the threads alive now."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        n = 0
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        n += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between listdir and open
        out[tid] = n
    return out


def watch(ready, out, dense_after, specs):
    """Context switches are only counted per thread, and a thread's count goes when the
    thread does: nbdkit ends a connection's worker threads when the client disconnects.
    So the threads are sampled through the run and each thread's last count is kept;
    a thread's switches between its last sample and its exit are lost. Sampling is
    every 200 ms until DENSE_AFTER seconds, then every 10 ms, so that the last sample
    before the workers exit falls within 10 ms of the end of the run. Threads that
    appear after the first sample count from zero. dst (Go) keeps its threads."""
    procs = []
    for spec in specs:
        label, pid = spec.rsplit("=", 1)
        procs.append((label, int(pid)))

    def on_term(signum, frame):
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    cpu0 = {pid: cpu_ticks(pid) for _, pid in procs}
    base = {pid: thread_switches(pid) for _, pid in procs}
    last = {pid: dict(base[pid]) for _, pid in procs}
    with open(ready, "w") as f:
        f.write("ready\n")
    start = time.monotonic()

    def sample():
        for _, pid in procs:
            now = thread_switches(pid)  # not merged until complete, in case Stop lands inside
            last[pid].update(now)

    try:
        while True:
            time.sleep(0.2 if time.monotonic() - start < dense_after else 0.01)
            sample()
    except Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sample()
    with open(out, "w") as f:
        for label, pid in procs:
            csw = sum(n - base[pid].get(tid, 0) for tid, n in last[pid].items())
            f.write(f"{cpu_ticks(pid) - cpu0[pid]}\t{csw}\t{label}\n")


# --- cputime -----------------------------------------------------------------


def cputime(out, args):
    """Runs a command and writes its wall time, and the CPU time of it and of
    the given processes over that time, to OUT."""
    sep = args.index("--")
    pids, command = [int(p) for p in args[:sep]], args[sep + 1:]
    tick = os.sysconf("SC_CLK_TCK")
    cpu0 = sum(cpu_ticks(p) for p in pids)
    t0 = time.monotonic()
    rc = os.spawnvp(os.P_WAIT, command[0], command)
    wall = time.monotonic() - t0
    cpu = (sum(cpu_ticks(p) for p in pids) - cpu0) / tick
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        sys.exit(f"benchstat: {command[0]} exited with {rc}")
    with open(out, "w") as f:
        f.write(f"{wall:.6f} {cpu + ru.ru_utime + ru.ru_stime:.3f}\n")


# --- fio and perf ------------------------------------------------------------


def fio(path):
    with open(path) as f:
        s = f.read()
    j = json.loads(s[s.index("{"):])["jobs"][0]  # fio prints "fio: connected to NBD server" first
    if j["error"]:
        sys.exit(f"benchstat: fio error {j['error']} in {path}")
    iops = j["read"]["iops"] + j["write"]["iops"]
    ios = j["read"]["total_ios"] + j["write"]["total_ios"]
    print(f"{iops:.0f} {ios}")


def perf(path):
    cpu_us = csw = None
    with open(path) as f:
        for line in f:
            p = line.strip().split(",")
            if len(p) < 3 or not p[0] or p[0].startswith("<"):
                continue
            if p[2].startswith("cpu-clock"):
                cpu_us = float(p[0]) * 1000 if p[1] == "msec" else float(p[0]) / 1000
            elif p[2].startswith("context-switches"):
                csw = float(p[0])
    if cpu_us is None or csw is None:
        sys.exit(f"benchstat: no cpu-clock and context-switches in {path}")
    print(f"{cpu_us:.0f} {csw:.0f}")


# --- report ------------------------------------------------------------------

TARGETS = ["dst", "dst-poll", "dst-metrics", "dst-upstream", "nbdkit-relay", "nbdkit-tls", "nbdkit-tcp",
           "nbdfloor", "workfloor"]
# run only when asked for (bench --only; --floor adds nbdfloor and workfloor)
OPTIONAL = {"dst-poll", "dst-metrics", "dst-upstream", "nbdfloor", "workfloor"}
METRICS = [
    ("seq_read_MBps", "seq read MB/s", "{:.1f}"),
    ("seq_write_MBps", "seq write MB/s", "{:.1f}"),
    ("seq_read_cpu_s_per_GiB", "seq read CPU s/GiB, all processes", "{:.2f}"),
    ("seq_write_cpu_s_per_GiB", "seq write CPU s/GiB, all processes", "{:.2f}"),
    ("randread_qd1_iops", "randread QD1 IOPS", "{:.0f}"),
    ("randread_qd32_iops", "randread QD32 IOPS", "{:.0f}"),
    ("randwrite_qd1_iops", "randwrite QD1 IOPS", "{:.0f}"),
    ("randwrite_qd32_iops", "randwrite QD32 IOPS", "{:.0f}"),
]
PROCESSES = ["dst attach", "dst serve", "dst-poll attach", "dst-poll serve",
             "dst-metrics attach", "dst-metrics serve",
             "dst-upstream attach", "dst-upstream serve", "dst-upstream nbdkit",
             "nbdkit-relay relay", "nbdkit-relay server",
             "nbdkit-tls server", "nbdkit-tcp server", "nbdfloor relay", "nbdfloor end",
             "workfloor relay", "workfloor end"]
COSTS = [
    ("randread_qd1.cpu_us_per_req", "randread QD1 µs CPU/req", "{:.1f}"),
    ("randread_qd1.ctxsw_per_req", "randread QD1 switches/req", "{:.2f}"),
    ("randwrite_qd1.cpu_us_per_req", "randwrite QD1 µs CPU/req", "{:.1f}"),
    ("randwrite_qd1.ctxsw_per_req", "randwrite QD1 switches/req", "{:.2f}"),
    ("randread_qd32.cpu_us_per_req", "randread QD32 µs CPU/req", "{:.1f}"),
    ("randread_qd32.ctxsw_per_req", "randread QD32 switches/req", "{:.2f}"),
    ("randwrite_qd32.cpu_us_per_req", "randwrite QD32 µs CPU/req", "{:.1f}"),
    ("randwrite_qd32.ctxsw_per_req", "randwrite QD32 switches/req", "{:.2f}"),
]
PERF_COSTS = [(k.replace(".", ".perf_"), n, f) for k, n, f in COSTS if "_qd1." in k]  # --perf: QD1 only


def value(s):
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def size_mib(s):
    """MiB in a dst size such as 256MiB, 1GiB or 0; None if it is not one."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B?)", s.strip(), re.I)
    if not m:
        return None
    unit = m.group(2).upper().rstrip("B")
    scale = {"": 1, "K": 1e3, "KI": 1024, "M": 1e6, "MI": 1 << 20,
             "G": 1e9, "GI": 1 << 30, "T": 1e12, "TI": 1 << 40}.get(unit)
    return None if scale is None else float(m.group(1)) * scale / (1 << 20)


def nest(flat):
    """{"a.b": v} -> {"a": {"b": v}}."""
    out = {}
    for k, v in flat.items():
        d = out
        *path, leaf = k.split(".")
        for p in path:
            d = d.setdefault(p, {})
        d[leaf] = v
    return out


# Each workload's targets, as (name, peer, factor): the figure must reach
# factor times the peer's.
TARGET_FACTORS = {
    "seq_read_MBps": [("1.2 x nbdkit-relay", "nbdkit-relay", 1.2), ("0.9 x nbdkit-tls", "nbdkit-tls", 0.9)],
    "seq_write_MBps": [("1.2 x nbdkit-relay", "nbdkit-relay", 1.2), ("0.9 x nbdkit-tls", "nbdkit-tls", 0.9)],
    "randread_qd1_iops": [("1.5 x nbdkit-relay", "nbdkit-relay", 1.5)],
    "randwrite_qd1_iops": [("1.5 x nbdkit-relay", "nbdkit-relay", 1.5)],
    "randread_qd32_iops": [("1.0 x nbdkit-tls", "nbdkit-tls", 1.0)],
    "randwrite_qd32_iops": [("1.0 x nbdkit-tls", "nbdkit-tls", 1.0)],
}


def target_figures(med, k, suffix=""):
    """Workload k's targets whose peer ran, as (name, the figure it asks)."""
    return [(what + suffix, factor * med[peer][k]) for what, peer, factor in TARGET_FACTORS[k]
            if med.get(peer, {}).get(k)]


SHAPES = ["read-dst", "read-relay", "read-tls", "write-dst", "write-relay", "write-tls"]


def seq_floor(per, med, rounds, cell, meta):
    """Prints the sequential floors (scripts/seqfloor) and sets the copies'
    figures against them. Rates move with the machine from one minute to
    the next; CPU time per GiB moves far less, so each copy's CPU per GiB
    (all its processes) is also set against its shape's floor: how much
    work it does beyond what each byte needs."""
    print("Sequential floor: the copy's bytes streamed through processes doing only each byte's")
    print("work (scripts/seqfloor):")
    print()
    key = lambda sh, what: sh.replace("-", "_") + what
    table(["shape", f"MB/s per round ({' / '.join(str(r) for r in rounds)})", "MB/s median",
           "CPU s/GiB median"],
          [[sh, cell("seqfloor", key(sh, "_MBps"), "{:.1f}", True), cell("seqfloor", key(sh, "_MBps"), "{:.1f}"),
            cell("seqfloor", key(sh, "_cpu_s_per_GiB"), "{:.2f}")] for sh in SHAPES])
    rows = []
    fl = med["seqfloor"]
    for d in ("read", "write"):
        for t, shape in (("dst", "dst"), ("dst-poll", "dst"), ("nbdkit-relay", "relay"), ("nbdkit-tls", "tls")):
            got, floor = med.get(t, {}).get(f"seq_{d}_cpu_s_per_GiB"), fl.get(f"{d}_{shape}_cpu_s_per_GiB")
            if got and floor:
                rows.append([f"{d}: {t}", f"{got:.2f}", f"{d}-{shape}", f"{floor:.2f}", f"{got / floor:.2f}"])
    if rows:
        print("CPU per GiB of each copy (its client and servers) against the floor of its shape (medians):")
        print()
        table(["copy", "CPU s/GiB", "floor shape", "floor CPU s/GiB", "copy/floor"], rows)
    # A copy of dst's shape cannot use more than the CPUs it runs on, nor
    # less CPU per byte than the floor: that bounds its rate. (The floor's
    # own rate is no bound: one chain of processes leaves CPUs idle between
    # its stages, which a copy on several connections need not.)
    cpus = 1 if str(meta.get("pin", "none")) != "none" else int(meta.get("cores") or os.cpu_count())
    rows = []
    for d in ("read", "write"):
        floor = fl.get(f"{d}_dst_cpu_s_per_GiB")
        k = f"seq_{d}_MBps"
        if not floor:
            continue
        ceiling = cpus * (1 << 30) / 1e6 / floor
        for what, v in [(f"dst seq {d}", med.get("dst", {}).get(k))] + target_figures(med, k):
            if v:
                rows.append([f"{d}: {what}", f"{v:.1f}", f"{ceiling:.1f}", f"{v / ceiling:.2f}"])
    if rows:
        print(f"Sequential figures and targets against the ceiling of dst's shape: {cpus} CPU(s) divided by")
        print("the floor's CPU time per byte (medians):")
        print()
        table(["figure", "MB/s", "ceiling MB/s", "of the ceiling"], rows)


# The shapes shape_floor sets figures against, and how the report names them.
SHAPE_FLOORS = [
    ("nbdfloor", "dst's shape with nothing in it (the same clients through a Go relay, one P,\n"
                 "over TCP to a Go NBD end that answers at once)"),
    ("workfloor", "dst's shape doing only the work dst's design requires (nbdfloor -work: dst's\n"
                  "encrypted channel between relay and end, xxhash64 of every payload on both sides,\n"
                  "the image read and written through dst's file backend)"),
]


def shape_floor(med, fname, what):
    """Prints each workload's figures and targets against a floor of dst's
    shape from the same run: nbdfloor, the shape with nothing in it (a
    target above it cannot be met by processes of that shape that sleep
    while they wait, whatever they do), or workfloor, the shape doing only
    the work dst must do (dst against it is what dst's own machinery
    costs)."""
    fl = med[fname]
    rows = []
    for k, name, fmt in METRICS:
        f = fl.get(k)
        if not f or k not in TARGET_FACTORS:
            continue
        for who, v in [(t, med.get(t, {}).get(k)) for t in ("dst", "dst-poll")] + target_figures(med, k):
            if v:
                rows.append([f"{name}: {who}", fmt.format(v), fmt.format(f), f"{v / f:.2f}"])
    if rows:
        print(f"Figures and targets against {fname}, {what}, medians:")
        print()
        table(["figure", "value", fname, f"of {fname}"], rows)


def report(args):
    tsv, out_json, title, meta = args[0], None, "", {}
    rest = args[1:]
    while rest:
        flag, v, rest = rest[0], rest[1], rest[2:]
        if flag == "--json":
            out_json = v
        elif flag == "--title":
            title = v
        elif flag == "--meta":
            k, _, mv = v.partition("=")
            meta[k] = value(mv)
        else:
            sys.exit(f"benchstat: unknown report flag {flag}")

    per = {}  # per[target][key][round] = value
    extra = {}  # round-0 sections: memory, floor
    with open(tsv) as f:
        for line in f:
            r, target, key, v = line.rstrip("\n").split("\t")
            if int(r) == 0:
                extra.setdefault(target, {})[key] = value(v)
            else:
                per.setdefault(target, {}).setdefault(key, {})[int(r)] = value(v)
    rounds = sorted({r for t in per.values() for k in t.values() for r in k})
    med = {t: {k: statistics.median(v.values()) for k, v in keys.items()} for t, keys in per.items()}

    def cell(t, k, fmt, by_round=False):
        if by_round:
            vs = per.get(t, {}).get(k, {})
            return " / ".join(fmt.format(vs[r]) if r in vs else "-" for r in rounds) if vs else "-"
        v = med.get(t, {}).get(k)
        return "-" if v is None else fmt.format(v)

    def ratio(k, pair):
        a, b = med.get(pair[0], {}).get(k), med.get(pair[1], {}).get(k)
        return "-" if a is None or not b else f"{a / b:.2f}"

    targets = [t for t in TARGETS if t not in OPTIONAL or t in per]
    # dst against every other target; dst with --busy-poll, when run,
    # against the nbdkit ones too.
    pairs = [("dst", o) for o in targets[1:]]
    if "dst-poll" in targets:
        pairs += [("dst-poll", o) for o in targets if o.startswith("nbdkit-")]
    ratios = {f"{a}/{b}": {k: round(med[a][k] / med[b][k], 4) for k, _, _ in METRICS
                           if med.get(a, {}).get(k) and med.get(b, {}).get(k)}
              for a, b in pairs}
    ratios = {k: v for k, v in ratios.items() if v}

    if title:
        print(title)
        print()
    if rounds and any(t in per for t in targets):
        print(f"Per round ({' / '.join(str(r) for r in rounds)}):")
        print()
        table(["metric"] + targets,
              [[name] + [cell(t, k, fmt, True) for t in targets] for k, name, fmt in METRICS])
        print(f"Medians over {len(rounds)} round(s):")
        print()
        table(["metric"] + targets + [f"{a}/{b}" for a, b in pairs],
              [[name] + [cell(t, k, fmt) for t in targets] + [ratio(k, p) for p in pairs]
               for k, name, fmt in METRICS])

    for costs, what in ((COSTS, "/proc/PID/stat and /proc/PID/task/*/status"),
                        (PERF_COSTS, "perf stat -e context-switches,cpu-clock -p PID")):
        procs = [p for p in PROCESSES + sorted(set(per) - set(PROCESSES))
                 if any(k in per.get(p, {}) for k, _, _ in costs)]
        if not procs:
            continue
        print(f"Cost per request during the fio runs, per process ({what}), per round:")
        print()
        table(["process"] + [n for _, n, _ in costs],
              [[p] + [cell(p, k, fmt, True) for k, _, fmt in costs] for p in procs])
        print(f"Cost per request during the fio runs ({what}), medians:")
        print()
        table(["process"] + [n for _, n, _ in costs],
              [[p] + [cell(p, k, fmt) for k, _, fmt in costs] for p in procs])

    mem = extra.get("memory")
    if mem:
        print(f"Memory: dst attach --connections {mem['connections']:.0f}, fio {mem['workload']}"
              f" for {mem['runtime_s']:.0f} s, --replay-buffer {mem['replay_buffer']}:")
        print()
        table(["process", "peak RSS (VmHWM) MiB"],
              [["dst attach", f"{mem['attach_peak_rss_MiB']:.1f}"],
               ["dst serve", f"{mem['serve_peak_rss_MiB']:.1f}"]])
        rb = size_mib(str(mem["replay_buffer"]))
        if rb is not None:
            bound = 256 + rb
            verdict = "under" if mem["attach_peak_rss_MiB"] < bound else "OVER"
            print(f"dst attach peak RSS {mem['attach_peak_rss_MiB']:.1f} MiB is {verdict} 256 MiB + the"
                  f" replay buffer ({rb:.0f} MiB) = {bound:.0f} MiB.")
            print()

    if "seqfloor" in per:
        seq_floor(per, med, rounds, cell, meta)
    for fname, what in SHAPE_FLOORS:
        if fname in med:
            shape_floor(med, fname, what)

    floor = extra.get("floor")
    if floor:
        print("Round trips of a 4 KiB token through processes that do no work (scripts/hopfloor.c):")
        print()
        table(["processes", "round trips/s, any CPU", "round trips/s, all on CPU 0"],
              [[n, f"{floor[f'{n}_processes.any_cpu']:.0f}", f"{floor[f'{n}_processes.cpu0']:.0f}"]
               for n in ("2", "3")])
        if "3_processes_go.median" in floor:
            print("The 3-process chain with TCP from the middle on, as dst is linked, in C and with Go stages")
            print("where attach and serve stand (scripts/gofloor, on the runtime's poller through")
            print("internal/rawio as dst is), 3 rounds alternating, medians:")
            print()
            table(["chain", "round trips/s", "middle µs CPU / switches", "end µs CPU / switches"],
                  [["C, C, C", f"{floor['3_processes_c.median']:.0f}", "", ""],
                   ["C, Go, Go", f"{floor['3_processes_go.median']:.0f}",
                    f"{floor['3_processes_go.middle_cpu_us']:.1f} / {floor['3_processes_go.middle_switches']:.2f}",
                    f"{floor['3_processes_go.end_cpu_us']:.1f} / {floor['3_processes_go.end_switches']:.2f}"]])
            # QD1 figures and the QD1 target against the Go chain: what dst's
            # shape allows here before any work is done.
            go = floor["3_processes_go.median"]
            rows = []
            for k, name in (("randread_qd1_iops", "randread QD1"), ("randwrite_qd1_iops", "randwrite QD1")):
                figures = [(f"dst {name}", med.get("dst", {}).get(k)),
                           (f"dst-poll {name}", med.get("dst-poll", {}).get(k))]
                for label, v in figures + target_figures(med, k, f" {name}"):
                    if v:
                        rows.append([label, f"{v:.0f}", f"{go:.0f}", f"{v / go:.2f}"])
            if rows:
                print("QD1 figures and targets against the Go chain (medians):")
                print()
                table(["figure", "requests/s", "Go chain round trips/s", "of the chain"], rows)

    if out_json:
        doc = {
            "config": meta,
            "rounds": {str(r): {t: nest({k: v[r] for k, v in keys.items() if r in v})
                                for t, keys in per.items()} for r in rounds},
            "median": {t: nest(keys) for t, keys in med.items()},
            "ratios": ratios,
        }
        doc.update({sec: nest(v) for sec, v in extra.items()})
        with open(out_json, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "watch":
        watch(args[0], args[1], float(args[2]), args[3:])
    elif cmd == "cputime":
        cputime(args[0], args[1:])
    elif cmd == "fio":
        fio(args[0])
    elif cmd == "perf":
        perf(args[0])
    elif cmd == "report":
        report(args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
