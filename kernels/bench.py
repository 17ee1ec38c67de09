"""Microbenchmark of kernels.relation_attention: the official loop, the PyTorch reference (eager, CUDA-graphed and
torch.compile) and the Triton op, forward / backward / forward+backward, on TA3N's shape up to T = 16 with every tuple.

    python kernels/bench.py --device-check      # the prepared GPU run (< 5 min on an H100/H200): correctness of the
                                                # compiled op against float64 on every shape, then the tables
    python kernels/bench.py                     # the full fp32 table (needs a CUDA GPU)
    python -m kernels.bench --shapes ta3n,t16-all --dtype bf16 --csv results.csv
    OMP_NUM_THREADS=1 python kernels/bench.py --device cpu --baseline OLD.py   # CPU timing of the reference
    python kernels/bench.py --check-only --device cpu   # correctness only, Triton interpreter, tiny shapes

Order (the Triton tutorials'): a correctness check of the Triton op against the reference on the benchmarked inputs
first, then the timings. Providers: "official loop" (one Linear per tuple, the official code's structure); "torch"
(relation_attention_reference: the used-pairs projection, the best PyTorch form we have); "torch graph" (the same,
captured once in a CUDA graph and replayed: no launch overhead); "torch.compile"; "triton" and "triton graph". With
--dtype fp16/bf16 the PyTorch providers run under torch.autocast(dtype), so their matmuls run in the precision of the
Triton op's projection (fp32 accumulation). Times are triton.testing.do_bench medians p50 (p20-p80), L2 flushed
before each call; the graph columns use do_bench_cudagraph (forward and forward+backward only). Peak memory is
measured on one separate call: max_memory_allocated minus the memory in use before it (do_bench's 256 MB flush buffer
is not in it). FLOPs: the used-pairs matmul count, the least any provider needs (2·B·D·H·U + 2·S·B·H·Hd forward,
twice that backward), so TFLOP/s compare providers on the same work. Bytes: what an ideal implementation must move
(forward: inputs and outputs; backward: upstream gradients, inputs again, input gradients; full: both). Peaks come
from the SM count and clock (FP32 FMA lanes, or dense fp16/bf16 tensor cores) and the memory clock; the floor is the
larger of FLOPs/peak and bytes/bandwidth, and "bound" says which.

On a machine without a GPU the script prints one line and exits 1, unless --device cpu is given: then it times the
PyTorch reference (the CPU training path) forward+backward with time.process_time, alternating providers round by
round; --baseline FILE adds another version of kernels/relation.py (for example the previous one, from git show) as a
provider. `kernels` is imported inside the functions because Triton reads TRITON_INTERPRET when the kernels are
decorated, and --check-only --device cpu has to set it first.
"""
import argparse
import contextlib
import csv
import importlib.util
import math
import os
import statistics
import sys
import time

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
# per compute capability: FP32 FMA lanes per SM, dense fp16/bf16 tensor-core FLOP per SM per clock (vendor sheets)
SM_RATES = {(8, 0): (64, 2048), (8, 6): (128, 1024), (8, 9): (128, 1024), (9, 0): (128, 4096)}
DEVICE_CHECK_SECONDS = 240                                # --device-check stops adding table rows after this


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=None, help=f"comma-separated subset of {', '.join(SHAPES)} "
                                                  "(default: all; ta3n with --device cpu)")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--check-only", action="store_true", help="run the correctness check, no timing")
    p.add_argument("--device-check", action="store_true",
                   help="the prepared GPU run: float64 correctness on every shape, then fp32 and bf16 tables")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference) (slow to compile)")
    p.add_argument("--csv", default=None, help="append the rows to this CSV file")
    p.add_argument("--baseline", default=None, help="--device cpu: also time relation_attention_reference from "
                                                    "this file (another version of kernels/relation.py)")
    p.add_argument("--threads", type=int, default=1, help="--device cpu: torch threads")
    p.add_argument("--rounds", type=int, default=20, help="--device cpu: timed calls per provider")
    args = p.parse_args(argv)
    args.shapes = [s for s in (args.shapes or ("ta3n" if args.device == "cpu" else ",".join(SHAPES))).split(",") if s]
    if unknown := [s for s in args.shapes if s not in SHAPES]:
        raise SystemExit(f"error: unknown shape(s) {unknown}; choose from {list(SHAPES)}")
    return args


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
    got, want = got.detach().double(), want.detach().double()
    bad = ~torch.isfinite(got) | ((got - want).abs() > tol * max(1.0, want.abs().max().item()))
    if not bad.any():
        return None
    first = tuple(bad.nonzero()[0].tolist())
    return f"{int(bad.sum())}/{bad.numel()} differ; first {list(first)}: {got[first].item()} vs {want[first].item()}"


