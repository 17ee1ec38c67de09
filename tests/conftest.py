"""Test set-up shared by every test file.

Triton reads TRITON_INTERPRET when `triton.jit` decorates a kernel, i.e. when `kernels` is imported, so it must
be set here, before any test module imports `kernels` (a monkeypatch inside a test would be too late). On a
machine with a CUDA GPU the kernels run compiled instead.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# one intra-op thread: the test models are tiny, and more threads slow every test down on a shared machine
torch.set_num_threads(1)
