"""Compare every method and baseline under one protocol: same data, sampling, budget and evaluation.

    python -m benchmark.compare                                   # SYNTHETIC synth2-a -> synth2-b, seeds 1 2 3
    python -m benchmark.compare --source ucf --target hmdb --data-root ~/ta3n-data --jobs 2
    python -m benchmark.compare --methods ta3n source-only-relation --epochs 10
    python -m benchmark.compare --readme                          # run nothing: results.json -> README table

Each run is one subprocess of a method script with the shared flags (`--source --target --data-root --epochs
--seed --out`) and `--threads` torch threads (OMP_NUM_THREADS; default 1, as the committed table); its
metrics.json is the only thing read back. Finished runs (a complete metrics.json with the same command) are
skipped, so an interrupted comparison resumes where it stopped, and running a few `--methods` keeps the other
methods' finished runs in the table. Writes `<out>/results.md` and `<out>/results.json` (every seed's numbers and
the command that made them); `--readme` renders that results.json into README.md, so no number of the README
table is typed by hand (tests/test_compare.py checks that they agree).

Each row is compared with the source-only row on the same backbone (source-selected top-1, the protocol's
number that uses no target label): the difference is called a gain or a loss only when it exceeds the sum of
the two standard deviations over seeds. The paper column holds the numbers the papers report on real
UCF->HMDB_full ResNet-101 features; it is never mixed with ours.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (script, extra flags, the source-only row on the same backbone (None for reference rows), paper U->H_full
# top-1 or None, where the paper number comes from). Every method runs with its script's own defaults apart from the
# flags listed here.
METHODS = {
    "target-only-pooling": ("baselines.py", ["--method", "target-only", "--temporal", "pooling"], None, 80.56,
                            "TA3N T3"),
    "target-only-relation": ("baselines.py", ["--method", "target-only", "--temporal", "relation"], None, 82.78,
                             "TA3N T3"),
    "source-only-pooling": ("baselines.py", ["--method", "source-only", "--temporal", "pooling"], None, 70.28,
                            "TA3N T3"),
    "source-only-relation": ("baselines.py", ["--method", "source-only", "--temporal", "relation"], None, 71.67,
                             "TA3N T3"),
    "dann-pooling": ("baselines.py", ["--method", "dann", "--temporal", "pooling"], "source-only-pooling", 71.11,
                     "TA3N T3"),
    "dann-relation": ("baselines.py", ["--method", "dann", "--temporal", "relation"], "source-only-relation", 75.28,
                      "TA3N T3"),
    "jan-pooling": ("baselines.py", ["--method", "jan", "--temporal", "pooling"], "source-only-pooling", 71.39,
                    "TA3N T3"),
    "jan-relation": ("baselines.py", ["--method", "jan", "--temporal", "relation"], "source-only-relation", 74.72,
                     "TA3N T3"),
    "adabn-pooling": ("baselines.py", ["--method", "adabn", "--temporal", "pooling"], "source-only-pooling", 75.56,
                      "TA3N T3"),
    "adabn-relation": ("baselines.py", ["--method", "adabn", "--temporal", "relation"], "source-only-relation",
                       72.22, "TA3N T3"),
    "mcd-pooling": ("baselines.py", ["--method", "mcd", "--temporal", "pooling"], "source-only-pooling", 71.67,
                    "TA3N T3"),
    "mcd-relation": ("baselines.py", ["--method", "mcd", "--temporal", "relation"], "source-only-relation", 73.89,
                     "TA3N T3"),
    "cdan-pooling": ("baselines.py", ["--method", "cdan", "--temporal", "pooling"], "source-only-pooling", None, ""),
    "cdan-relation": ("baselines.py", ["--method", "cdan", "--temporal", "relation"], "source-only-relation", None,
                      ""),
    "ta2n": ("ta3n.py", ["--variant", "ta2n"], "source-only-relation", 77.22, "TA3N T3"),
    "ta3n": ("ta3n.py", [], "source-only-relation", 78.33, "TA3N T3"),
    "tcon": ("tcon.py", [], "source-only-pooling", None, "the paper's U→H_full number uses the TRN backbone"),
    "tcon-trn": ("tcon.py", ["--backbone", "trn"], "source-only-relation", 87.24, "TCoN T3, TRN backbone"),
    # MA2L-TD at CPU widths (64 / 128): at the paper's widths one epoch takes ~225 s of CPU (docs/ma2l_td.md); its
    # source-only row is the same model and test statistics (target BN) without adaptation
    "ma2l-td-source-only": ("ma2l_td.py", ["--no-adaptation", "--bottleneck-dim", "64", "--disc-hidden", "128"],
                            None, 76.39, "MA2L-TD T3, source only"),
    "ma2l-td": ("ma2l_td.py", ["--bottleneck-dim", "64", "--disc-hidden", "128"], "ma2l-td-source-only", 85.00,
                "MA2L-TD T3"),
    # video domain generalization: no target data in training (the target is only tested)
    "dg-tsn": ("baselines.py", ["--method", "tsn"], None, None, "APN T1 uses its own split: not comparable"),
    "dg-trn": ("baselines.py", ["--method", "trn"], None, None, "APN T1 uses its own split: not comparable"),
    "dg-apn": ("apn.py", ["--no-ada"], "dg-trn", None, "APN T1 uses its own split: not comparable"),
    "dg-apn-ada": ("apn.py", [], "dg-trn", None, "APN T1 uses its own split: not comparable"),
}
RESULTS = os.path.join(REPO, "benchmark", "results")
README_START, README_END = "<!-- results-table:start -->", "<!-- results-table:end -->"


# PyTorch's CPU kernels round differently on different instruction sets (AVX-512 vs AVX2), and 30 epochs of
# adversarial training turn that into different per-seed numbers: on our AVX-512 machine, pinning AVX2 reproduced a
# number measured on another machine exactly (docs/benchmark.md). Every run of the table therefore uses the AVX2
# kernels of PyTorch, MKL and oneDNN, which every x86-64 machine of the last decade has.
CPU_ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
               "native": {}}


def done(metrics_path: str, cmd: list, isa: str):
    """The finished run's metrics when `metrics_path` holds a complete run of this command and instruction set."""
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            m = json.load(f)
        if m.get("complete") and m.get("compare_command") == cmd and m.get("cpu_isa") == isa:
            return m
    return None


