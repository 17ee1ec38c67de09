"""Compile every Triton kernel of kernels/relation.py for real NVIDIA GPUs, on a machine without one.

    python kernels/compile_check.py             # sm_80 + sm_90, the TA3N and t16-all shapes, fp32, fp16 and bf16
    python kernels/compile_check.py --fast      # the CI subset: sm_90, the TA3N shape, fp32 and bf16

The interpreter (TRITON_INTERPRET=1, which the CPU tests use) accepts code that the compiler rejects, so this script
compiles for real. It runs the real launchers, RelationAttentionFunction's forward and backward, on `meta` tensors
with each kernel's launch recorded instead of run, so every kernel is specialised exactly as a launch on that shape
would specialise it: pointer dtypes, the integer and alignment attributes of the arguments, the constexprs (block
sizes, flags) and num_warps. It covers the training call (discriminators, attention), use_attention=False, no
discriminators, and a forward without autograd (no ReLU' bits). Each distinct launch is then compiled with
triton.compile(..., target=GPUTarget("cuda", arch, 32)) through TTIR, TTGIR, LLVM IR and PTX to a cubin with the
ptxas that ships in Triton's wheel; ptxas's own `-v` report gives registers and spill bytes, the compiled metadata
the shared memory. The exit status is 1 on any compile failure or any spill, 0 otherwise. `kernels` is imported inside
the functions, after TRITON_INTERPRET has been cleared, because Triton reads it when the kernels are decorated.
"""
import argparse
import atexit
import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import time

import torch

SHAPES = {"ta3n": (202, 5, 512, 256, 256, 3), "t16-all": (202, 16, 512, 256, 256, None)}  # as in kernels/bench.py
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
KERNELS = ("_relation_fwd_kernel", "_attention_fwd_kernel", "_attention_bwd_kernel", "_relation_bwd_kernel")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fast", action="store_true", help="the CI subset: --archs 90 --shapes ta3n --dtypes fp32,bf16")
    p.add_argument("--archs", default="80,90", help="comma-separated compute capabilities (80: A100, 90: H100/H200)")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {', '.join(SHAPES)}")
    p.add_argument("--dtypes", default="fp32,fp16,bf16", help="comma-separated subset of fp32, fp16, bf16")
    args = p.parse_args(argv)
    if args.fast:
        args.archs, args.shapes, args.dtypes = "90", "ta3n", "fp32,bf16"
    args.archs = [int(a) for a in args.archs.split(",") if a]
    args.shapes, args.dtypes = [s for s in args.shapes.split(",") if s], [d for d in args.dtypes.split(",") if d]
    if unknown := [s for s in args.shapes if s not in SHAPES] + [d for d in args.dtypes if d not in DTYPES]:
        raise SystemExit(f"error: unknown shape or dtype {unknown}; shapes: {list(SHAPES)}, dtypes: {list(DTYPES)}")
    return args


@contextlib.contextmanager
def recorded(kernels, launches):
    """Within the block, `kernel[grid](*args, **kwargs)` appends (kernel, args, kwargs, grid) and launches nothing."""
    def recorder(kernel):
        def run(*args, grid, warmup, **kwargs):
            launches.append((kernel, args, kwargs, grid))
        return run
    for kernel in kernels:
        kernel.run = recorder(kernel)                    # an instance attribute shadows JITFunction.run
    try:
        yield
    finally:
        for kernel in kernels:
            del kernel.run


def capture_launches(shape, dtype):
    """The launches of relation_attention's forward and backward on meta tensors: [(kernel, args, kwargs, grid)]."""
    from kernels import relation
    B, T, D, H, Hd, max_per_scale = shape
    tuples = relation.relation_tuples(T, max_per_scale)

    def meta(*size):
        return torch.empty(*size, device="meta", dtype=dtype, requires_grad=True)

    frames = meta(B, T, D)
    weights = [(meta(H, t.shape[1] * D), meta(H)) for t in tuples]
    disc = [(meta(Hd, H), meta(Hd), meta(2, Hd), meta(2)) for _ in tuples]
    leaves = [frames] + [p for pair in weights for p in pair]
    launches = []
    with recorded([getattr(relation, name) for name in KERNELS], launches):
        for discriminators, use_attention, backward in ((disc, True, True), (disc, False, True), (None, True, True),
                                                        (disc, True, False)):
            with torch.set_grad_enabled(backward):
                outs = relation.relation_attention(frames, tuples, weights, discriminators, 0.75,
                                                   use_attention=use_attention, backend="triton")
            if backward:
                outs = [o for o in outs if o is not None]
                inputs = leaves + [p for quad in discriminators or [] for p in quad]
                torch.autograd.grad(outs, inputs, [torch.empty_like(o) for o in outs])
    return launches


