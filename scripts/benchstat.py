#!/usr/bin/env python3
"""benchstat: the python half of scripts/bench.

  fio FILE
      Print "iops total_ios" of a fio --output-format=json run (reads plus writes).
  report TSV [--json FILE] [--title TEXT] [--meta KEY=VALUE]...
      Print the markdown tables of the figures in TSV (round, target, key, value)
      and write them all as JSON.
"""

import json
import statistics
import sys

# --- fio ---------------------------------------------------------------------


def fio(path):
    with open(path) as f:
        s = f.read()
    j = json.loads(s[s.index("{"):])["jobs"][0]  # fio prints "fio: connected to NBD server" first
    if j["error"]:
        sys.exit(f"benchstat: fio error {j['error']} in {path}")
    iops = j["read"]["iops"] + j["write"]["iops"]
    ios = j["read"]["total_ios"] + j["write"]["total_ios"]
    print(f"{iops:.0f} {ios}")


# --- report ------------------------------------------------------------------

TARGETS = ["dst", "nbdkit-relay", "nbdkit-tls", "nbdkit-tcp"]
METRICS = [
    ("seq_read_MBps", "seq read MB/s", "{:.1f}"),
    ("seq_write_MBps", "seq write MB/s", "{:.1f}"),
    ("randread_qd1_iops", "randread QD1 IOPS", "{:.0f}"),
    ("randread_qd32_iops", "randread QD32 IOPS", "{:.0f}"),
    ("randwrite_qd1_iops", "randwrite QD1 IOPS", "{:.0f}"),
    ("randwrite_qd32_iops", "randwrite QD32 IOPS", "{:.0f}"),
]

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
    extra = {}  # round-0 sections: floor
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

    def ratio(k, other):
        a, b = med.get("dst", {}).get(k), med.get(other, {}).get(k)
        return "-" if a is None or not b else f"{a / b:.2f}"

    ratios = {f"dst/{o}": {k: round(med["dst"][k] / med[o][k], 4) for k, _, _ in METRICS
                           if med.get("dst", {}).get(k) and med.get(o, {}).get(k)}
              for o in TARGETS[1:]}
    ratios = {k: v for k, v in ratios.items() if v}

    if title:
        print(title)
        print()
    if rounds and any(t in per for t in TARGETS):
        print(f"Per round ({' / '.join(str(r) for r in rounds)}):")
        print()
        table(["metric"] + TARGETS,
              [[name] + [cell(t, k, fmt, True) for t in TARGETS] for k, name, fmt in METRICS])
        print(f"Medians over {len(rounds)} round(s):")
        print()
        table(["metric"] + TARGETS + [f"dst/{o}" for o in TARGETS[1:]],
              [[name] + [cell(t, k, fmt) for t in TARGETS] + [ratio(k, o) for o in TARGETS[1:]]
               for k, name, fmt in METRICS])

    floor = extra.get("floor")
    if floor:
        print("Round trips of a 4 KiB token through processes that do no work (scripts/hopfloor.c):")
        print()
        table(["processes", "round trips/s, any CPU", "round trips/s, all on CPU 0"],
              [[n, f"{floor[f'{n}_processes.any_cpu']:.0f}", f"{floor[f'{n}_processes.cpu0']:.0f}"]
               for n in ("2", "3")])

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
    if cmd == "fio":
        fio(args[0])
    elif cmd == "report":
        report(args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
