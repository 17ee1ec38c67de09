"""kernels/compile_check.py: every kernel compiles for sm_90 (ptxas from Triton's wheel, no GPU needed) at TA3N's
shape in fp32 and bf16 without a register spill, and the check fails on a kernel that the interpreter runs but the
compiler rejects (a Python `break`), on an fp16 × fp32 tl.dot (Triton 3.9 rejects it in the interpreter too) and on a
kernel that spills.

The compiler runs in a subprocess: tests/conftest.py sets TRITON_INTERPRET=1 for this process on a machine without a
GPU, and Triton reads it when a kernel is decorated, so kernels imported here are interpreter kernels.
"""
import importlib.util
import os
import re
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = {"_relation_fwd_kernel", "_attention_fwd_kernel", "_attention_bwd_kernel", "_relation_bwd_kernel"}

BROKEN = '''
import sys

import torch
import triton
import triton.language as tl

from kernels import compile_check


@triton.jit
def early_exit_kernel(x_ptr, out_ptr, n):
    found = n                                     # the index of the first positive element, by a Python break
    for i in range(0, n):
        if tl.load(x_ptr + i) > 0:
            found = i
            break
    tl.store(out_ptr, found)


@triton.jit
def mixed_dot_kernel(a_ptr, b_ptr, c_ptr):
    offs = tl.arange(0, 16)
    tile = offs[:, None] * 16 + offs[None, :]
    tl.store(c_ptr + tile, tl.dot(tl.load(a_ptr + tile), tl.load(b_ptr + tile)))      # fp16 x fp32


@triton.jit
def spilling_kernel(x_ptr, y_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tile = offs[:, None] * N + offs[None, :]
    x = tl.load(x_ptr + tile)                     # with one warp, 512 values per thread stay live until the max
    y = tl.exp(x - tl.max(x, axis=1)[:, None])
    tl.store(y_ptr + tile, y / tl.sum(y, axis=1)[:, None])


if __name__ == "__main__":
    compile_check.use_the_compiler()
    launches = []
    with compile_check.recorded([early_exit_kernel, mixed_dot_kernel, spilling_kernel], launches):
        early_exit_kernel[(1,)](torch.empty(4, device="meta"), torch.empty(1, device="meta", dtype=torch.int32), 4)
        mixed_dot_kernel[(1,)](*(torch.empty(256, device="meta", dtype=d)
                                 for d in (torch.float16, torch.float32, torch.float32)))
        spilling_kernel[(1,)](torch.empty(128 * 128, device="meta"), torch.empty(128 * 128, device="meta"), N=128,
                              num_warps=1)
    rows, failures = compile_check.check(launches, [90], "test", set())
    print("\\n".join(rows))
    sys.exit(1 if failures else 0)
'''


def run_with_the_compiler(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def table(stdout):
    """The Markdown rows of the check's table, as lists of cells."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in stdout.splitlines()
            if re.match(r"\| (_|early|mixed|spilling)", line)]


def test_fast_subset_compiles_every_kernel_without_spills():
    result = run_with_the_compiler("kernels/compile_check.py", "--fast")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = table(result.stdout)
    assert {row[0] for row in rows} == KERNELS
    for kernel, shape, arch, what, programs, registers, spills, shared, _ in rows:
        assert (shape, arch, spills) == ("ta3n", "sm_90", "0/0"), (kernel, what)
        assert 0 < int(registers) <= 255 and int(shared) >= 0 and int(programs) >= 132   # fills a 132-SM GPU
    assert any("bfloat16" in row[3] for row in rows) and all("float32" in row[3] for row in rows)
    assert re.search(r"\n(\d+) compilations, 0 failed or spilled", result.stdout)


def test_check_fails_on_a_kernel_the_interpreter_accepts(tmp_path):
    path = tmp_path / "broken_kernels.py"
    path.write_text(BROKEN)

    # the interpreter runs the kernel with a `break` (this process has TRITON_INTERPRET=1 without a GPU) ...
    if not torch.cuda.is_available():
        spec = importlib.util.spec_from_file_location("broken_kernels", path)
        broken = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(broken)
        found = torch.zeros(1, dtype=torch.int32)
        broken.early_exit_kernel[(1,)](torch.tensor([-1.0, -2.0, 3.0, 4.0]), found, 4)
        assert found.item() == 2

    # ... the compiler rejects it and the mixed-dtype dot, and the spill of the third kernel is caught
    result = run_with_the_compiler(str(path))
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-4000:]
    rows = {row[0]: row for row in table(result.stdout)}
    assert rows["early_exit_kernel"][5].startswith("FAILED: UnsupportedLanguageConstruct")
    assert "Break" in rows["early_exit_kernel"][5]
    assert rows["mixed_dot_kernel"][5].startswith("FAILED: CompilationError")
    assert "Both operands must be same dtype" in rows["mixed_dot_kernel"][5]
    assert rows["spilling_kernel"][6].endswith("SPILL") and int(rows["spilling_kernel"][5]) > 0