def specialise(kernel, args, kwargs, arch):
    """What JITFunction.run derives from a launch before compiling (Triton 3.x): (source, options)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    kwargs = dict(kwargs, debug=kwargs.get("debug", kernel.debug) or knobs.runtime.debug,
                  instrumentation_mode=knobs.compilation.instrumentation_mode,
                  fpsan_homomorphic_casts=knobs.compilation.fpsan_homomorphic_casts)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), options


def compile_launch(kernel, args, kwargs, arch):
    """Compile one captured launch for sm_<arch>: a dict with registers, spill bytes and shared memory, or `error`."""
    import triton
    from triton.backends.compiler import GPUTarget
    start, log = time.perf_counter(), io.StringIO()
    try:
        src, options = specialise(kernel, args, kwargs, arch)
        with contextlib.redirect_stdout(log):            # Triton prints ptxas's -v report (and any reproducer) here
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options.__dict__)
    except Exception as e:                               # a compile failure is a result, reported on one line
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
        message = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"   # where, then what
        return dict(error=f"{type(e).__name__}: {message[:300]}".replace("|", "/"), seconds=time.perf_counter() - start)
    report = log.getvalue()
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    if registers is None or spills is None or "cubin" not in compiled.asm:
        return dict(error="no ptxas -v report or no cubin", seconds=time.perf_counter() - start)
    return dict(registers=int(registers.group(1)), spill_stores=int(spills.group(1)),
                spill_loads=int(spills.group(2)), shared=compiled.metadata.shared,
                num_warps=compiled.metadata.num_warps, seconds=time.perf_counter() - start)


def describe(args, kwargs, grid):
    """A launch in a few words: its tensors' dtypes, constexprs and num_warps; and its number of programs."""
    dtypes = "+".join(sorted({str(a.dtype).replace("torch.", "") for a in args if torch.is_tensor(a)}))
    constexprs = ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()) if k not in ("num_warps", "ACC"))
    programs = 1
    for g in grid:
        programs *= g
    return f"{dtypes}; {constexprs}, warps={kwargs.get('num_warps', 4)}", programs


def check(launches, archs, label, seen):
    """Compile each launch not in `seen` for each arch; returns (Markdown rows, number of failed or spilling ones)."""
    rows, failures = [], 0
    for kernel, kargs, kwargs, grid in launches:
        what, programs = describe(kargs, kwargs, grid)
        for arch in archs:
            src, options = specialise(kernel, kargs, kwargs, arch)
            key = (label, arch, src.hash(), str(options))
            if key in seen:
                continue
            seen.add(key)
            result = compile_launch(kernel, kargs, kwargs, arch)
            if "error" in result:
                failures += 1
                cells = f"FAILED: {result['error']} | | |"
            else:
                spilled = result["spill_stores"] + result["spill_loads"]
                failures += spilled > 0
                cells = (f"{result['registers']} | {result['spill_stores']}/{result['spill_loads']}"
                         f"{' SPILL' if spilled else ''} | {result['shared']} |")
            rows.append(f"| {kernel.__name__} | {label} | sm_{arch} | {what} | {programs} | {cells} "
                        f"{result['seconds']:.1f} |")
    return rows, failures


def use_the_compiler():
    """Compile for real (not the interpreter), run ptxas on every compile and keep its -v report, in a fresh cache
    directory that is removed at exit."""
    os.environ["TRITON_INTERPRET"] = "0"
    if "kernels.relation" in sys.modules and sys.modules["kernels.relation"].triton.knobs.runtime.interpret:
        raise SystemExit("error: kernels was imported with TRITON_INTERPRET=1; run this script in a fresh process")
    from triton import knobs
    knobs.compilation.always_compile = True
    knobs.nvidia.dump_ptxas_log = True
    knobs.cache.dir = tempfile.mkdtemp(prefix="vidda-compile-check-")
    atexit.register(shutil.rmtree, knobs.cache.dir, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    use_the_compiler()
    print(f"# triton {__import__('triton').__version__}, ptxas from its wheel; archs {args.archs}, shapes "
          f"{args.shapes}, dtypes {args.dtypes}")
    print("\n| kernel | shape | arch | specialisation | programs | registers | spill bytes (st/ld) | shared B | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    failures, seen = 0, set()
    for label in args.shapes:
        for dtype_name in args.dtypes:
            rows, failed = check(capture_launches(SHAPES[label], DTYPES[dtype_name]), args.archs, label, seen)
            print("\n".join(rows), flush=True)
            failures += failed
    print(f"\n{len(seen)} compilations, {failures} failed or spilled")
    return 1 if failures else 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        # run as `python kernels/compile_check.py`: put the repository root (this file's parent folder) on the import
        # path so `import kernels` works; `python -m kernels.compile_check` needs no such line
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
