"""How much the SYNTHETIC v2 shift hurts, on every ordered pair of its three domains (docs/benchmark.md).

    python -m benchmark.synthetic_shift                 # runs what is missing (resumable), prints the table
    python -m benchmark.synthetic_shift --no-run        # only the table, from the runs already on disk

For each ordered pair (source, target) it runs, through benchmark/compare.py (same commands, same folders,
seeds 1 2 3, one thread per run), TemRelation source-only, and for each target domain TemRelation and TemPooling
target-only (their training never sees the source, so one pair per target suffices). The table gives last-epoch
target top-1 (mean ± std over seeds) and checks the benchmark's two properties that need training:
  - the shift hurts: TemRelation source-only at least 12 points below TemRelation target-only on every pair;
  - order matters but does not dominate: TemPooling target-only within 15 points of TemRelation target-only.
Writes benchmark/results/synthetic_shift.json and .md; exits 1 when a property fails or runs are missing.
"""
import argparse
import itertools
import json
import os
import statistics
import sys

from benchmark import compare

DOMAINS = ("synth2-a", "synth2-b", "synth2-c")
TARGET_ONLY_PAIR = {"synth2-a": "synth2-b", "synth2-b": "synth2-a", "synth2-c": "synth2-a"}   # target -> source


def last_epoch(pair_dir: str, method: str, seeds) -> list:
    """Last-epoch target top-1 (%) of each seed's finished run, read from its metrics.json."""
    values = []
    for seed in seeds:
        path = os.path.join(pair_dir, method, f"s{seed}", "metrics.json")
        if os.path.isfile(path):
            with open(path) as f:
                m = json.load(f)
            if m.get("complete") and m.get("cpu_isa") == "avx2":          # the table's runs (compare.py)
                values.append(100 * m["final"]["last"]["top1"])
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1) // 2))
    p.add_argument("--no-run", action="store_true", help="do not train: only read the runs on disk")
    a = p.parse_args(argv)
    folder = lambda s, t: os.path.join(compare.RESULTS, f"{s}_{t}")
    if not a.no_run:
        for s, t in itertools.permutations(DOMAINS, 2):
            methods = ["source-only-relation"] + (
                ["target-only-relation", "target-only-pooling"] if TARGET_ONLY_PAIR[t] == s else [])
            compare.main(["--source", s, "--target", t, "--methods", *methods, "--seeds", *map(str, a.seeds),
                          "--jobs", str(a.jobs), "--threads", "1"])

    fmt = lambda v: f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else "–"
    rows, failures, missing = [], [], []
    target_only = {}
    for t in DOMAINS:
        pair = folder(TARGET_ONLY_PAIR[t], t)
        target_only[t] = {k: last_epoch(pair, f"target-only-{k}", a.seeds) for k in ("relation", "pooling")}
    lines = ["| source → target | TemRelation source-only | TemRelation target-only | gap | property (gap ≥ 12) |",
             "|---|---|---|---|---|"]
    for s, t in itertools.permutations(DOMAINS, 2):
        so, to = last_epoch(folder(s, t), "source-only-relation", a.seeds), target_only[t]["relation"]
        if len(so) < len(a.seeds) or len(to) < len(a.seeds):
            missing.append(f"{s}->{t}")
            continue
        gap = statistics.mean(to) - statistics.mean(so)
        ok = gap >= 12
        failures += [] if ok else [f"{s}->{t}: gap {gap:.2f}"]
        lines.append(f"| {s} → {t} | {fmt(so)} | {fmt(to)} | {gap:.2f} | {'yes' if ok else 'NO'} |")
        rows.append({"source": s, "target": t, "source_only": so, "target_only": to, "gap": gap})
    lines += ["", "| domain | TemRelation target-only | TemPooling target-only | gap | property (gap ≤ 15) |",
              "|---|---|---|---|---|"]
    for t in DOMAINS:
        rel, pool = target_only[t]["relation"], target_only[t]["pooling"]
        if len(rel) < len(a.seeds) or len(pool) < len(a.seeds):
            missing.append(f"target-only {t}")
            continue
        gap = statistics.mean(rel) - statistics.mean(pool)
        ok = gap <= 15
        failures += [] if ok else [f"{t}: pooling gap {gap:.2f}"]
        lines.append(f"| {t} | {fmt(rel)} | {fmt(pool)} | {gap:.2f} | {'yes' if ok else 'NO'} |")
    header = (f"SYNTHETIC v2, last-epoch target top-1 (%), mean ± std over seeds {' '.join(map(str, a.seeds))}, "
              f"each script's defaults, one thread per run; `python -m benchmark.synthetic_shift`.")
    text = "\n".join([header, ""] + lines + ([""] + [f"Missing runs: {', '.join(missing)}"] if missing else []))
    os.makedirs(compare.RESULTS, exist_ok=True)
    with open(os.path.join(compare.RESULTS, "synthetic_shift.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(compare.RESULTS, "synthetic_shift.json"), "w") as f:
        json.dump({"seeds": a.seeds, "pairs": rows, "target_only": target_only, "failures": failures,
                   "missing": missing}, f, indent=1)
    print(text)
    if failures:
        print("properties NOT met: " + "; ".join(failures))
    return 1 if failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