def check(label, shape, dtype, device, oracle=None):
    """The Triton op against the reference on the same inputs, outputs and gradients; True when close. The reference
    computes in fp32, or in float64 from the same values with oracle=torch.float64."""
    from kernels import relation_attention, relation_attention_reference
    frames, tuples, relation, disc, upstream = make_inputs(shape, dtype, device)
    results = []
    for fn in (relation_attention, relation_attention_reference):
        if fn is relation_attention_reference and oracle is not None:
            frames, relation, disc = (frames.detach().to(oracle).requires_grad_(),
                                      [tuple(p.detach().to(oracle).requires_grad_() for p in q) for q in relation],
                                      [tuple(p.detach().to(oracle).requires_grad_() for p in q) for q in disc])
        kw = {"backend": "triton"} if fn is relation_attention else {}
        outs = fn(frames, tuples, relation, disc, 0.75, **kw)
        grads = torch.autograd.grad(outs, leaves(frames, relation, disc), [u.to(outs[0].dtype) for u in upstream])
        results.append([o.detach() for o in outs] + list(grads))
        del outs, grads
    problems = [f"tensor {k}: {m}" for k, (a, b) in enumerate(zip(*results)) if (m := mismatch(a, b, TOLERANCE[dtype]))]
    reference = "float64 reference" if oracle is not None else "reference"
    print(f"check {label} {tuple(shape)} {str(dtype).replace('torch.', '')} vs {reference}: "
          + ("ok" if not problems else "FAILED " + "; ".join(problems[:3])), flush=True)
    return not problems


def work(shape, dtype, mode):
    """(FLOPs, bytes) of one call: the used-pairs matmuls, and what an ideal implementation must move."""
    from kernels import relation_tuples, used_pairs
    B, T, D, H, Hd, max_per_scale = shape
    tuples = relation_tuples(T, max_per_scale)
    sizes, pairs, S = [t.shape[1] for t in tuples], len(used_pairs(tuples)["pair_frame"]), len(tuples)
    flops = 2 * B * D * H * pairs + 2 * S * B * H * Hd
    e = torch.finfo(dtype).bits // 8
    inputs = B * T * D + sum(H * n * D + H for n in sizes) + S * (Hd * H + Hd + 2 * Hd + 2)
    outputs = B * H + B * S + B * S * H + B * S * 2
    return ({"forward": flops, "backward": 2 * flops, "full": 3 * flops}[mode],
            e * {"forward": inputs + outputs, "backward": 2 * inputs + outputs, "full": 3 * inputs + 2 * outputs}[mode])


def peaks(dtype):
    """(TFLOP/s, GB/s) of the current GPU from its SM count and clocks; TFLOP/s is None for an unlisted GPU."""
    import triton
    import triton.testing
    props = triton.runtime.driver.active.utils.get_device_properties(torch.cuda.current_device())
    rates = SM_RATES.get(torch.cuda.get_device_capability())
    clock_ghz = props["sm_clock_rate"] / 1e6
    tflops = None if rates is None else props["multiprocessor_count"] * clock_ghz * (
        2 * rates[0] if dtype == torch.float32 else rates[1]) / 1e3
    return tflops, triton.testing.get_dram_gbps()


