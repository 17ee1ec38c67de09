"""kernels/: the fused relation-attention op against a float64 oracle (forward and gradients, several awkward shapes),
gradcheck, the GRL's sign and scale, hand-computed entropy/attention values, the tuple table and its used pairs (by
hand, and the reference against the previous formulas on random tables), dtypes, dispatch and the benchmark's
arithmetic. The GPU compilation of the kernels is checked in tests/test_compile_check.py.

Without a GPU, tests/conftest.py sets TRITON_INTERPRET=1 before `kernels` is imported, so the Triton kernels run
through the interpreter on the CPU (tiny shapes keep this file to about a minute on 2 cores); on a GPU they run
compiled. No timing assertions here: timings live in kernels/bench.py.
"""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kernels import (official_loop_reference, relation_attention, relation_attention_reference, relation_tuples,
                     used_pairs)
import kernels.bench as bench
import kernels.relation as kernels_relation
from helpers import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (atol, rtol) per (device, dtype), relative to the float64 oracle. atol is multiplied by the largest |value| of the
# compared tensor, because R_n sums up to C(T, n) tuples and its rounding error grows with that sum.
# fp32 CPU: the interpreter computes in numpy fp32; measured worst over SHAPES 6.2e-7 (forward), 3.3e-6 (gradients).
# fp32 GPU: cuBLAS fp32 (TF32 off, torch's default) and tl.dot(input_precision="ieee"); not yet measured. Looser
#   than CPU because another summation order can flip a ReLU whose input is within rounding of 0, which moves that
#   tuple's whole gradient (the fp32 reference itself reaches 3.5e-5 on the T = 10 full table).
# fp16/bf16 (GPU only): P is stored in the input dtype (2^-11 and 2^-8 relative rounding); not yet measured.
TOLERANCES = {
    ("cpu", torch.float32): (1e-5, 1e-5),
    ("cuda", torch.float32): (1e-4, 1e-5),
    ("cuda", torch.float16): (1e-2, 1e-2),
    ("cuda", torch.bfloat16): (5e-2, 5e-2),
}



def make_problem(B, T, D, H, Hd, max_per_scale, dtype=torch.float32, discriminators=True, seed=0):
    """Frames and weights drawn like nn.Linear's default init, on DEVICE, as leaves that require grad."""
    g = torch.Generator().manual_seed(seed)

    def uniform(*shape, fan_in):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(fan_in))

    tuples = relation_tuples(T, max_per_scale)
    frames = torch.rand(B, T, D, generator=g, dtype=torch.float64)             # post-ReLU features are >= 0
    relation = [(uniform(H, t.shape[1] * D, fan_in=t.shape[1] * D), uniform(H, fan_in=t.shape[1] * D))
                for t in tuples]
    disc = [(uniform(Hd, H, fan_in=H), uniform(Hd, fan_in=H), uniform(2, Hd, fan_in=Hd), uniform(2, fan_in=Hd))
            for _ in tuples] if discriminators else None

    def leaf(t):
        return t.to(DEVICE, dtype).requires_grad_(True)

    relation = [(leaf(w), leaf(b)) for w, b in relation]
    disc = [tuple(leaf(p) for p in quad) for quad in disc] if disc else None
    return leaf(frames), [t.to(DEVICE) for t in tuples], relation, disc


def leaves(frames, relation, disc):
    return [frames] + [p for pair in relation for p in pair] + [p for quad in (disc or []) for p in quad]


def run(fn, frames, tuples, relation, disc, grl_scale, upstream, **kw):
    """Outputs and the gradients of Σ <output, upstream> w.r.t. every leaf (random upstream gradients)."""
    outs = fn(frames, tuples, relation, disc, grl_scale, **kw)
    loss = sum((o.double() * u).sum() for o, u in zip(outs, upstream) if o is not None)
    return outs, torch.autograd.grad(loss, leaves(frames, relation, disc))


