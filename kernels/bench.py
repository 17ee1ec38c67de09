"""Microbenchmark of kernels.relation_attention: the official loop, the PyTorch reference (eager and torch.compile)
and the Triton op, forward / backward / forward+backward, on TA3N's shape up to T = 16 with every tuple.

    python kernels/bench.py                     # the full table (needs a CUDA GPU)
    python -m kernels.bench --shapes ta3n --csv results.csv
    python kernels/bench.py --check-only --device cpu   # correctness only, Triton interpreter, tiny shapes

Order (the Triton tutorials'): a correctness check of the Triton op against the reference on the benchmarked inputs
first, then triton.testing.do_bench medians (p20-p80) with CUDA events. GB/s and the floor use the bytes an ideal
implementation must move: forward reads the inputs (frames and all weights) and writes the outputs (h, w, R, d̂);
backward reads the upstream gradients and the inputs again and writes the input gradients; full = both. Peak memory
is torch.cuda.max_memory_allocated during the timed calls. On a machine without a GPU the script prints one line and
exits 0; interpreter timings are meaningless and are never printed. `kernels` is imported inside the functions
because Triton reads TRITON_INTERPRET when the kernels are decorated, and --device cpu has to set it first.
"""
import argparse
import csv
import math
import os
import sys

import torch

SHAPES = {  # label: (B, T, D, H, Hd, max_per_scale); B = 128 source + 74 target videos as in the official script
    "ta3n": (202, 5, 512, 256, 256, 3),
    "t5-all": (202, 5, 512, 256, 256, None),
    "t8": (202, 8, 512, 256, 256, 3),
    "t8-all": (202, 8, 512, 256, 256, None),
    "t12-all": (202, 12, 512, 256, 256, None),
    "t16": (202, 16, 512, 256, 256, 3),
    "t16-all": (202, 16, 512, 256, 256, None),
}
CPU_SHAPES = {"tiny-official": (3, 5, 16, 24, 16, 3), "tiny-all": (2, 6, 8, 20, 16, None)}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}  # × max |reference|, as in the tests
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {', '.join(SHAPES)}")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: only with --check-only")
    p.add_argument("--check-only", action="store_true", help="run the correctness check, no timing")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference) (slow to compile)")
    p.add_argument("--csv", default=None, help="append the rows to this CSV file")
    return p.parse_args(argv)


def make_inputs(shape, dtype, device, seed=0):
    """Frames (post-ReLU, >= 0) and nn.Linear-style weights as leaves, plus the tuple table and upstream gradients."""
    from kernels import relation_tuples
    B, T, D, H, Hd, max_per_scale = shape
    g = torch.Generator().manual_seed(seed)

    def uniform(*size, fan_in):
        return ((torch.rand(*size, generator=g) * 2 - 1) / math.sqrt(fan_in)).to(device, dtype).requires_grad_()

    tuples = [t.to(device) for t in relation_tuples(T, max_per_scale)]
    frames = torch.rand(B, T, D, generator=g).to(device, dtype).requires_grad_()
    relation = [(uniform(H, t.shape[1] * D, fan_in=t.shape[1] * D), uniform(H, fan_in=t.shape[1] * D)) for t in tuples]
    disc = [(uniform(Hd, H, fan_in=H), uniform(Hd, fan_in=H), uniform(2, Hd, fan_in=Hd), uniform(2, fan_in=Hd))
            for _ in tuples]
    S = len(tuples)
    upstream = [torch.randn(s, generator=g).to(device, dtype) for s in [(B, H), (B, S), (B, S, H), (B, S, 2)]]
    return frames, tuples, relation, disc, upstream


def leaves(frames, relation, disc):
    return [frames] + [p for pair in relation for p in pair] + [p for quad in disc for p in quad]


def mismatch(got, want, tol):
    """None when every element is within tol × max|want|, else a short description (NaN/inf always mismatch)."""
    got, want = got.detach().float(), want.detach().float()
    bad = ~torch.isfinite(got) | ((got - want).abs() > tol * max(1.0, want.abs().max().item()))
    if not bad.any():
        return None
    first = tuple(bad.nonzero()[0].tolist())
    return f"{int(bad.sum())}/{bad.numel()} differ; first {list(first)}: {got[first].item()} vs {want[first].item()}"