def fits(provider, shape, dtype):
    """Skip what would not fit or would take minutes: the loop's gathered inputs over half the GPU memory."""
    from kernels import relation_tuples
    B, T, D, _, _, max_per_scale = shape
    tuples = relation_tuples(T, max_per_scale)
    if provider == "official loop":
        gathered = B * D * sum(t.numel() for t in tuples) * torch.finfo(dtype).bits // 8
        if gathered > torch.cuda.get_device_properties(0).total_memory / 2:
            return "skipped: its gathered inputs exceed half the GPU memory"
        if sum(t.shape[0] for t in tuples) > 2000:
            return "skipped: > 2000 tuples, one Python-launched Linear each"
    return None


def bench_one(fn, inputs, mode, graph, autocast):
    """(p50, p20, p80) ms, peak MB of one call beyond the memory already in use."""
    import triton.testing
    frames, tuples, relation, disc, upstream = inputs
    params = leaves(frames, relation, disc)
    precision = torch.autocast("cuda", dtype=frames.dtype) if autocast else contextlib.nullcontext()

    def forward():
        with precision:
            return fn(frames, tuples, relation, disc, 0.75)
    if mode == "forward":
        def call():
            with torch.no_grad():
                forward()
    elif mode == "backward":
        outs = forward()

        def call():
            torch.autograd.grad(outs, params, upstream, retain_graph=True)
    else:
        def call():
            torch.autograd.grad(forward(), params, upstream)
    call()                                                     # compile / plan caches outside the timing
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    bench = triton.testing.do_bench_cudagraph if graph else triton.testing.do_bench
    p50, p20, p80 = bench(call, quantiles=[0.5, 0.2, 0.8])
    return p50, p20, p80, peak