def random_upstream(B, S, H, seed=1):
    """Random dL/dh, dL/dw, dL/dR, dL/dd̂ (float64): the op sits mid-network, so not just .sum()."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)
            for shape in ((B, H), (B, S), (B, S, H), (B, S, 2))]


def as_float64(frames, relation, disc):
    def up(t):
        return t.detach().double().requires_grad_(True)
    return up(frames), [(up(w), up(b)) for w, b in relation], [tuple(up(p) for p in q) for q in disc] if disc else None


# ---- 1. the tuple table -------------------------------------------------------------------------------------------

def test_official_table_for_five_frames():
    want = {5: [(0, 1, 2, 3, 4)], 4: [(0, 1, 2, 3), (0, 1, 3, 4), (1, 2, 3, 4)], 3: [(0, 1, 2), (0, 2, 4), (1, 2, 4)],
            2: [(0, 1), (1, 2), (2, 3)]}                         # official TA3N code, TRNmodule.py:60-71
    table = relation_tuples(5)
    assert [t.shape[1] for t in table] == [5, 4, 3, 2]
    for t in table:
        assert t.dtype == torch.long and [tuple(r) for r in t.tolist()] == want[t.shape[1]]


@pytest.mark.parametrize("T", [2, 3, 5, 8, 16])
def test_table_counts_and_order(T):
    full, official = relation_tuples(T, max_per_scale=None), relation_tuples(T)
    assert [t.shape[1] for t in full] == list(range(T, 1, -1))
    for f, o in zip(full, official):
        n = f.shape[1]
        assert f.shape[0] == math.comb(T, n) and o.shape[0] == min(3, math.comb(T, n))
        assert len({tuple(r) for r in f.tolist()}) == f.shape[0]                 # no duplicates
        for t in (f, o):
            assert bool((t[:, 1:] > t[:, :-1]).all()) and t.min() >= 0 and t.max() < T   # strictly increasing in time


def listed(pairs):
    """used_pairs() as plain lists: (scale, position, frame) per row, tuple rows per scale, groups per scale."""
    rows = list(zip(*(pairs[k].tolist() for k in ("pair_scale", "pair_position", "pair_frame"))))
    groups = [[(p.tolist(), f.tolist()) for p, f in scale] for scale in pairs["groups"]]
    return rows, [t.tolist() for t in pairs["tuple_rows"]], groups


def test_used_pairs_three_frames():
    """T = 3 (the official table is every tuple): 3 + 4 rows instead of 3·3 + 3·2 frame-position products."""
    rows, tuple_rows, groups = listed(used_pairs(relation_tuples(3)))
    assert rows == [(0, 0, 0), (0, 1, 1), (0, 2, 2),                               # scale 3: (0, 1, 2)
                    (1, 0, 0), (1, 0, 1), (1, 1, 1), (1, 1, 2)]                    # scale 2: frames 0-1 at j=0, 1-2 at j=1
    assert tuple_rows == [[[0, 1, 2]], [[0, 2], [0, 3], [1, 3]]]                   # (0, 1), (0, 2), (1, 2); rows per scale
    assert groups == [[([0, 1, 2], [[0], [1], [2]])], [([0, 1], [[0, 1], [1, 2]])]]


def test_used_pairs_official_five_frames():
    """TA3N's table: 25 distinct (frame, position) pairs where the official loop multiplies 32."""
    rows, tuple_rows, groups = listed(used_pairs(relation_tuples(5)))
    want = [(0, j, j) for j in range(5)]                                           # scale 5: (0, 1, 2, 3, 4)
    want += [(1, j, t) for j in range(4) for t in (j, j + 1)]                      # scale 4: j uses frames j, j + 1
    want += [(2, 0, 0), (2, 0, 1), (2, 1, 1), (2, 1, 2), (2, 2, 2), (2, 2, 4)]     # scale 3: (0,1,2) (0,2,4) (1,2,4)
    want += [(3, 0, 0), (3, 0, 1), (3, 0, 2), (3, 1, 1), (3, 1, 2), (3, 1, 3)]     # scale 2: (0,1) (1,2) (2,3)
    assert rows == want and len(rows) == 25
    assert tuple_rows == [[[0, 1, 2, 3, 4]],
                          [[0, 2, 4, 6], [0, 2, 5, 7], [1, 3, 5, 7]],
                          [[0, 2, 4], [0, 3, 5], [1, 3, 5]],
                          [[0, 3], [1, 4], [2, 5]]]
    assert groups == [[([0, 1, 2, 3, 4], [[0], [1], [2], [3], [4]])],
                      [([0, 1, 2, 3], [[0, 1], [1, 2], [2, 3], [3, 4]])],
                      [([0, 1, 2], [[0, 1], [1, 2], [2, 4]])],
                      [([0, 1], [[0, 1, 2], [1, 2, 3]])]]