def check(label, shape, dtype, device):
    """Triton op vs the reference (fp32 compute) on the same inputs: outputs and gradients; returns True when close."""
    from kernels import relation_attention, relation_attention_reference
    frames, tuples, relation, disc, upstream = make_inputs(shape, dtype, device)
    params = leaves(frames, relation, disc)
    results = []
    for fn in (relation_attention, relation_attention_reference):
        kw = {"backend": "triton"} if fn is relation_attention else {}
        outs = fn(frames, tuples, relation, disc, 0.75, **kw)
        grads = torch.autograd.grad(outs, params, upstream)
        results.append(list(outs) + list(grads))
    problems = [f"tensor {k}: {m}" for k, (a, b) in enumerate(zip(*results)) if (m := mismatch(a, b, TOLERANCE[dtype]))]
    print(f"check {label} {tuple(shape)} {dtype}: " + ("ok" if not problems else "FAILED " + "; ".join(problems[:3])))
    return not problems


def bytes_moved(shape, dtype, mode):
    B, T, D, H, Hd, max_per_scale = shape
    from kernels import relation_tuples
    sizes = [t.shape[1] for t in relation_tuples(T, max_per_scale)]
    S, e = len(sizes), torch.finfo(dtype).bits // 8
    inputs = B * T * D + sum(H * n * D + H for n in sizes) + S * (Hd * H + Hd + 2 * Hd + 2)
    outputs = B * H + B * S + B * S * H + B * S * 2
    return e * {"forward": inputs + outputs, "backward": 2 * inputs + outputs, "full": 3 * inputs + 2 * outputs}[mode]


def official_loop_fits(shape, dtype):
    # the loop keeps every tuple's gathered (B, n·D) input for backward: skip it where that exceeds half the GPU
    B, T, D, _, _, max_per_scale = shape
    from kernels import relation_tuples
    gathered = B * D * sum(t.numel() for t in relation_tuples(T, max_per_scale)) * torch.finfo(dtype).bits // 8
    return gathered < torch.cuda.get_device_properties(0).total_memory / 2


