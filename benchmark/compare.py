"""Compare every method and baseline under one protocol: same data, sampling, budget and evaluation.

    python benchmark/compare.py                                   # synthetic synth-a -> synth-b, seeds 1 2 3
    python benchmark/compare.py --source ucf --target hmdb --data-root ~/ta3n-data --seeds 1 2 3
    python benchmark/compare.py --methods ta3n source-only-relation --epochs 10 --jobs 2

Each run is one subprocess of a method script with the shared flags (`--source --target --data-root --epochs
--seed --out`); its metrics.json is the only thing read back. Finished runs (a complete metrics.json with the
same arguments) are skipped, so an interrupted comparison resumes where it stopped. Writes `<out>/results.md` (a
Markdown table: mean ± std over seeds of the last-epoch, source-selected and oracle target top-1, and wall time
per run) and `<out>/results.json` (every run's numbers).

The paper column holds the numbers the papers report on real UCF->HMDB_full ResNet-101 features; it is never
mixed with ours, and on the synthetic benchmark it only says where each method stands in its paper.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (script, extra flags, paper U->H_full top-1 or None, where the paper number comes from)
# Every method runs with its script's own defaults apart from the flags listed here.
METHODS = {
    "target-only-pooling": ("baselines.py", ["--method", "target-only", "--temporal", "pooling"], 80.56, "TA3N T3"),
    "target-only-relation": ("baselines.py", ["--method", "target-only", "--temporal", "relation"], 82.78, "TA3N T3"),
    "source-only-pooling": ("baselines.py", ["--method", "source-only", "--temporal", "pooling"], 70.28, "TA3N T3"),
    "source-only-relation": ("baselines.py", ["--method", "source-only", "--temporal", "relation"], 71.67, "TA3N T3"),
    "dann-pooling": ("baselines.py", ["--method", "dann", "--temporal", "pooling"], 71.11, "TA3N T3"),
    "dann-relation": ("baselines.py", ["--method", "dann", "--temporal", "relation"], 75.28, "TA3N T3"),
    "jan-pooling": ("baselines.py", ["--method", "jan", "--temporal", "pooling"], 71.39, "TA3N T3"),
    "jan-relation": ("baselines.py", ["--method", "jan", "--temporal", "relation"], 74.72, "TA3N T3"),
    "adabn-pooling": ("baselines.py", ["--method", "adabn", "--temporal", "pooling"], 75.56, "TA3N T3"),
    "adabn-relation": ("baselines.py", ["--method", "adabn", "--temporal", "relation"], 72.22, "TA3N T3"),
    "mcd-pooling": ("baselines.py", ["--method", "mcd", "--temporal", "pooling"], 71.67, "TA3N T3"),
    "mcd-relation": ("baselines.py", ["--method", "mcd", "--temporal", "relation"], 73.89, "TA3N T3"),
    "cdan-pooling": ("baselines.py", ["--method", "cdan", "--temporal", "pooling"], None, ""),
    "cdan-relation": ("baselines.py", ["--method", "cdan", "--temporal", "relation"], None, ""),
    "ta2n": ("ta3n.py", ["--variant", "ta2n"], 77.22, "TA3N T3"),
    "ta3n": ("ta3n.py", [], 78.33, "TA3N T3"),
    "tcon": ("tcon.py", [], None, "the paper's U→H_full number uses the TRN backbone"),
    "tcon-trn": ("tcon.py", ["--backbone", "trn"], 87.24, "TCoN T3, TRN backbone"),
    # MA2L-TD at CPU widths and 10 epochs (the paper widths take ~10 s per step on one core; see README)
    "ma2l-td": ("ma2l_td.py", ["--epochs", "10", "--bottleneck-dim", "64", "--disc-hidden", "128"], 85.00,
                "MA2L-TD T3"),
    "ma2l-td-code-entropy": ("ma2l_td.py", ["--epochs", "10", "--bottleneck-dim", "64", "--disc-hidden", "128",
                                            "--entropy-weight", "0.0833"], None, "L_t weight 1/C as the code"),
    # video domain generalization: no target data in training (the target is only tested)
    "dg-tsn": ("baselines.py", ["--method", "tsn"], None, "APN T1 uses its own split: not comparable"),
    "dg-trn": ("baselines.py", ["--method", "trn"], None, "APN T1 uses its own split: not comparable"),
    "dg-apn": ("apn.py", ["--no-ada"], None, "APN T1 uses its own split: not comparable"),
    "dg-apn-ada": ("apn.py", [], None, "APN T1 uses its own split: not comparable"),
}


def run_one(job):
    """Run one (method, seed) unless its complete metrics.json with the same command is already there."""
    name, seed, cmd, out, threads = job
    metrics_path = os.path.join(out, "metrics.json")
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            m = json.load(f)
        if m.get("complete") and m.get("command") == cmd:
            return name, seed, m, "skipped (done)"
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    p = subprocess.run([sys.executable] + cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        return name, seed, None, f"FAILED ({last})"
    with open(metrics_path) as f:
        m = json.load(f)
    m["command"] = cmd                      # remembered so a changed command is re-run, not skipped
    with open(metrics_path, "w") as f:
        json.dump(m, f, indent=1)
    return name, seed, m, f"done in {time.time() - start:.0f} s"


def mean_std(values):
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default="synth-a")
    p.add_argument("--target", default="synth-b")
    p.add_argument("--data-root", default=os.environ.get("VIDDA_DATA", "./data"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=None, help="override every script's default epoch count")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="runs in parallel")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--out", default="", help="default benchmark/results/<source>_<target>")
    p.add_argument("--script-args", default="", help="extra flags for every run, one string (e.g. \"--synth-dim 16\")")
    a = p.parse_args(argv)
    out = a.out or os.path.join(REPO, "benchmark", "results", f"{a.source}_{a.target}")
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)

    jobs = []
    for name in a.methods:
        script, flags, _, _ = METHODS[name]
        for seed in a.seeds:
            run_dir = os.path.abspath(os.path.join(out, name, f"s{seed}"))
            cmd = [script, "--source", a.source, "--target", a.target, "--data-root", a.data_root,
                   "--seed", str(seed), "--out", run_dir, *flags]
            if a.epochs:
                cmd += ["--epochs", str(a.epochs)]
            cmd += a.script_args.split()
            jobs.append((name, seed, cmd, run_dir, threads))
    results, failed = {}, []
    with ThreadPoolExecutor(a.jobs) as pool:
        for name, seed, m, status in pool.map(run_one, jobs):
            print(f"{name:24s} seed {seed}: {status}", flush=True)
            if m is None:
                failed.append(f"{name} seed {seed}: {status}")
            else:
                results.setdefault(name, {})[seed] = m

    synthetic = any(m["synthetic"] for runs in results.values() for m in runs.values())
    data_name = next((m["data"] for runs in results.values() for m in runs.values()), f"{a.source}->{a.target}")
    lines = [f"Target top-1 (%) on **{data_name}**{' (SYNTHETIC benchmark)' if synthetic else ''}, "
             f"mean ± std over seeds {' '.join(map(str, a.seeds))}"
             f"{f', {a.epochs} epochs' if a.epochs else ', each script’s default epochs'}.", "",
             "| method | last epoch | source-selected | oracle (best target epoch) | wall time / run | "
             "paper, real U→H_full (not ours) |", "|---|---|---|---|---|---|"]
    table = {}
    for name in a.methods:
        runs = results.get(name, {})
        get = lambda key: [100 * m["final"][key]["top1"] for m in runs.values()]
        paper, where = METHODS[name][2], METHODS[name][3]
        paper_cell = f"{paper:.2f} ({where})" if paper is not None else (where or "–")
        wall = [m["wall_time_s"] for m in runs.values()]
        cells = [mean_std(get("last")), mean_std(get("source_selected")), mean_std(get("oracle")),
                 f"{statistics.mean(wall):.0f} s" if wall else "–"]
        seeds = "" if len(runs) == len(a.seeds) else f" ({len(runs)}/{len(a.seeds)} seeds)"
        lines.append(f"| {name}{seeds} | " + " | ".join(cells) + f" | {paper_cell} |")
        table[name] = {"seeds": sorted(runs), "last": get("last"), "source_selected": get("source_selected"),
                       "oracle": get("oracle"), "wall_time_s": wall, "paper_u2h_full": paper,
                       "command": [METHODS[name][0], *METHODS[name][1]]}
    if failed:
        lines += ["", "Failed runs (not in the means): " + "; ".join(failed)]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"data": data_name, "synthetic": synthetic, "seeds": a.seeds, "epochs": a.epochs,
                   "methods": table, "failed": failed}, f, indent=1)
    print("\n".join(lines))
    print(f"wrote {os.path.join(out, 'results.md')} and results.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