def test_used_pairs_ragged_table():
    """Positions that use different numbers of frames form separate groups, narrowest first."""
    rows, tuple_rows, groups = listed(used_pairs([torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1], [0, 3]])]))
    assert rows == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 0), (1, 1, 1), (1, 1, 3)]
    assert tuple_rows == [[[0, 1, 2]], [[0, 1], [0, 2]]]
    assert groups == [[([0, 1, 2], [[0], [1], [2]])], [([0], [[0]]), ([1], [[1, 3]])]]


@pytest.mark.parametrize("T", [2, 3, 5, 8, 16])
def test_used_pairs_never_exceed_the_loop(T):
    """Each tuple element is one used pair; full tables use position j with frames j..T−n+j only."""
    for max_per_scale in (3, None):
        tables = relation_tuples(T, max_per_scale)
        pairs = used_pairs(tables)
        count = len(pairs["pair_frame"])
        assert count <= sum(t.numel() for t in tables) and count <= T * sum(t.shape[1] for t in tables)
        if max_per_scale is None:
            assert count == sum(n * (T - n + 1) for n in range(2, T + 1))
        offset = 0
        for tup, rows in zip(tables, pairs["tuple_rows"]):                          # each element's row: its frame, j
            assert torch.equal(pairs["pair_frame"][rows + offset], tup)
            assert torch.equal(pairs["pair_position"][rows + offset], torch.arange(tup.shape[1]).expand_as(tup))
            offset += int(rows.max()) + 1


# ---- 2. the reference against hand-computed values ------------------------------------------------------------

def attention_problem(b2):
    """Discriminators whose logits are the constant b2 (W2 = 0), so w and h can be computed by hand."""
    frames, tuples, relation, disc = make_problem(2, 5, 6, 8, 4, 3, dtype=torch.float64)
    disc = [(w1, b1, torch.zeros_like(w2), torch.tensor(b2, dtype=torch.float64, device=DEVICE))
            for w1, b1, w2, _ in disc]
    return frames, tuples, relation, disc


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("b2, weight", [
    ((0.0, 0.0), 1 - math.log(2)),                                             # uniform: H = ln 2, w = 0.30685
    ((50.0, -50.0), 1.0),                                                      # one-hot: H → 0, w → 1, weight 2
    ((math.log(3), 0.0), 1 + 0.75 * math.log(0.75) + 0.25 * math.log(0.25)),   # p = (3/4, 1/4): w = 0.43766
])
def test_entropy_attention_by_hand(backend, b2, weight):
    frames, tuples, relation, disc = attention_problem(b2)
    h, w, R, d = relation_attention(frames, tuples, relation, disc, 0.75, backend=backend)
    assert_close(d, torch.tensor(b2, dtype=torch.float64).expand(2, 4, 2), 1e-12, 0, "logits")
    assert_close(w, torch.full((2, 4), weight, dtype=torch.float64), 1e-12, 0, "w")
    assert_close(h, (1 + weight) * R.sum(1), 1e-12, 1e-12, "h = Σ (1 + w) R")
    h_plain, *_ = relation_attention(frames, tuples, relation, disc, 0.75, use_attention=False, backend=backend)
    assert_close(h_plain, R.sum(1), 1e-12, 1e-12, "h without attention")


def test_relation_by_hand():
    """R_n for one video, one tuple per scale, written out with explicit concatenation."""
    frames, tuples, relation, _ = make_problem(1, 3, 4, 5, 4, 1, dtype=torch.float64)
    _, _, R, _ = relation_attention_reference(frames, tuples, relation, None, 0.5)
    x = frames[0]
    want0 = F.relu(torch.cat([x[0], x[1], x[2]]) @ relation[0][0].T + relation[0][1])   # scale 3: (0, 1, 2)
    want1 = F.relu(torch.cat([x[0], x[1]]) @ relation[1][0].T + relation[1][1])         # scale 2: (0, 1)
    assert_close(R[0], torch.stack([want0, want1]), 1e-12, 0, "R")


# ---- 3. Triton op vs the float64 oracle, forward and gradients ----------------------------------------------------