def bench_one(fn, inputs, mode):
    import triton.testing
    frames, tuples, relation, disc, upstream = inputs
    params = leaves(frames, relation, disc)
    if mode == "forward":
        def call():
            with torch.no_grad():
                fn(frames, tuples, relation, disc, 0.75)
    elif mode == "backward":
        outs = fn(frames, tuples, relation, disc, 0.75)

        def call():
            torch.autograd.backward(outs, upstream, retain_graph=True)
    else:
        def call():
            torch.autograd.backward(fn(frames, tuples, relation, disc, 0.75), upstream)
    call()                                                     # compile / autotune / plan caches outside the timing
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    p50, p20, p80 = triton.testing.do_bench(call, quantiles=[0.5, 0.2, 0.8], grad_to_none=params)
    return p50, p20, p80, torch.cuda.max_memory_allocated() / 2 ** 20


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cpu" and not args.check_only:
        raise SystemExit("error: --device cpu only runs the correctness check; add --check-only")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("kernels/bench.py needs a CUDA GPU; correctness runs on CPU via pytest")
        return 0
    if args.device == "cpu":
        # Triton reads TRITON_INTERPRET when `kernels` decorates its kernels, which is why kernels is imported late
        if "kernels" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("error: with python -m, set TRITON_INTERPRET=1 in the environment for --device cpu")
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton
    from kernels import official_loop_reference, relation_attention, relation_attention_reference

    dtype = DTYPES[args.dtype]
    if args.device == "cpu":
        if dtype != torch.float32:
            raise SystemExit("error: the interpreter check runs in fp32 only")
        ok = all([check(label, shape, dtype, "cpu") for label, shape in CPU_SHAPES.items()])
        return 0 if ok else 1
    labels = [s for s in args.shapes.split(",") if s]
    if unknown := [s for s in labels if s not in SHAPES]:
        raise SystemExit(f"error: unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} (CUDA {torch.version.cuda}) | "
          f"triton {triton.__version__} | TF32 matmul {torch.backends.cuda.matmul.allow_tf32} | "
          f"peak DRAM {triton.testing.get_dram_gbps():.0f} GB/s")
    if not all([check(label, SHAPES[label], dtype, "cuda") for label in labels]):
        return 1
    if args.check_only:
        return 0

    def triton_op(*a):
        return relation_attention(*a, backend="triton")

    providers = {"official loop": official_loop_reference, "torch": relation_attention_reference,
                 "torch.compile": None, "triton": triton_op}
    if args.no_compile:
        del providers["torch.compile"]
    peak_gbps = triton.testing.get_dram_gbps()
    rows = []
    print("\n| shape | B, T, D, H, Hd, table | dtype | provider | mode | ms p50 (p20-p80) | GB/s | floor ms "
          "| peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in labels:
        shape = SHAPES[label]
        inputs = make_inputs(shape, dtype, "cuda")
        if "torch.compile" in providers:
            # a fresh compile per shape: dynamo's recompile limit would otherwise send later shapes to eager
            torch._dynamo.reset()
            providers["torch.compile"] = torch.compile(relation_attention_reference)
        for name, fn in providers.items():
            for mode in ("forward", "backward", "full"):
                if name == "official loop" and not official_loop_fits(shape, dtype):
                    result = "skipped: gathered inputs exceed half the GPU memory"
                else:
                    try:
                        result = bench_one(fn, inputs, mode)
                    except torch.cuda.OutOfMemoryError:
                        result = "out of memory"
                    torch.cuda.empty_cache()
                nbytes = bytes_moved(shape, dtype, mode)
                floor_ms = nbytes / (peak_gbps * 1e9) * 1e3
                table = "official" if shape[5] else "all tuples"
                row = dict(shape=label, dims=f"{', '.join(map(str, shape[:5]))}, {table}", dtype=args.dtype,
                           provider=name, mode=mode, floor_ms=f"{floor_ms:.4f}")
                if isinstance(result, str):
                    row.update(ms_p50=result, ms_p20="", ms_p80="", gbps="", peak_mb="")
                else:
                    p50, p20, p80, peak = result
                    row.update(ms_p50=f"{p50:.4f}", ms_p20=f"{p20:.4f}", ms_p80=f"{p80:.4f}",
                               gbps=f"{nbytes / (p50 * 1e-3) / 1e9:.1f}", peak_mb=f"{peak:.0f}")
                rows.append(row)
                timing = row["ms_p50"] + ("" if isinstance(result, str) else f" ({row['ms_p20']}-{row['ms_p80']})")
                print(f"| {label} | {row['dims']} | {args.dtype} | {name} | {mode} | {timing} | {row['gbps']} | "
                      f"{row['floor_ms']} | {row['peak_mb']} |", flush=True)
    print_speedups(rows)
    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["gpu", "torch", "triton"] + list(rows[0]))
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                                     triton=triton.__version__, **row))
    return 0


def print_speedups(rows):
    """The issue's goals, forward+backward: ≥ 5× over the official loop, ≥ 2× over the best PyTorch version."""
    print("\n| shape | full: official loop / triton | full: best of torch, torch.compile / triton |")
    print("|---|---|---|")
    for label in dict.fromkeys(r["shape"] for r in rows):
        ms = {r["provider"]: float(r["ms_p50"]) for r in rows if r["shape"] == label and r["mode"] == "full"
              and r["ms_p50"].replace(".", "", 1).isdigit()}
        if "triton" not in ms:
            continue
        best_torch = min([ms[p] for p in ("torch", "torch.compile") if p in ms], default=float("nan"))
        loop = f"{ms['official loop'] / ms['triton']:.1f}×" if "official loop" in ms else "n/a"
        print(f"| {label} | {loop} | {best_torch / ms['triton']:.1f}× |")


if __name__ == "__main__":
    if __package__ in (None, ""):
        # run as `python kernels/bench.py`: put the repository root (this file's parent folder) on the import path
        # so `import kernels` works; `python -m kernels.bench` needs no such line
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