def gpu_table(labels, dtype, compile_reference, deadline=None):
    """Time every provider and mode on each shape; print the Markdown rows and return them as dicts."""
    from kernels import official_loop_reference, relation_attention, relation_attention_reference

    def triton_op(*a):
        return relation_attention(*a, backend="triton")

    half = dtype != torch.float32
    providers = {"official loop": (official_loop_reference, False, half), "torch": (relation_attention_reference,
                 False, half), "torch graph": (relation_attention_reference, True, half),
                 "torch.compile": None, "triton": (triton_op, False, False), "triton graph": (triton_op, True, False)}
    if not compile_reference:
        del providers["torch.compile"]
    tflops_peak, gbps_peak = peaks(dtype)
    name = str(dtype).replace("torch.", "")
    print(f"\n{name}: peaks {'n/a' if tflops_peak is None else f'{tflops_peak:.0f}'} TFLOP/s "
          f"({'FP32 FMA' if dtype == torch.float32 else 'dense tensor cores'}), {gbps_peak:.0f} GB/s")
    print("\n| shape | dtype | provider | mode | ms p50 (p20-p80) | TFLOP/s | GB/s | floor ms (bound) | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for label in labels:
        if deadline is not None and time.monotonic() > deadline:
            print(f"| {label} | {name} | (not timed: the --device-check time budget is spent) | | | | | | |")
            continue
        shape = SHAPES[label]
        inputs = make_inputs(shape, dtype, "cuda")
        if "torch.compile" in providers:
            # a fresh compile per shape: dynamo's recompile limit would otherwise send later shapes to eager
            torch._dynamo.reset()
            providers["torch.compile"] = (torch.compile(relation_attention_reference), False, half)
        for provider, (fn, graph, autocast) in providers.items():
            for mode in ("forward", "backward", "full"):
                if graph and mode == "backward":
                    continue
                flops, nbytes = work(shape, dtype, mode)
                result = fits(provider, shape, dtype)
                if result is None:
                    try:
                        result = bench_one(fn, inputs, mode, graph, autocast)
                    except torch.cuda.OutOfMemoryError:
                        result = "out of memory"
                    except Exception as e:             # one provider failing must not lose the rest of the table
                        result = f"error: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"
                    torch.cuda.empty_cache()
                compute_ms = None if tflops_peak is None else flops / (tflops_peak * 1e12) * 1e3
                memory_ms = nbytes / (gbps_peak * 1e9) * 1e3
                floor = max(compute_ms or 0.0, memory_ms)
                row = dict(shape=label, dtype=name, provider=provider, mode=mode, flops=flops, bytes=nbytes,
                           floor_ms=f"{floor:.3g}", bound="compute" if (compute_ms or 0) > memory_ms else "memory")
                if isinstance(result, str):
                    row.update(ms_p50=result, ms_p20="", ms_p80="", tflops="", gbps="", peak_mb="")
                else:
                    p50, p20, p80, peak = result
                    row.update(ms_p50=f"{p50:.4f}", ms_p20=f"{p20:.4f}", ms_p80=f"{p80:.4f}",
                               tflops=f"{flops / (p50 * 1e-3) / 1e12:.2f}", gbps=f"{nbytes / (p50 * 1e-3) / 1e9:.1f}",
                               peak_mb=f"{peak:.0f}")
                rows.append(row)
                timing = row["ms_p50"] + ("" if isinstance(result, str) else f" ({row['ms_p20']}-{row['ms_p80']})")
                print(f"| {label} | {name} | {provider} | {mode} | {timing} | {row['tflops']} | {row['gbps']} | "
                      f"{row['floor_ms']} ({row['bound']}) | {row['peak_mb']} |", flush=True)
    print_speedups(rows)
    return rows


def print_speedups(rows):
    """The issue's goals, forward+backward: ≥ 5× over the official loop, ≥ 2× over eager torch, no slower than the
    graphed or compiled reference; and how far from the floor the Triton op is."""
    print("\n| shape | dtype | official loop / triton | torch / triton | torch graph / triton | torch.compile / triton "
          "| triton / floor |")
    print("|---|---|---|---|---|---|---|")
    for label, name in dict.fromkeys((r["shape"], r["dtype"]) for r in rows):
        full = [r for r in rows if (r["shape"], r["dtype"], r["mode"]) == (label, name, "full")]
        ms = {r["provider"]: float(r["ms_p50"]) for r in full if r["ms_p50"].replace(".", "", 1).isdigit()}
        if "triton" not in ms:
            continue
        ratio = lambda p: f"{ms[p] / ms['triton']:.1f}×" if p in ms else "n/a"
        print(f"| {label} | {name} | {ratio('official loop')} | {ratio('torch')} | {ratio('torch graph')} | "
              f"{ratio('torch.compile')} | {ms['triton'] / max(float(full[0]['floor_ms']), 1e-9):.1f}× |")


def device_check():
    """The prepared GPU script: the compiled op against the float64 reference on every bench shape (fp32; fp16 and
    bf16 at TA3N's shape), then the fp32 table of every shape and a bf16 table of two, without torch.compile."""
    from kernels import relation_tuples
    deadline = time.monotonic() + DEVICE_CHECK_SECONDS
    ok = True
    for label, shape in SHAPES.items():
        B, T, D, H, Hd, max_per_scale = shape
        # the float64 reference keeps (R_n, n, B, H) gathered rows per scale: fewer videos where that passes 8 GB
        gathered = 8 * H * sum(t.numel() for t in relation_tuples(T, max_per_scale))
        small = (min(B, max(4, int(8e9 // gathered))),) + shape[1:]
        ok &= check(label + ("" if small[0] == B else f" (B = {small[0]})"), small, torch.float32, "cuda",
                    oracle=torch.float64)
    for dtype in (torch.float16, torch.bfloat16):
        ok &= check("ta3n", SHAPES["ta3n"], dtype, "cuda", oracle=torch.float64)
    rows = gpu_table(list(SHAPES), torch.float32, compile_reference=False, deadline=deadline)
    rows += gpu_table(["ta3n", "t16-all"], torch.bfloat16, compile_reference=False, deadline=deadline + 30)
    return ok, rows


def cpu_timing(args):
    """Forward+backward of the reference on the CPU (process time and wall time, medians over --rounds calls,
    providers alternating call by call), with --threads threads."""
    from kernels import official_loop_reference, relation_attention_reference
    torch.set_num_threads(args.threads)
    providers = {"torch (reference)": relation_attention_reference, "official loop": official_loop_reference}
    if args.baseline:
        spec = importlib.util.spec_from_file_location("baseline_relation", args.baseline)
        baseline = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(baseline)
        providers = {"baseline (" + os.path.basename(args.baseline) + ")": baseline.relation_attention_reference,
                     **providers}
    dtype = DTYPES[args.dtype]
    print(f"# CPU: torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.rounds} rounds, "
          f"forward+backward, {args.dtype}")
    print("\n| shape | provider | ms CPU p50 (p20-p80) | ms wall p50 | speed-up (CPU) vs first |")
    print("|---|---|---|---|---|")
    for label in args.shapes:
        frames, tuples, relation, disc, upstream = make_inputs(SHAPES[label], dtype, "cpu")
        params = leaves(frames, relation, disc)
        times = {name: [] for name in providers}
        for _ in range(args.rounds + 1):                   # the first round warms up and is not counted
            for name, fn in providers.items():
                cpu, wall = time.process_time(), time.perf_counter()
                torch.autograd.grad(fn(frames, tuples, relation, disc, 0.75), params, upstream)
                times[name].append((time.process_time() - cpu, time.perf_counter() - wall))
        first = None
        for name, samples in times.items():
            cpu = sorted(c * 1e3 for c, _ in samples[1:])
            wall = statistics.median(w * 1e3 for _, w in samples[1:])
            p50, p20, p80 = statistics.median(cpu), cpu[len(cpu) // 5], cpu[(4 * len(cpu)) // 5]
            first = first or p50
            print(f"| {label} | {name} | {p50:.1f} ({p20:.1f}-{p80:.1f}) | {wall:.1f} | {first / p50:.2f}× |")
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: kernels/bench.py needs a CUDA GPU (or --device cpu: CPU timing of the reference, "
                         "or --device cpu --check-only)")
    if args.device == "cpu":
        if not args.check_only:
            return cpu_timing(args)
        # Triton reads TRITON_INTERPRET when `kernels` decorates its kernels, which is why kernels is imported late
        if "kernels" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("error: with python -m, set TRITON_INTERPRET=1 in the environment for --device cpu")
        os.environ.setdefault("TRITON_INTERPRET", "1")
        if args.dtype != "fp32":
            raise SystemExit("error: the interpreter check runs in fp32 only")
        return 0 if all([check(label, shape, torch.float32, "cpu") for label, shape in CPU_SHAPES.items()]) else 1
    import triton
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} (CUDA {torch.version.cuda}) | "
          f"triton {triton.__version__} | TF32 matmul {torch.backends.cuda.matmul.allow_tf32}")
    if args.device_check:
        start = time.monotonic()
        ok, rows = device_check()
        print(f"\ndevice check: {'all correct' if ok else 'CORRECTNESS FAILURES above'}; "
              f"{time.monotonic() - start:.0f} s")
    else:
        dtype = DTYPES[args.dtype]
        if not all([check(label, SHAPES[label], dtype, "cuda") for label in args.shapes]):
            return 1
        if args.check_only:
            return 0
        ok, rows = True, gpu_table(args.shapes, dtype, compile_reference=not args.no_compile)
    if args.csv and rows:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["gpu", "torch", "triton"] + list(rows[0]))
            if new:
                writer.writeheader()
            for row in rows:
                writer.writerow(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                                     triton=triton.__version__, **row))
    return 0 if ok else 1


if __name__ == "__main__":
    if __package__ in (None, ""):
        # run as `python kernels/bench.py`: put the repository root (this file's parent folder) on the import path
        # so `import kernels` works; `python -m kernels.bench` needs no such line
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