SHAPES = [  # B, T, D, H, Hd, max_per_scale: batch 1, odd batches, widths that are not powers of two, T from 2 to 16
    (1, 2, 8, 16, 16, None),
    (3, 5, 24, 20, 12, 3),       # TA3N's structure: 5 frames, the official 3-per-scale table
    (5, 5, 16, 33, 40, None),    # every tuple of 5 frames
    (2, 8, 12, 24, 16, 3),
    (17, 4, 16, 72, 20, None),   # 17 videos: two attention programs; H = 72: two relation blocks of 64
    (3, 10, 8, 16, 16, None),    # 1013 tuples, up to 252 per scale: several tuple blocks per program
    (2, 16, 8, 16, 24, 3),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-D{}-H{}-Hd{}-{}".format(*s[:5], s[5] or "all"))
def test_triton_matches_float64_reference(shape):
    B, T, _, H, _, _ = shape
    atol, rtol = TOLERANCES[(DEVICE, torch.float32)]
    frames, tuples, relation, disc = make_problem(*shape)
    upstream = random_upstream(B, len(tuples), H)
    outs, grads = run(relation_attention, frames, tuples, relation, disc, 0.75, upstream, backend="triton")
    x64, rel64, disc64 = as_float64(frames, relation, disc)
    want, want_grads = run(relation_attention_reference, x64, tuples, rel64, disc64, 0.75, upstream)
    for name, got, ref in zip("hwRd", outs, want):
        assert got.dtype == torch.float32
        assert_close(got, ref, atol * max(1.0, ref.abs().max().item()), rtol, f"output {name}")
    for k, (got, ref) in enumerate(zip(grads, want_grads)):
        assert_close(got, ref, atol * max(1.0, ref.abs().max().item()), rtol, f"gradient of leaf {k}")


@pytest.mark.parametrize("discriminators, use_attention", [(True, False), (False, True)],
                         ids=["no-attention", "no-discriminators"])
def test_triton_variants(discriminators, use_attention):
    atol, rtol = TOLERANCES[(DEVICE, torch.float32)]
    frames, tuples, relation, disc = make_problem(3, 6, 10, 24, 16, None, discriminators=discriminators)
    upstream = random_upstream(3, len(tuples), 24)
    outs, grads = run(relation_attention, frames, tuples, relation, disc, 0.5, upstream, backend="triton",
                      use_attention=use_attention)
    x64, rel64, disc64 = as_float64(frames, relation, disc)
    want, want_grads = run(relation_attention_reference, x64, tuples, rel64, disc64, 0.5, upstream,
                           use_attention=use_attention)
    assert (outs[1] is None) == (outs[3] is None) == (not discriminators)
    for got, ref in zip(list(outs) + list(grads), list(want) + list(want_grads)):
        if ref is not None:
            assert_close(got, ref, atol * max(1.0, ref.abs().max().item()), rtol, "output or gradient")


@pytest.mark.skipif(DEVICE == "cpu", reason="65,519 tuples take ≈ 40 s in the interpreter; runs compiled on a GPU")
def test_triton_full_table_sixteen_frames():
    atol, rtol = TOLERANCES[(DEVICE, torch.float32)]
    frames, tuples, relation, disc = make_problem(3, 16, 24, 40, 16, None)
    upstream = random_upstream(3, len(tuples), 40)
    outs, grads = run(relation_attention, frames, tuples, relation, disc, 0.75, upstream, backend="triton")
    x64, rel64, disc64 = as_float64(frames, relation, disc)
    want, want_grads = run(relation_attention_reference, x64, tuples, rel64, disc64, 0.75, upstream)
    for got, ref in zip(list(outs) + list(grads), list(want) + list(want_grads)):
        assert_close(got, ref, atol * max(1.0, ref.abs().max().item()), rtol, "output or gradient")


# ---- 4. half precision --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_accepts_half_inputs(dtype):
    """The CPU training path takes fp16/bf16, computes in fp32 and returns the input dtype."""
    frames, tuples, relation, disc = make_problem(3, 5, 16, 24, 16, 3, dtype=dtype)
    outs, grads = run(relation_attention_reference, frames, tuples, relation, disc, 0.75, random_upstream(3, 4, 24))
    x32, rel32, disc32 = as_float64(frames, relation, disc)
    want = relation_attention_reference(x32.float(), tuples, [(w.float(), b.float()) for w, b in rel32],
                                        [tuple(p.float() for p in q) for q in disc32], 0.75)
    for got, ref in zip(outs, want):
        assert got.dtype == dtype
        assert_close(got, ref, 2 ** -7 * max(1.0, ref.abs().max().item()), 0, "half output vs fp32 of the same inputs")
    assert all(g.dtype == dtype and bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.skipif(DEVICE == "cpu", reason="fp16/bf16 kernels are checked on a GPU (the interpreter has no bf16)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 512, 256, 256, 3), (5, 8, 64, 96, 48, None)], ids=["ta3n-width", "full8"])
def test_triton_half_matches_float64_reference(dtype, shape):
    atol, rtol = TOLERANCES[(DEVICE, dtype)]
    frames, tuples, relation, disc = make_problem(*shape, dtype=dtype)
    upstream = random_upstream(shape[0], len(tuples), shape[3])
    outs, grads = run(relation_attention, frames, tuples, relation, disc, 0.75, upstream, backend="triton")
    x64, rel64, disc64 = as_float64(frames, relation, disc)
    want, want_grads = run(relation_attention_reference, x64, tuples, rel64, disc64, 0.75, upstream)
    for got, ref in zip(list(outs) + list(grads), list(want) + list(want_grads)):
        assert got.dtype == dtype
        assert_close(got, ref, atol * max(1.0, ref.abs().max().item()), rtol, f"{dtype} output or gradient")


# ---- 5. gradients: gradcheck, the GRL, the official loop ----------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gradcheck_float64(backend):
    """grl_scale = −1 makes the GRL's backward (−λ·g) the identity, so autograd must match finite differences.
    The Triton path accepts float64 (it then accumulates in float64), so the hand-written backward is checked too."""
    width = 16 if backend == "triton" else 5                                    # the kernels' tiles are >= 16 wide
    frames, tuples, relation, disc = make_problem(2, 3, 4, width, width, None, dtype=torch.float64)
    num_scales = len(tuples)

    def fn(x, *params):
        rel = [params[2 * s:2 * s + 2] for s in range(num_scales)]
        dis = [params[2 * num_scales + 4 * s:2 * num_scales + 4 * s + 4] for s in range(num_scales)]
        return relation_attention(x, tuples, rel, dis, -1.0, backend=backend)

    # the reference gets the full Jacobian; fast mode (random projections) keeps the interpreter to a few dozen calls
    assert torch.autograd.gradcheck(fn, tuple(leaves(frames, relation, disc)), fast_mode=backend == "triton")


def plain_forward(frames, tuples, relation, disc, detach_discriminator_input):
    """Eqs. (5)-(8) with no GRL, by loops and explicit concatenation, written independently of kernels/."""
    relations = []
    for tup, (w, b) in zip(tuples, relation):
        relations.append(sum(F.relu(torch.cat([frames[:, t] for t in row], 1) @ w.T + b) for row in tup.tolist()))
    h = 0
    for (w1, b1, w2, b2), r in zip(disc, relations):
        logits = F.relu((r.detach() if detach_discriminator_input else r) @ w1.T + b1) @ w2.T + b2
        p = torch.softmax(logits, 1)
        h = h + (2 + (p * p.log()).sum(1, keepdim=True)) * r                   # (1 + w) R, w = 1 − H
    return h


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("grl_scale", [0.75, 2.0])
def test_grl_reverses_and_scales_only_the_discriminator_path(backend, grl_scale):
    """Into frames and relation weights g = g_direct − λ·g_via_discriminator; into the discriminators, normal sign."""
    frames, tuples, relation, disc = make_problem(2, 4, 6, 16, 16, 3, dtype=torch.float64)
    params = leaves(frames, relation, disc)
    upstream = torch.randn(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    g_true = torch.autograd.grad((plain_forward(frames, tuples, relation, disc, False) * upstream).sum(), params)
    g_direct = torch.autograd.grad((plain_forward(frames, tuples, relation, disc, True) * upstream).sum(), params,
                                   allow_unused=True)
    h, *_ = relation_attention(frames, tuples, relation, disc, grl_scale, backend=backend)
    got = torch.autograd.grad((h * upstream).sum(), params)
    num_relation = 1 + 2 * len(tuples)                                         # frames, then W_n, b_n per scale
    for k, (g, t, d) in enumerate(zip(got, g_true, g_direct)):
        want = d - grl_scale * (t - d) if k < num_relation else t
        assert_close(g, want, 1e-10, 1e-10, f"leaf {k}")
    assert not torch.allclose(g_true[0], g_direct[0])                          # the discriminator path is not trivial


def test_official_loop_matches_reference():
    """Both of the reference's forms (gather for R_n <= T, projection for R_n > T) against one Linear per tuple."""
    frames, tuples, relation, disc = make_problem(3, 6, 10, 12, 8, None, dtype=torch.float64)
    assert min(t.shape[0] for t in tuples) <= 6 < max(t.shape[0] for t in tuples)  # both forms are exercised
    upstream = random_upstream(3, len(tuples), 12)
    got, got_grads = run(relation_attention_reference, frames, tuples, relation, disc, 0.75, upstream)
    want, want_grads = run(official_loop_reference, frames, tuples, relation, disc, 0.75, upstream)
    for g, w in zip(list(got) + list(got_grads), list(want) + list(want_grads)):
        assert_close(g, w, 1e-12, 1e-12, "reference vs official loop")


def random_tables(T, seed):
    """Per scale a random, time-ordered subset (1 to 6 tuples) of the n-frame combinations: mostly ragged groups."""
    g = torch.Generator().manual_seed(seed)
    tables = []
    for n, full in zip(range(T, 1, -1), relation_tuples(T, max_per_scale=None)):
        keep = torch.randperm(full.shape[0], generator=g)[:int(torch.randint(1, 7, (1,), generator=g))]
        tables.append(full[keep.sort().values])
    return tables


def previous_relations(frames, tuples, relation_weights, form):
    """R (B, S, H) by the two forms of the previous reference: "gather" concatenates each tuple's frames into one
    Linear; "all-frames" projects every frame at every position of every scale and gather-sums n rows."""
    B, T, D = frames.shape
    relations = []
    for tup, (weight, bias) in zip(tuples, relation_weights):
        num_tuples, n = tup.shape
        if form == "gather":
            pre = F.linear(frames[:, tup].reshape(B, num_tuples, n * D), weight, bias)
        else:
            per_position = weight.reshape(-1, n, D).permute(2, 1, 0).reshape(D, -1)
            projected = (frames.reshape(B * T, D) @ per_position).view(B, T, n, -1)     # (B, T, n, H)
            pre = bias + sum(projected[:, tup[:, j], j] for j in range(n))
        relations.append(F.relu(pre).sum(1))
    return torch.stack(relations, 1)


@pytest.mark.parametrize("T, seed", [(3, 0), (5, 1), (6, 2), (9, 3)])
@pytest.mark.parametrize("form", ["gather", "all-frames"])
def test_used_pairs_reference_matches_previous_formula(T, seed, form):
    """R and its gradients (w.r.t. frames, W_n, b_n) from used pairs equal the previous formulas' on random tables."""
    frames, _, relation, _ = make_problem(3, T, 7, 9, 4, None, dtype=torch.float64, discriminators=False, seed=seed)
    tables = random_tables(T, seed)                                              # same scales as make_problem's
    upstream = torch.randn(3, len(tables), 9, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    leaves_ = [frames] + [p for pair in relation for p in pair]
    _, _, got, _ = relation_attention_reference(frames, tables, relation, None, 0.5)
    want = previous_relations(frames, tables, relation, form)
    assert_close(got, want, 1e-12, 1e-12, "R")
    for k, (g, w) in enumerate(zip(torch.autograd.grad((got * upstream).sum(), leaves_),
                                   torch.autograd.grad((want * upstream).sum(), leaves_))):
        assert_close(g, w, 1e-12, 1e-12, f"gradient of leaf {k}")


@pytest.mark.parametrize("T, seed", [(4, 4), (7, 5)])
def test_triton_on_random_tables(T, seed):
    """Ragged tables (several groups per scale, rows shared by 1 to 6 tuples) through the Triton path."""
    atol, rtol = TOLERANCES[(DEVICE, torch.float32)]
    frames, _, relation, disc = make_problem(5, T, 6, 20, 16, None, seed=seed)
    tables = [t.to(DEVICE) for t in random_tables(T, seed)]
    upstream = random_upstream(5, len(tables), 20)
    outs, grads = run(relation_attention, frames, tables, relation, disc, 0.75, upstream, backend="triton")
    x64, rel64, disc64 = as_float64(frames, relation, disc)
    want, want_grads = run(relation_attention_reference, x64, tables, rel64, disc64, 0.75, upstream)
    for got, ref in zip(list(outs) + list(grads), list(want) + list(want_grads)):
        assert_close(got, ref, atol * max(1.0, ref.abs().max().item()), rtol, "output or gradient")


# ---- 6. dispatch and bad input -------------------------------------------------------------------------------------

def test_dispatch(monkeypatch):
    frames, tuples, relation, disc = make_problem(2, 3, 4, 16, 16, 3)

    def op_name(**kw):
        return type(relation_attention(frames, tuples, relation, disc, 0.5, **kw)[0].grad_fn).__name__

    assert "RelationAttentionFunction" in op_name(backend="triton")
    assert "RelationAttentionFunction" not in op_name(backend="torch")
    assert "RelationAttentionFunction" in op_name()          # auto: CUDA tensors, or CPU under TRITON_INTERPRET=1
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert "RelationAttentionFunction" not in op_name()                     # auto: CPU without the interpreter
    with pytest.raises(ValueError, match="backend"):
        op_name(backend="cuda")


def test_bad_input_is_rejected():
    frames, tuples, relation, disc = make_problem(2, 3, 4, 16, 16, 3)
    with pytest.raises(ValueError, match="strictly increasing"):
        relation_attention(frames, [tuples[0].flip(1), tuples[1]], relation, disc, 0.5, backend="triton")
    with pytest.raises(ValueError, match="W_n"):                                # weights of scale 3 given for scale 2
        relation_attention(frames, tuples, [relation[0], relation[0]], disc, 0.5, backend="triton")
    with pytest.raises(ValueError, match="W_n"):                                # a discriminator for 3 classes
        bad = [(w1, b1, torch.zeros(3, 16, device=DEVICE), torch.zeros(3, device=DEVICE)) for w1, b1, _, _ in disc]
        relation_attention(frames, tuples, relation, bad, 0.5, backend="triton")
    with pytest.raises(ValueError, match="max_per_scale|at least 2"):
        relation_tuples(1)


def test_self_check_passes_and_catches_a_wrong_kernel(monkeypatch):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert kernels_relation.self_check(device) == (True, "ok")
    # a reference that is off by 1e-2 in h must be reported, as must a kernel that raises
    real = kernels_relation.relation_attention_reference

    def shifted(*args, **kw):
        h, w, r, d = real(*args, **kw)
        return h + 1e-2, w, r, d
    monkeypatch.setattr(kernels_relation, "relation_attention_reference", shifted)
    ok, message = kernels_relation.self_check(device)
    assert not ok and "differ by 0.01" in message
    monkeypatch.setattr(kernels_relation, "RelationAttentionFunction", None)
    ok, message = kernels_relation.self_check(device)
    assert not ok and message.startswith("AttributeError")


# ---- 7. the benchmark's arithmetic and its behaviour without a GPU -------------------------------------------------

def test_bench_counts_the_used_pairs_work():
    B, T, D, H, Hd = 202, 5, 512, 256, 256
    forward = 2 * B * D * H * 25 + 2 * 4 * B * H * Hd                        # 25 used pairs, 4 discriminators
    for mode, factor in (("forward", 1), ("backward", 2), ("full", 3)):
        flops, nbytes = bench.work(bench.SHAPES["ta3n"], torch.float32, mode)
        assert flops == factor * forward
    inputs = B * T * D + sum(H * n * D + H for n in (5, 4, 3, 2)) + 4 * (Hd * H + Hd + 2 * Hd + 2)
    outputs = B * H + B * 4 + B * 4 * H + B * 4 * 2
    assert bench.work(bench.SHAPES["ta3n"], torch.bfloat16, "full") == (3 * forward, 2 * (3 * inputs + 2 * outputs))


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the behaviour without a GPU")
def test_bench_without_a_gpu():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    gpu = subprocess.run([sys.executable, "kernels/bench.py"], cwd=root, env=env, capture_output=True, text=True)
    assert gpu.returncode == 1 and gpu.stdout == "" and gpu.stderr.startswith("error: ")
    assert len(gpu.stderr.strip().splitlines()) == 1
    cpu = subprocess.run([sys.executable, "kernels/bench.py", "--device", "cpu", "--rounds", "1"], cwd=root,
                         env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert cpu.returncode == 0, cpu.stderr
    rows = [line.split("|")[1:-1] for line in cpu.stdout.splitlines() if line.startswith("| ta3n")]
    assert [r[1].strip() for r in rows] == ["torch (reference)", "official loop"]
    assert all(float(r[2].split()[0]) > 0 for r in rows) and rows[0][4].strip() == "1.00×"