def run_one(job):
    """Run one (method, seed) unless its complete metrics.json with the same command is already there."""
    name, seed, cmd, out, threads, isa = job
    metrics_path = os.path.join(out, "metrics.json")
    m = done(metrics_path, cmd, isa)
    if m:
        return name, seed, m, "skipped (done)"
    if os.path.isdir(out):                 # this folder is compare.py's own: an outdated or unfinished run goes
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **CPU_ISA_ENV[isa])
    start = time.time()
    p = subprocess.run([sys.executable] + cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        return name, seed, None, f"FAILED ({last})"
    with open(metrics_path) as f:
        m = json.load(f)
    m["compare_command"], m["cpu_isa"] = cmd, isa      # remembered so a changed command is re-run, not skipped
    with open(metrics_path, "w") as f:
        json.dump(m, f, indent=1)
    return name, seed, m, f"done in {time.time() - start:.0f} s"


def mean_std(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"                              # one seed: no spread to show
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def gain_cell(row: dict, base: dict) -> str:
    """Source-selected top-1 minus the same backbone's source-only row, called a gain (or a loss) only when the
    difference of the means exceeds the sum of the two standard deviations over seeds."""
    a, b = row["source_selected"], base["source_selected"]
    if len(a) < 2 or len(b) < 2:
        return "–"
    diff = statistics.mean(a) - statistics.mean(b)
    spread = statistics.stdev(a) + statistics.stdev(b)
    verdict = "gain" if diff > spread else "loss" if -diff > spread else "within spread"
    return f"{diff:+.2f} vs {row['baseline']} ({verdict})"


def render_table(results: dict) -> list:
    """The Markdown table of a results.json (also what `--readme` writes into README.md)."""
    epochs = results["epochs"]
    lines = [f"Target top-1 (%) on **{results['data']}**{' (SYNTHETIC benchmark)' if results['synthetic'] else ''}, "
             f"mean ± std over seeds {' '.join(map(str, results['seeds']))}"
             f"{f', {epochs} epochs' if epochs else ', each script’s default epochs'}, "
             f"{results['threads']} thread per run{', AVX2 CPU kernels' if results.get('cpu_isa') == 'avx2' else ''}; "
             f"`{results['command']}`.", "",
             "| method | source-selected | vs source-only, same backbone (source-selected) | last epoch | "
             "oracle (best target epoch) | wall time / run | paper, real U→H_full (not ours) |",
             "|---|---|---|---|---|---|---|"]
    rows = results["methods"]
    for name, row in rows.items():
        paper = row["paper_u2h_full"]
        paper_cell = f"{paper:.2f} ({row['paper_where']})" if paper is not None else (row["paper_where"] or "–")
        base = rows.get(row["baseline"]) if row["baseline"] else None
        gain = gain_cell(row, base) if base else ("reference row" if not row["baseline"] else "–")
        wall = f"{statistics.mean(row['wall_time_s']):.0f} s" if row["wall_time_s"] else "–"
        seeds = "" if len(row["seeds"]) == len(results["seeds"]) else f" ({len(row['seeds'])}/{len(results['seeds'])} seeds)"
        lines.append(f"| {name}{seeds} | {mean_std(row['source_selected'])} | {gain} | {mean_std(row['last'])} | "
                     f"{mean_std(row['oracle'])} | {wall} | {paper_cell} |")
    if results["failed"]:
        lines += ["", "Failed runs (not in the means): " + "; ".join(results["failed"])]
    return lines


def write_block(path: str, name: str, text: str):
    """Replace the block between `<!-- NAME:start -->` and `<!-- NAME:end -->` of a Markdown file with `text`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    with open(path) as f:
        content = f.read()
    if start not in content or end not in content:
        raise SystemExit(f"error: {path} has no {start} ... {end} block")
    head, rest = content.split(start, 1)
    with open(path, "w") as f:
        f.write(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def write_readme_table(results_path: str, readme_path: str = os.path.join(REPO, "README.md")) -> str:
    """Write the table of `results_path` into the README's results-table block; also copy the committed
    SYNTHETIC-shift table (benchmark/results/synthetic_shift.md) into docs/benchmark.md when both exist."""
    with open(results_path) as f:
        table = "\n".join(render_table(json.load(f)))
    write_block(readme_path, README_START[5:-10], table)
    shift, page = os.path.join(RESULTS, "synthetic_shift.md"), os.path.join(REPO, "docs", "benchmark.md")
    if readme_path == os.path.join(REPO, "README.md") and os.path.isfile(shift) and os.path.isfile(page):
        with open(shift) as f:
            write_block(page, "shift-table", f.read().strip("\n"))
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default="synth2-a")
    p.add_argument("--target", default="synth2-b")
    p.add_argument("--data-root", default=os.environ.get("VIDDA_DATA", "./data"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=None, help="override every script's default epoch count")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (the committed table: 1)")
    p.add_argument("--cpu-isa", default="avx2", choices=sorted(CPU_ISA_ENV), help="CPU kernels: avx2 (the "
                   "committed table; reproducible across x86-64 machines) or native (the machine's best)")
    p.add_argument("--out", default="", help="default benchmark/results/<source>_<target>")
    p.add_argument("--script-args", default="", help="extra flags for every run, one string (e.g. \"--synth-dim 16\")")
    p.add_argument("--readme", action="store_true", help="run nothing: write the table of <out>/results.json into "
                   "README.md (between the results-table markers)")
    a = p.parse_args(argv)
    out = a.out or os.path.join(RESULTS, f"{a.source}_{a.target}")
    if a.readme:
        print(write_readme_table(os.path.join(out, "results.json")))
        return 0

    # every method's runs: the requested ones are run (or found done); the others are read back when a finished run
    # with the same command is on disk, so re-running a few methods keeps the rest of the table
    jobs = []
    for name in METHODS:
        script, flags = METHODS[name][:2]
        for seed in a.seeds:
            run_dir = os.path.abspath(os.path.join(out, name, f"s{seed}"))
            cmd = [script, "--source", a.source, "--target", a.target, "--data-root", a.data_root,
                   "--seed", str(seed), "--out", run_dir, *flags]
            if a.epochs:
                cmd += ["--epochs", str(a.epochs)]
            cmd += a.script_args.split()
            jobs.append((name, seed, cmd, run_dir, a.threads, a.cpu_isa))
    todo = [j for j in jobs if j[0] in a.methods]
    results, failed = {}, []
    with ThreadPoolExecutor(a.jobs) as pool:
        for name, seed, m, status in pool.map(run_one, todo):
            print(f"{name:24s} seed {seed}: {status}", flush=True)
            if m is None:
                failed.append(f"{name} seed {seed}: {status}")
            else:
                results.setdefault(name, {})[seed] = m
    for name, seed, cmd, run_dir, _, isa in jobs:
        m = done(os.path.join(run_dir, "metrics.json"), cmd, isa) if name not in a.methods else None
        if m:
            results.setdefault(name, {})[seed] = m

    synthetic = any(m["synthetic"] for runs in results.values() for m in runs.values())
    data_name = next((m["data"] for runs in results.values() for m in runs.values()), f"{a.source}->{a.target}")
    table = {}
    for name, (script, flags, baseline, paper, where) in METHODS.items():
        runs = results.get(name)
        if not runs:
            continue
        get = lambda key: [100 * runs[s]["final"][key]["top1"] for s in sorted(runs)]
        table[name] = {"seeds": sorted(runs), "last": get("last"), "source_selected": get("source_selected"),
                       "oracle": get("oracle"), "wall_time_s": [runs[s]["wall_time_s"] for s in sorted(runs)],
                       "baseline": baseline, "paper_u2h_full": paper, "paper_where": where,
                       "command": [script, *flags]}
    command = ("python -m benchmark.compare" + (f" --source {a.source} --target {a.target}" if a.out == "" and
               (a.source, a.target) != ("synth2-a", "synth2-b") else "") + f" --seeds {' '.join(map(str, a.seeds))}"
               + (f" --epochs {a.epochs}" if a.epochs else "") + f" --threads {a.threads}"
               + ("" if a.cpu_isa == "avx2" else f" --cpu-isa {a.cpu_isa}"))
    res = {"data": data_name, "synthetic": synthetic, "seeds": a.seeds, "epochs": a.epochs, "threads": a.threads,
           "cpu_isa": a.cpu_isa,
           "command": command, "methods": table, "failed": failed}
    os.makedirs(out, exist_ok=True)
    lines = render_table(res)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print("\n".join(lines))
    print(f"wrote {os.path.join(out, 'results.md')} and results.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
