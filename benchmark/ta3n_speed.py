"""Time a default 30-epoch TA3N run at full UCF->HMDB_full size against the machine's FLOP floor.

    python -m benchmark.make_layout --out /tmp/ta3n-layout       # once: 2048-d synthetic frames, official layout
    python -m benchmark.ta3n_speed --data-root /tmp/ta3n-layout --threads 1 2

It packs the four lists once (not timed), then for each --threads value runs the README's real-data command,
`python ta3n.py --source ucf --target hmdb --data-root R --threads T`, as a subprocess (the runs alternate when
--repeat > 1) and reports its wall time, its CPU time, the FLOPs of the run and the achieved GFLOP/s.

FLOPs are counted, not estimated: torch's FlopCounterMode counts the matmuls of one training step (forward,
backward, both domains' full batches, 128 + 74 videos) and of one evaluation forward pass, and the run's total is
step FLOPs × (videos per epoch / videos per step) × epochs + evaluation FLOPs per video × (571 + 360) × epochs.
The floor is that total divided by the machine's fp32 matmul rate with the same threads (a 2048³ torch.mm,
measured here, best of 5). The data is synthetic (see benchmark/make_layout.py): time it, do not quote its accuracy.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import data  # run from the repository root as `python -m benchmark.<name>`
import ta3n

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def matmul_rate(threads: int, n: int = 2048) -> float:
    """fp32 GFLOP/s of an n×n×n torch.mm with `threads` threads, best of 5."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def counted_flops(pair, args) -> tuple:
    """(FLOPs of one training step on full batches, FLOPs of evaluating one video), counted by FlopCounterMode."""
    torch.manual_seed(0)
    model, optimizer = ta3n.build(args, pair.source_train.dim, pair.num_classes)
    b_t = data.target_batch_size(args.batch_size, len(pair.source_train), len(pair.target_train))
    x_s = torch.randn(args.batch_size, args.num_segments, pair.source_train.dim).relu()
    x_t = torch.randn(b_t, args.num_segments, pair.source_train.dim).relu()
    y_s = torch.randint(0, pair.num_classes, (args.batch_size,))
    with FlopCounterMode(display=False) as counter:
        ta3n.train_step(model, optimizer, args, x_s, y_s, x_t)
    step = counter.get_total_flops()
    model.eval()
    grl = {k: getattr(args, f"beta_{k}") for k in ta3n.DISCRIMINATORS}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x_s, grl, domains=False)
    return step, b_t, counter.get_total_flops() / args.batch_size


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True, help="a layout written by benchmark/make_layout.py")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--repeat", type=int, default=1, help="runs per thread count (alternated)")
    p.add_argument("--out", default="/tmp/vidda_ta3n_speed")
    a = p.parse_args(argv)
    argv_run = ["--source", "ucf", "--target", "hmdb", "--data-root", a.data_root, "--epochs", str(a.epochs)]
    args = ta3n.resolve(data.parse_args(ta3n.Args, argv_run))
    pair = data.load_pair(args)                                  # packs the caches once (not timed)
    step, b_t, per_video = counted_flops(pair, args)
    videos_per_epoch = len(pair.source_train) + len(pair.target_train)
    evaluated = len(pair.source_val) + len(pair.target_val)
    total = a.epochs * (step * videos_per_epoch / (args.batch_size + b_t) + per_video * evaluated)
    print(f"FLOPs: {step / 1e9:.2f} GFLOP per full training step ({args.batch_size} + {b_t} videos), "
          f"{per_video / 1e6:.2f} MFLOP per evaluated video; {total / 1e12:.3f} TFLOP for {a.epochs} epochs "
          f"({videos_per_epoch} training and {evaluated} evaluated videos per epoch)")
    rows = []
    for r in range(a.repeat):
        for threads in a.threads:
            out = os.path.join(a.out, f"t{threads}_r{r}")
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "ta3n.py", *argv_run, "--threads", str(threads), "--out", out,
                                   "--name", "speed"], cwd=REPO, capture_output=True, text=True,
                                  env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode:
                raise SystemExit(f"error: ta3n.py failed: {proc.stderr.strip().splitlines()[-1]}")
            with open(os.path.join(out, "metrics.json")) as f:
                m = json.load(f)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            rows.append((threads, wall, cpu, m["threads"], sum(e["train_time_s"] for e in m["epochs"])))
    print("\n| threads | wall (s) | CPU (s) | of which training epochs (s) | achieved GFLOP/s (wall) | "
          "fp32 matmul GFLOP/s (2048³ mm) | FLOP floor (s) | wall / floor |")
    print("|---|---|---|---|---|---|---|---|")
    rate = {t: matmul_rate(t) for t in a.threads}
    for threads, wall, cpu, used, train in rows:
        floor = total / (rate[threads] * 1e9)
        print(f"| {used} | {wall:.1f} | {cpu:.1f} | {train:.1f} | {total / wall / 1e9:.1f} | {rate[threads]:.1f} | "
              f"{floor:.1f} | {wall / floor:.2f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{os.cpu_count()} cores, 1-minute load average now {load:.2f}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
