"""Fused n-frame relation enumeration and entropy domain attention (TA3N, Chen et al., ICCV 2019, Eqs. 5-8).

For frames x (B, T, D) and, per scale n = T, T-1, ..., 2, a table of R_n time-ordered n-frame tuples:
  Eq. (5)  R_n = Σ_{tuples t} ReLU(concat(x[:, t_0], ..., x[:, t_{n-1}]) · W_nᵀ + b_n)   (B, H)  TRN-M, summed
  Eq. (6)  d̂_n = G_rd^n(GRL_λ(R_n)),  G_rd^n(r) = ReLU(r·W1ᵀ + b1)·W2ᵀ + b2              (B, 2)
  Eq. (7)  w_n = 1 − H(softmax(d̂_n)),  H(p) = −Σ_c p_c ln p_c                             (B,)
  Eq. (8)  h   = Σ_n (1 + w_n) · R_n       (Σ_n R_n with use_attention=False)            (B, H)
The GRL is the identity forward; backward it multiplies by −λ the gradient flowing from d̂ (and from w, computed from
d̂) into R. The discriminator weights get the normal sign and w is not detached, as in the official TA3N code
(models.py:20-29 for the GRL, 351-357 and 379-388 for the attention). Contract: frames (B, T, D) fp32/fp16/bf16 (fp64
too, for gradcheck); relation_weights [(W_n (H, n·D), b_n (H,))], discriminator_weights [(W1 (Hd, H), b1 (Hd,),
W2 (2, Hd), b2 (2,))] or None, nn.Linear layout; returns h (B, H), w (B, S), R (B, S, H), d̂ (B, S, 2) in frames.dtype.
The design (used-pairs projection, segment-sum backward, one video per attention program) is in docs/kernels.md.

The structure we exploit. concat(x[t]) · W_nᵀ = Σ_j x[t_j] · W_n^(j)ᵀ with W_n^(j) = W_n[:, jD:(j+1)D], and tuples
share (frame t, position j) pairs: P holds one H-row per pair that some tuple uses (used_pairs: U rows), each computed
once, and a tuple's pre-activation is the sum of its n gathered rows. The official T = 5 table uses 25 pairs where the
loop multiplies 32; a full table uses position j only with frames j..T−n+j. Per forward pass at B = 202, D = 512,
H = Hd = 256, fp32 (G: number of distinct widths F, one bmm each; used_pairs groups positions by F):
                      official loop (Linear per tuple)  every frame at every position   used pairs (this file)
  matmul FLOPs        2·B·D·H·Σ_n R_n·n                 2·B·D·H·T·Σ_n n                 2·B·D·H·U
    TA3N, T = 5       1.69 G (32 products)              3.71 G (70)                     1.32 G (25)
    T = 16, official  19.7 G (373)                      114 G (2,160)                   15.8 G (299)
    T = 16, all       27.8 T (524,272)                  114 G (2,160)                   42.4 G (800)
  HBM bytes, TA3N     ≈ 69 MB (gathered inputs          ≈ 54 MB (weights 3 × 7.3,       ≈ 59 MB (gathered frames
                      written, read and kept)           P 14.5 MB twice)                2 × 10.3, weights 3 × 7.3,
                                                                                        P 5.2 MB twice)
  kept for backward   gathered inputs: 217 GB at        P: 447 MB at T = 16, all        1 ReLU' bit per (tuple, video,
                      T = 16, all                                                       unit): 0.06 MB / 424 MB
  launches fwd / bwd  ≈ 4 / 8 per tuple                 6 / 10                          7 + G / 13 + 2·G (G = 3 at
                                                                                        TA3N and T = 16 official)
The loop is launch-bound on a GPU. Programs per launch at TA3N's shape: relation forward B·S·H/256 = 808, attention
forward and backward B = 202 (one video each; the two Hd × H layers of all S discriminators are one torch.bmm each),
relation backward (U + S)·B/8·H/256 = 754: every launch fills a 132-SM GPU.

Numerics: all sums accumulate in fp32 (fp64 for fp64 input). fp16/bf16 inputs keep P in the input dtype (its matmul
accumulates in fp32, like nn.Linear under autocast); everything after is fp32, including the discriminators' bmm
(TF32 only if torch.backends.cuda.matmul.allow_tf32 is set, as for any torch matmul). H uses the natural log through
log-softmax, no epsilon: w ∈ [1 − ln 2, 1] = [0.3069, 1]; uniform logits give 1 − ln 2. No tl.dot.

Backward is Triton too, not a recomputation through the reference. The forward writes one ReLU' bit per (tuple, video,
unit) instead of keeping P. An attention kernel writes dL/dR (the GRL's −λ · discriminator part is one baddbmm) and the
discriminators' pre-activation gradients. A relation kernel then computes, per row p of P, the segment sum over the
tuples that use it: dL/dP[p] = dL/dR_n · #{those tuples whose unit is active}, O(Σ_n R_n·n) bit reads per (video,
unit), the work of the forward's gathers, in a fixed order (no atomics, deterministic). dL/dx and dL/dW are two bmm per
width F with dL/dP; each frame's gradient sums its rows in a fixed order.
Layout: tuple table → used pairs → reference (the specification and CPU path) → kernels → launchers → autograd → op.
"""
import itertools
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable


def relation_tuples(num_frames, max_per_scale=3):
    """Time-ordered frame tuples per scale: the TRN-M table (official TRNmodule.py).

    Args:
        num_frames: T >= 2.
        max_per_scale: 3 gives the official TA3N table: of the lexicographic combinations of each scale, number 0 for
            n = T and numbers ceil(i·N/3), i = 0, 1, 2 otherwise (all of them when N <= 3). None keeps every one.
    Returns:
        list over scales n = T, T-1, ..., 2 of torch.long tensors (R_n, n), each row strictly increasing.
    """
    if num_frames < 2:
        raise ValueError(f"relation_tuples needs at least 2 frames, got {num_frames}")
    table = []
    for n in range(num_frames, 1, -1):
        combos = torch.tensor(list(itertools.combinations(range(num_frames), n)))    # (N, n), lexicographic
        count = combos.shape[0]
        if max_per_scale is not None and count > max_per_scale:
            # official code: evenly spaced indices ceil(i·N/k), here in integers to avoid float rounding
            combos = combos[[-(-i * count // max_per_scale) for i in range(max_per_scale)]]
        table.append(combos)
    return table


def used_pairs(tuples):
    """The (scale n, position j, frame t) pairs that some tuple uses: the rows of the projection P.

    Row p of P is x[:, t_p] · W_n^(j_p)ᵀ, computed once however many tuples share it. Inside a scale, the positions that
    use the same number F of distinct frames form a group that one batched matmul projects (every scale of a full table,
    and of the official table up to T = 5, is one group). Rows go scale by scale, group by group (ascending F), then
    position, then frame.

    Args:
        tuples: list over scales of (R_n, n) strictly increasing frame indices, as from relation_tuples.
    Returns:
        dict of CPU long tensors:
            pair_scale, pair_position, pair_frame: (U,) the scale index s, position j and frame t of every row of P;
            tuple_rows: list over scales of (R_n, n), the row of each tuple element, counted from the scale's first row;
            groups: list over scales of [(positions (G,), frames (G, F))] in row order; group rows are position-major.
    """
    pair_scale, pair_position, pair_frame, tuple_rows, groups = [], [], [], [], []
    for scale, tup in enumerate(tuples):
        tup = tup.detach().cpu().long()
        n = tup.shape[1]
        frames_at = [torch.unique(tup[:, j]) for j in range(n)]                        # sorted distinct frames
        local = torch.full((n, int(tup.max()) + 1), -1, dtype=torch.long)              # (j, t) -> row in this scale
        scale_groups, rows = [], 0
        for width in sorted({len(f) for f in frames_at}):
            positions = [j for j in range(n) if len(frames_at[j]) == width]
            for j in positions:
                local[j, frames_at[j]] = torch.arange(rows, rows + width)
                rows += width
                pair_scale += [scale] * width
                pair_position += [j] * width
                pair_frame += frames_at[j].tolist()
            scale_groups.append((torch.tensor(positions), torch.stack([frames_at[j] for j in positions])))
        groups.append(scale_groups)
        tuple_rows.append(local[torch.arange(n), tup])                                 # (R_n, n)
    return dict(pair_scale=torch.tensor(pair_scale), pair_position=torch.tensor(pair_position),
                pair_frame=torch.tensor(pair_frame), tuple_rows=tuple_rows, groups=groups)


_PLANS = {}  # used_pairs() and its index tensors per (tuple table, device); tables are kept alive so keys stay unique


def _plan(tuples, num_frames, hidden, device):
    """used_pairs() plus the index tensors of the reference and of the Triton path, on `device`; built once per table.

    The reference projects scale by scale (each scale's P is its own tensor). The Triton path keeps one P and orders
    its rows by width F across all scales, so that one bmm per distinct F projects them: 3 at T = 5 or T = 16 with the
    official table, T − 1 for a full table. Its weight blocks W_n^(j) are stacked in the same order.
    """
    key = (str(device), num_frames, hidden) + tuple((t.data_ptr(), str(t.device), tuple(t.shape), t._version)
                                                    for t in tuples)
    if key in _PLANS:
        return _PLANS[key]
    tables = [t.detach().cpu().long() for t in tuples]
    for t in tables:
        if t.dim() != 2 or t.numel() == 0 or t.min() < 0 or t.max() >= num_frames \
                or not bool((t[:, 1:] > t[:, :-1]).all()):
            raise ValueError(f"each tuple table must be (R_n, n) strictly increasing frame indices < {num_frames}")
    pairs = used_pairs(tables)
    sizes, counts = [t.shape[1] for t in tables], [t.shape[0] for t in tables]
    num_pairs = len(pairs["pair_frame"])
    # Triton rows: blocks (F, scale, position) in that order, then frames; row[s, j, t] maps a pair to its row
    blocks = sorted((frames.shape[1], s, j, f) for s, groups in enumerate(pairs["groups"])
                    for positions, frames in groups for j, f in zip(positions.tolist(), frames))
    row, first = torch.full((len(tables), max(sizes), num_frames), -1, dtype=torch.long), 0
    for width, s, j, f in blocks:
        row[s, j, f] = torch.arange(first, first + width)
        first += width
    widths, width_groups, first_block, first = [b[0] for b in blocks], [], 0, 0
    for width in sorted(set(widths)):                                 # blocks of one width are consecutive
        size = widths.count(width)
        width_groups.append(dict(first_block=first_block, size=size, rows=slice(first, first + width * size)))
        first_block, first = first_block + size, first + width * size
    block_of = {(s, j): k for k, (_, s, j, _) in enumerate(blocks)}
    # dL/dW comes out in block order (block k, unit h); nn.Linear's W_n viewed (H·n, D) is (h, j)
    grad_rows = torch.cat([(torch.tensor([block_of[s, j] for j in range(n)]) * hidden
                            + torch.arange(hidden)[:, None]).reshape(-1) for s, n in enumerate(sizes)])
    # the stacked table of P rows, one row per tuple, padded with -1; per scale n, R_n, first table row
    table = torch.cat([F.pad(row[s, torch.arange(t.shape[1]), t], (0, max(sizes) - t.shape[1]), value=-1)
                       for s, t in enumerate(tables)])
    meta = [(n, r, sum(counts[:s])) for s, (n, r) in enumerate(zip(sizes, counts))]
    # segments for the backward: the tuples that use each row of P, grouped by row (a stable sort keeps tuple order),
    # then one segment per scale with all its tuples: row U + s of dL/dP is then the per-video dL/db_n
    element_row = table.reshape(-1)
    element_tuple = torch.arange(table.shape[0]).repeat_interleave(table.shape[1])
    used = element_row >= 0
    order = torch.sort(element_row[used], stable=True).indices
    lengths = torch.cat([torch.bincount(element_row[used], minlength=num_pairs), torch.tensor(counts)])
    pair_frame = torch.cat([f for _, _, _, f in blocks])
    pair_scale = torch.tensor([s for width, s, _, _ in blocks for _ in range(width)])
    # per frame, the rows of P it feeds (for dL/dx), padded with row U, which the backward keeps at zero
    frame_rows = [torch.nonzero(pair_frame == t).reshape(-1).tolist() for t in range(num_frames)]
    longest = max(1, max(len(rows) for rows in frame_rows))
    plan = dict(
        sizes=sizes, counts=counts, num_pairs=num_pairs, keep_alive=tuple(tuples), pairs=pairs,
        # the reference: per scale, per group its positions (None: all of them, in order) and frames, position-major
        groups=[[dict(size=len(positions), frames=frames.reshape(-1).to(device),
                      positions=None if positions.tolist() == list(range(n)) else positions.to(device))
                 for positions, frames in scale_groups] for scale_groups, n in zip(pairs["groups"], sizes)],
        tuple_rows=[r.to(device) for r in pairs["tuple_rows"]],
        # the Triton path
        blocks=[(s, j) for _, s, j, _ in blocks], width_groups=width_groups, grad_rows=grad_rows.to(device),
        pair_frame=pair_frame.to(device),
        table=table.to(device=device, dtype=torch.int32),
        meta=torch.tensor(meta, dtype=torch.int32, device=device),
        seg_start=F.pad(lengths.cumsum(0), (1, 0)).to(device=device, dtype=torch.int32),
        seg_tuple=torch.cat([element_tuple[used][order], torch.arange(table.shape[0])]).to(device, torch.int32),
        seg_scale=torch.cat([pair_scale, torch.arange(len(tables))]).to(device=device, dtype=torch.int32),
        frame_rows=torch.tensor([r + [num_pairs] * (longest - len(r)) for r in frame_rows], device=device),
    )
    if len(_PLANS) >= 16:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[key] = plan
    return plan


class _GradientReversal(torch.autograd.Function):
    """GRL: identity forward, −λ · grad backward; λ gets no gradient."""

    @staticmethod
    def forward(ctx, x, lambd):
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lambd * grad, None


def _domain_attention(relations, discriminator_weights, grl_scale, use_attention):
    """Eqs. (6)-(8) on relations (B, S, H); returns h, w, d̂ (w and d̂ are None without discriminators)."""
    if discriminator_weights is None:
        return relations.sum(1), None, None
    w1, b1, w2, b2 = (torch.stack([quad[k] for quad in discriminator_weights]).to(relations.dtype) for k in range(4))
    reversed_relations = _GradientReversal.apply(relations.transpose(0, 1), grl_scale)  # Eq. (6): GRL first, (S, B, H)
    hidden = F.relu(torch.baddbmm(b1[:, None], reversed_relations, w1.transpose(1, 2)))  # (S, B, Hd), all scales
    logits = torch.baddbmm(b2[:, None], hidden, w2.transpose(1, 2)).transpose(0, 1)    # (B, S, 2)
    log_probs = torch.log_softmax(logits, -1)
    weights = 1 + (log_probs.exp() * log_probs).sum(-1)                              # Eq. (7): w = 1 − H(d̂), (B, S)
    attended = (1 + weights).unsqueeze(-1) * relations if use_attention else relations
    return attended.sum(1), weights, logits                                          # Eq. (8): h (B, H)


def relation_attention_reference(frames, tuples, relation_weights, discriminator_weights, grl_scale,
                                 use_attention=True, backend="torch"):
    """Pure-PyTorch specification of `relation_attention`: same signature (`backend` is ignored), same outputs.

    No loop over tuples or videos: per scale, one bmm per group of used_pairs() projects each used (frame, position)
    pair once, and each tuple's pre-activation is the sum of its n gathered rows. This is also the CPU training path.
    Computes in fp32 (fp64 for fp64 frames) and returns frames.dtype.
    """
    compute = torch.float64 if frames.dtype == torch.float64 else torch.float32
    x = frames.to(compute)                                                            # (B, T, D)
    B, T, D = x.shape
    plan = _plan(tuples, T, relation_weights[0][0].shape[0], x.device)
    by_frame = x.transpose(0, 1).contiguous()                                         # (T, B, D)
    relations = []
    for groups, rows, (weight, bias) in zip(plan["groups"], plan["tuple_rows"], relation_weights):
        (num_tuples, n), H = rows.shape, weight.shape[0]
        per_position = weight.to(compute).view(H, n, D).transpose(0, 1)               # (n, H, D): W_n^(j)
        projected = []
        for g in groups:
            inputs = by_frame.index_select(0, g["frames"]).view(g["size"], -1, D)    # (G, F·B, D), position-major
            blocks = per_position if g["positions"] is None else per_position.index_select(0, g["positions"])
            projected.append(torch.bmm(inputs, blocks.transpose(1, 2)).view(-1, B, H))  # (G·F, B, H): rows of P
        projected = projected[0] if len(projected) == 1 else torch.cat(projected)       # (U_n, B, H)
        pre = projected.index_select(0, rows.reshape(-1)).view(num_tuples, n, B, H).sum(1)  # Σ_j P[row of t_j]
        relations.append(F.relu(pre + bias.to(compute)).sum(0))                        # Eq. (5): R_n (B, H)
    relations = torch.stack(relations, 1)                                             # (B, S, H)
    h, weights, logits = _domain_attention(relations, discriminator_weights, grl_scale, use_attention)
    return tuple(None if t is None else t.to(frames.dtype) for t in (h, weights, relations, logits))


def official_loop_reference(frames, tuples, relation_weights, discriminator_weights, grl_scale,
                            use_attention=True, backend="torch"):
    """The official code's structure: Python loops over scales and tuples, one Linear per tuple (bench, oracle)."""
    compute = torch.float64 if frames.dtype == torch.float64 else torch.float32
    x, relations = frames.to(compute), []
    for tup, (weight, bias) in zip(tuples, relation_weights):
        total = 0
        for combo in tup.tolist():
            total = total + F.relu(F.linear(x[:, combo].flatten(1), weight.to(compute), bias.to(compute)))
        relations.append(total)
    relations = torch.stack(relations, 1)                                             # (B, S, H)
    h, weights, logits = _domain_attention(relations, discriminator_weights, grl_scale, use_attention)
    return tuple(None if t is None else t.to(frames.dtype) for t in (h, weights, relations, logits))


# ---- Triton kernels ----
@triton.jit
def _relation_fwd_kernel(
    proj_ptr,                # (U, B, H) P: one H-row per used (frame, position, scale) pair and video
    table_ptr,               # (Σ R_n, max n) int32: the P row of every tuple element, all scales stacked
    meta_ptr,                # (S, 3) int32 per scale: n, R_n, its first table row
    bias_ptr,                # (S, H) relation biases b_n
    rel_ptr,                 # out (B, S, H) R_n, accumulation dtype
    active_ptr,              # out (Σ R_n, B, W) int32: bit h % 32 of word h // 32 is ReLU'(pre-activation of unit h)
    B, H, W, stride_tab,     # videos, relation width, words per (tuple, video), table row stride
    STORE_ACTIVE: tl.constexpr,  # write the ReLU' bits (a backward pass will follow)
    BLOCK_R: tl.constexpr,   # tuples per step
    BLOCK_H: tl.constexpr,   # relation units per program, a multiple of 32
    ACC: tl.constexpr,       # accumulation dtype: fp32, or fp64 for fp64 input
):
    video, scale = tl.program_id(0).to(tl.int64), tl.program_id(1)
    meta = meta_ptr + scale * 3
    n, num_tuples, row0 = tl.load(meta), tl.load(meta + 1), tl.load(meta + 2)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_w = tl.program_id(2) * (BLOCK_H // 32) + tl.arange(0, BLOCK_H // 32)
    mask_h = offs_h < H
    bias = tl.load(bias_ptr + scale * H + offs_h, mask=mask_h, other=0.0).to(ACC)
    total = tl.zeros([BLOCK_H], ACC)
    for r0 in range(0, num_tuples, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < num_tuples
        tuple_row = (row0 + offs_r).to(tl.int64)
        # Eq. (5) before the ReLU: b_n + Σ_j P[row of element j], one gathered H-row per position
        pre = tl.zeros([BLOCK_R, BLOCK_H], ACC) + bias[None, :]
        for j in range(0, n):
            pair = tl.load(table_ptr + tuple_row * stride_tab + j, mask=mask_r, other=0).to(tl.int64)
            rows = proj_ptr + ((pair * B + video) * H)[:, None] + offs_h[None, :]
            pre += tl.load(rows, mask=mask_r[:, None] & mask_h[None, :], other=0.0).to(ACC)
        active = (pre > 0.0) & mask_r[:, None]                                           # ReLU' (BLOCK_R, BLOCK_H)
        total += tl.sum(tl.where(active, pre, 0.0), axis=0)                              # Eq. (5): Σ_tuples ReLU(·)
        if STORE_ACTIVE:
            bits = active.to(tl.int32) << (offs_h % 32)[None, :]
            words = tl.sum(tl.reshape(bits, [BLOCK_R, BLOCK_H // 32, 32]), axis=2)      # distinct bits: sum = OR
            tl.store(active_ptr + (tuple_row * B + video)[:, None] * W + offs_w[None, :], words,
                     mask=mask_r[:, None] & (offs_w < W)[None, :])
    tl.store(rel_ptr + (video * tl.num_programs(1) + scale) * H + offs_h, total, mask=mask_h)


@triton.jit
def _entropy(logits):
    # Eq. (7) through log-softmax over the 2 domain logits (natural log, no epsilon): returns ln p (2,), H
    top = tl.max(logits, axis=0)
    log_p = logits - (top + tl.log(tl.sum(tl.exp(logits - top), axis=0)))
    return log_p, -tl.sum(tl.exp(log_p) * log_p, axis=0)


@triton.jit
def _attention_fwd_kernel(
    rel_ptr,                 # (B, S, H) R_n
    hidden_ptr,              # (S, B, Hd) in: R_n · W1ᵀ (one torch.bmm for all scales); out: ReLU(· + b1), for backward
    b1_ptr, w2_ptr, b2_ptr,  # (S, Hd), (S, 2, Hd), (S, 2): the rest of each discriminator
    logit_ptr, weight_ptr,   # out (B, S, 2) d̂_n and (B, S) w_n
    h_ptr,                   # out (B, H) h
    B, S, H, HD,             # sizes
    USE_ATTENTION: tl.constexpr,  # False: h = Σ_n R_n
    BLOCK_H: tl.constexpr,   # all of H, padded to a power of two
    BLOCK_HD: tl.constexpr,  # discriminator units per step
    ACC: tl.constexpr,       # accumulation dtype
):
    video = tl.program_id(0).to(tl.int64)                                                # one video per program
    offs_h, offs_c = tl.arange(0, BLOCK_H), tl.arange(0, 2)
    mask_h = offs_h < H
    h_acc = tl.zeros([BLOCK_H], ACC)
    for s in range(0, S):
        logits = tl.load(b2_ptr + s * 2 + offs_c).to(ACC)                                 # Eq. (6): d̂_n
        for k0 in range(0, HD, BLOCK_HD):
            offs_k = k0 + tl.arange(0, BLOCK_HD)
            mask_k = offs_k < HD
            hidden_at = hidden_ptr + (s * B + video) * HD + offs_k
            hidden = tl.load(hidden_at, mask=mask_k, other=0.0) + \
                tl.load(b1_ptr + s * HD + offs_k, mask=mask_k, other=0.0).to(ACC)
            hidden = tl.maximum(hidden, 0.0)                                             # (BLOCK_HD,)
            tl.store(hidden_at, hidden, mask=mask_k)
            w2 = tl.load(w2_ptr + (s * 2 + offs_c[:, None]) * HD + offs_k[None, :], mask=mask_k[None, :],
                         other=0.0).to(ACC)                                              # (2, BLOCK_HD)
            logits += tl.sum(w2 * hidden[None, :], axis=1)
        _, entropy = _entropy(logits)
        weight = 1.0 - entropy                                                           # Eq. (7)
        tl.store(logit_ptr + (video * S + s) * 2 + offs_c, logits)
        tl.store(weight_ptr + video * S + s, weight)
        rel = tl.load(rel_ptr + (video * S + s) * H + offs_h, mask=mask_h, other=0.0)
        if USE_ATTENTION:
            h_acc += (1.0 + weight) * rel                                                # Eq. (8)
        else:
            h_acc += rel
    tl.store(h_ptr + video * H + offs_h, h_acc, mask=mask_h)


@triton.jit
def _attention_bwd_kernel(
    rel_ptr, hidden_ptr, logit_ptr, w2_ptr,  # saved R (B, S, H), ReLU activations (S, B, Hd), d̂ (B, S, 2); W2
    grad_h_ptr, grad_w_ptr,  # upstream dL/dh (B, H), dL/dw (B, S)
    grad_rel_ptr, grad_logit_ptr,  # upstream dL/dR (B, S, H), dL/dd̂ (B, S, 2)
    grad_rel_total_ptr,      # out (S, B, H) dL/dR_n via h and upstream (the launcher adds −λ · the discriminators')
    grad_pre_ptr,            # out (S, B, Hd) dL/d(discriminator pre-activation)
    grad_logit_total_ptr,    # out (S, B, 2) total dL/dd̂ (upstream + through w)
    B, S, H, HD,             # sizes
    USE_ATTENTION: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HD: tl.constexpr,
    ACC: tl.constexpr,       # as in _attention_fwd_kernel
):
    video = tl.program_id(0).to(tl.int64)
    offs_h, offs_c = tl.arange(0, BLOCK_H), tl.arange(0, 2)
    mask_h = offs_h < H
    grad_h = tl.load(grad_h_ptr + video * H + offs_h, mask=mask_h, other=0.0).to(ACC)
    for s in range(0, S):
        log_p, entropy = _entropy(tl.load(logit_ptr + (video * S + s) * 2 + offs_c))
        grad_rel = tl.load(grad_rel_ptr + (video * S + s) * H + offs_h, mask=mask_h, other=0.0).to(ACC)
        grad_w = tl.load(grad_w_ptr + video * S + s).to(ACC)
        if USE_ATTENTION:
            rel = tl.load(rel_ptr + (video * S + s) * H + offs_h, mask=mask_h, other=0.0)
            grad_rel += (2.0 - entropy) * grad_h                                          # Eq. (8): ∂h/∂R_n = 1 + w_n
            grad_w += tl.sum(grad_h * rel, axis=0)                                        # ∂h/∂w_n = R_n
        else:
            grad_rel += grad_h
        tl.store(grad_rel_total_ptr + (s * B + video) * H + offs_h, grad_rel, mask=mask_h)
        # Eq. (7): ∂w/∂d̂_c = p_c · (ln p_c + H)
        grad_logit = tl.load(grad_logit_ptr + (video * S + s) * 2 + offs_c).to(ACC) + \
            grad_w * tl.exp(log_p) * (log_p + entropy)
        tl.store(grad_logit_total_ptr + (s * B + video) * 2 + offs_c, grad_logit)
        for k0 in range(0, HD, BLOCK_HD):
            offs_k = k0 + tl.arange(0, BLOCK_HD)
            mask_k = offs_k < HD
            hidden = tl.load(hidden_ptr + (s * B + video) * HD + offs_k, mask=mask_k, other=0.0)
            w2 = tl.load(w2_ptr + (s * 2 + offs_c[:, None]) * HD + offs_k[None, :], mask=mask_k[None, :],
                         other=0.0).to(ACC)                                              # (2, BLOCK_HD)
            grad_pre = tl.where(hidden > 0.0, tl.sum(grad_logit[:, None] * w2, axis=0), 0.0)
            tl.store(grad_pre_ptr + (s * B + video) * HD + offs_k, grad_pre, mask=mask_k)


@triton.jit
def _relation_bwd_kernel(
    active_ptr,              # (Σ R_n, B, W) int32 ReLU' bits from _relation_fwd_kernel
    seg_start_ptr,           # (U + S + 1,) int32: segment p is seg_tuple[seg_start[p]:seg_start[p + 1]]
    seg_tuple_ptr,           # int32 tuple indices (rows of the stacked table): per P row the tuples that use it, then
                             # per scale all its tuples (the bias, used by every tuple)
    seg_scale_ptr,           # (U + S,) int32 scale of every segment
    grad_rel_ptr,            # (S, B, H) total dL/dR_n
    grad_proj_ptr,           # out (U + S, B, H) dL/dP, then per scale the per-video dL/db_n
    B, H, W,                 # videos, relation width, words per (tuple, video)
    BLOCK_B: tl.constexpr,   # videos per program
    BLOCK_H: tl.constexpr,   # relation units per program
    ACC: tl.constexpr,       # accumulation dtype
):
    pair = tl.program_id(0).to(tl.int64)
    offs_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b < B)[:, None] & (offs_h < H)[None, :]
    word = offs_b[:, None].to(tl.int64) * W + (offs_h // 32)[None, :]
    shift = (offs_h % 32)[None, :]
    # a segment sum: dL/dP[p] = dL/dR_n · #{tuples that use row p with the unit active}, fixed order, no atomics
    counts = tl.zeros([BLOCK_B, BLOCK_H], tl.int32)
    for i in range(tl.load(seg_start_ptr + pair), tl.load(seg_start_ptr + pair + 1)):
        tuple_row = tl.load(seg_tuple_ptr + i).to(tl.int64)
        counts += (tl.load(active_ptr + tuple_row * B * W + word, mask=mask, other=0) >> shift) & 1
    scale = tl.load(seg_scale_ptr + pair)
    grad_rel = tl.load(grad_rel_ptr + (scale * B + offs_b[:, None]) * H + offs_h[None, :], mask=mask, other=0.0)
    tl.store(grad_proj_ptr + (pair * B + offs_b[:, None]) * H + offs_h[None, :],
             (counts.to(ACC) * grad_rel.to(ACC)).to(grad_proj_ptr.dtype.element_ty), mask=mask)


# ---- launchers ----
def _pow2(x, low, high):
    return max(low, min(high, triton.next_power_of_2(x)))


def _relation_blocks(hidden, max_tuples):
    # Heuristic, no autotuning. BLOCK_H is a multiple of 32 (one bit word per 32 units), at most 256; the (BLOCK_R,
    # BLOCK_H) pre-activation tile stays <= 2048 values, 16 fp32 per thread with 4 warps (4096 made ptxas spill a few
    # bytes for fp16/bf16 on sm_90: kernels/compile_check.py). Grid B·S·H/BLOCK_H: 808 programs at TA3N's shape.
    block_h = _pow2(hidden, 32, 256)
    return _pow2(max_tuples, 2, 2048 // block_h), block_h


def _attention_blocks(hidden, hidden_d):
    # one video per program (B programs: 202 at TA3N's shape fill a 132-SM GPU), all of H at once, Hd in chunks of 64
    # (chunks of 256 made ptxas spill 16 bytes in the forward on sm_90: kernels/compile_check.py)
    return _pow2(hidden, 16, 1024), _pow2(hidden_d, 16, 64)


def _accumulator(dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _stacked_weights(weights, plan, dtype):
    """Every W_n^(j) (H, D), stacked in the Triton row order: (Σ_n n, H, D), frames.dtype."""
    per_position = [w.view(w.shape[0], n, -1) for w, n in zip(weights, plan["sizes"])]
    return torch.stack([per_position[s][:, j] for s, j in plan["blocks"]]).to(dtype)


def _gather_sum(values, rows):
    """Σ_c values[rows[k, c]] for every k: a segment sum in a fixed order (deterministic, no atomics); padding rows
    point at an all-zero last row of `values`."""
    return values.index_select(0, rows.reshape(-1)).view(*rows.shape, *values.shape[1:]).sum(1)


# ---- autograd ----
class RelationAttentionFunction(torch.autograd.Function):
    """The Triton path. params: W_n, b_n for every scale, then W1, b1, W2, b2 for every scale (or nothing)."""

    @staticmethod
    def forward(ctx, frames, plan, grl_scale, use_attention, store_active, *params):
        frames = frames.contiguous()
        (B, T, D), S, H = frames.shape, len(plan["sizes"]), params[0].shape[0]
        acc, tl_acc = _accumulator(frames.dtype)
        weights = params[0:2 * S:2]
        # Eq. (5), the matmuls: P[p] = x[:, t_p] · W_n^(j_p)ᵀ for the U used pairs only, one bmm per width F
        inputs = frames.transpose(0, 1).index_select(0, plan["pair_frame"])              # (U, B, D)
        stacked = _stacked_weights(weights, plan, frames.dtype)                           # (Σ_n n, H, D)
        proj = frames.new_empty(plan["num_pairs"], B, H)                                  # (U, B, H)
        for g in plan["width_groups"]:
            blocks = stacked[g["first_block"]:g["first_block"] + g["size"]]              # (G, H, D)
            torch.bmm(inputs[g["rows"]].view(g["size"], -1, D), blocks.transpose(1, 2),
                      out=proj[g["rows"]].view(g["size"], -1, H))                         # (G, F·B, H)
        del inputs
        biases = torch.stack(params[1:2 * S:2])                                          # (S, H)
        relations = torch.empty(B, S, H, device=frames.device, dtype=acc)
        words = triton.cdiv(H, 32)
        active = torch.empty(plan["table"].shape[0], B, words, device=frames.device, dtype=torch.int32) \
            if store_active else None
        block_r, block_h = _relation_blocks(H, max(plan["counts"]))
        _relation_fwd_kernel[(B, S, triton.cdiv(H, block_h))](
            proj, plan["table"], plan["meta"], biases, relations, relations if active is None else active, B, H,
            words, plan["table"].stride(0), STORE_ACTIVE=store_active, BLOCK_R=block_r, BLOCK_H=block_h, ACC=tl_acc,
            num_warps=4)
        ctx.grl_scale, ctx.use_attention, ctx.plan = grl_scale, use_attention, plan
        ctx.weights_dtype = [w.dtype for w in weights]
        disc = params[2 * S:]
        if not disc:                                                                     # h = Σ_n R_n
            ctx.save_for_backward(frames, active, stacked)
            return (relations.sum(1).to(frames.dtype), frames.new_empty(B, 0), relations.to(frames.dtype),
                    frames.new_empty(B, 0, 2))
        HD = disc[0].shape[0]
        flat = torch.cat([p.reshape(-1) for k in range(4) for p in disc[k::4]]).to(acc)  # all W1, b1, W2, b2
        w1, b1, w2, b2 = (part.view(shape) for part, shape in zip(
            flat.split([S * HD * H, S * HD, S * 2 * HD, S * 2]), [(S, HD, H), (S, HD), (S, 2, HD), (S, 2)]))
        # Eq. (6), first layer of all S discriminators in one bmm (the GRL is the identity forward)
        hidden = torch.bmm(relations.transpose(0, 1), w1.transpose(1, 2))               # (S, B, Hd)
        logits, weights_out, h = (torch.empty(*shape, device=frames.device, dtype=acc)
                                  for shape in [(B, S, 2), (B, S), (B, H)])
        block_h, block_hd = _attention_blocks(H, HD)
        _attention_fwd_kernel[(B,)](relations, hidden, b1, w2, b2, logits, weights_out, h, B, S, H, HD,
                                    USE_ATTENTION=use_attention, BLOCK_H=block_h, BLOCK_HD=block_hd, ACC=tl_acc,
                                    num_warps=4)
        ctx.save_for_backward(frames, active, stacked, relations, hidden, logits, w1, w2)
        return tuple(t.to(frames.dtype) for t in (h, weights_out, relations, logits))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_w, grad_rel, grad_logit):
        frames, active, stacked = ctx.saved_tensors[:3]
        (B, T, D), (S, H), plan = frames.shape, (len(ctx.plan["sizes"]), stacked.shape[1]), ctx.plan
        acc, tl_acc = _accumulator(frames.dtype)
        disc_grads = []
        if len(ctx.saved_tensors) > 3:
            relations, hidden, logits, w1, w2 = ctx.saved_tensors[3:]
            HD = w1.shape[1]
            grad_rel_total = torch.empty(S, B, H, device=frames.device, dtype=acc)
            grad_pre, grad_logit_total = (torch.empty(S, B, k, device=frames.device, dtype=acc) for k in (HD, 2))
            block_h, block_hd = _attention_blocks(H, HD)
            _attention_bwd_kernel[(B,)](
                relations, hidden, logits, w2, grad_h.contiguous(), grad_w.contiguous(), grad_rel.contiguous(),
                grad_logit.contiguous(), grad_rel_total, grad_pre, grad_logit_total, B, S, H, HD,
                USE_ATTENTION=ctx.use_attention, BLOCK_H=block_h, BLOCK_HD=block_hd, ACC=tl_acc, num_warps=4)
            # GRL: the discriminators' gradient reaches R_n reversed and scaled by λ (one bmm for all scales)
            grad_rel_total.baddbmm_(grad_pre, w1, alpha=-ctx.grl_scale)
            # discriminator weights: normal sign, summed over videos
            grad_w1 = torch.bmm(grad_pre.transpose(1, 2), relations.transpose(0, 1))     # (S, Hd, H)
            grad_w2 = torch.bmm(grad_logit_total.transpose(1, 2), hidden)                 # (S, 2, Hd)
            grad_b1, grad_b2 = grad_pre.sum(1), grad_logit_total.sum(1)
            disc_grads = [g for s in range(S) for g in (grad_w1[s], grad_b1[s], grad_w2[s], grad_b2[s])]
        else:
            grad_rel_total = (grad_rel.to(acc) + grad_h.to(acc)[:, None]).transpose(0, 1).contiguous()  # (S, B, H)
        # dL/dP by segment sums over the tuples that use each row (the ReLU' bits saved by the forward); S more
        # segments, one per scale with every tuple, give dL/db_n per video
        num_pairs = plan["num_pairs"]
        grad_proj = frames.new_empty(num_pairs + S, B, H)
        block_h = _pow2(H, 32, 256)
        _relation_bwd_kernel[(num_pairs + S, triton.cdiv(B, 8), triton.cdiv(H, block_h))](
            active, plan["seg_start"], plan["seg_tuple"], plan["seg_scale"], grad_rel_total, grad_proj, B, H,
            triton.cdiv(H, 32), BLOCK_B=8, BLOCK_H=block_h, ACC=tl_acc, num_warps=4)
        grad_biases = grad_proj[num_pairs:].sum(1, dtype=acc)                              # (S, H)
        # dL/dx and dL/dW_n: the transposed matmuls, one bmm each per width F
        inputs = frames.transpose(0, 1).index_select(0, plan["pair_frame"])              # (U, B, D), recomputed
        grad_inputs = frames.new_empty(num_pairs + 1, B, D)                               # + a zero row for padding
        grad_inputs[num_pairs].zero_()
        grad_stacked = torch.empty_like(stacked)                                         # (Σ_n n, H, D)
        for g in plan["width_groups"]:
            blocks = slice(g["first_block"], g["first_block"] + g["size"])
            grad_g = grad_proj[g["rows"]].view(g["size"], -1, H)                          # (G, F·B, H)
            torch.bmm(grad_g, stacked[blocks], out=grad_inputs[g["rows"]].view(g["size"], -1, D))
            torch.bmm(grad_g.transpose(1, 2), inputs[g["rows"]].view(g["size"], -1, D), out=grad_stacked[blocks])
        grad_stacked = grad_stacked.view(-1, D).index_select(0, plan["grad_rows"])       # (Σ_n n·H, D): (scale, h, j)
        relation_grads, start = [], 0
        for dtype, n, grad_b in zip(ctx.weights_dtype, plan["sizes"], grad_biases):
            relation_grads += [grad_stacked[start * H:(start + n) * H].view(H, n * D).to(dtype), grad_b.to(dtype)]
            start += n
        # each frame's gradient: the sum of its rows (a fixed-order segment sum, no atomics)
        grad_frames = _gather_sum(grad_inputs, plan["frame_rows"]).transpose(0, 1) if ctx.needs_input_grad[0] \
            else None                                                                    # (B, T, D)
        return (grad_frames, None, None, None, None, *relation_grads, *disc_grads)


# ---- the public op ----
def relation_attention(frames, tuples, relation_weights, discriminator_weights, grl_scale,
                       use_attention=True, backend="auto"):
    """TA3N's relation module and domain attention (Eqs. 5-8) as one op; the module docstring has the math.

    Args:
        frames: (B, T, D) fp32, fp16 or bf16 (fp64 works too).
        tuples: relation_tuples(T, ...): list over scales of long (R_n, n) frame indices. Build it once (for example
            as module buffers): both paths cache their index tensors per tuple tensor.
        relation_weights: list over scales of (W_n (H, n·D), b_n (H,)), nn.Linear layout, concat in tuple order.
        discriminator_weights: list over scales of (W1 (Hd, H), b1 (Hd,), W2 (2, Hd), b2 (2,)), or None.
        grl_scale: λ; the gradient from d̂ (and w) into R is multiplied by −λ.
        use_attention: False gives h = Σ_n R_n (w and d̂ are still returned).
        backend: "auto" (Triton for CUDA tensors or under TRITON_INTERPRET=1, the reference otherwise),
            "triton" or "torch".
    Returns:
        h (B, H), w (B, S) or None, R (B, S, H), d̂ (B, S, 2) or None, in frames.dtype; differentiable w.r.t.
        frames and every weight.
    """
    if backend == "auto":
        interpret = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
        backend = "triton" if frames.is_cuda or interpret else "torch"
    if backend == "torch":
        return relation_attention_reference(frames, tuples, relation_weights, discriminator_weights, grl_scale,
                                            use_attention)
    if backend != "triton":
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    (B, T, D), H = frames.shape, relation_weights[0][0].shape[0]
    HD = discriminator_weights[0][0].shape[0] if discriminator_weights else 0
    shapes = [[tuple(p.shape) for p in pair] for pair in list(relation_weights) + list(discriminator_weights or [])]
    want = [[(H, t.shape[1] * D), (H,)] for t in tuples] + [[(HD, H), (HD,), (2, HD), (2,)]] * len(shapes[len(tuples):])
    if shapes != want or (discriminator_weights and len(discriminator_weights) != len(tuples)) or H > 1024:
        raise ValueError("relation_attention needs per scale W_n (H, n·D), b_n (H,) and optionally W1 (Hd, H), "
                         "b1 (Hd,), W2 (2, Hd), b2 (2,); the Triton path needs H <= 1024")
    plan = _plan(tuples, T, H, frames.device)
    params = [p for pair in relation_weights for p in pair] + [p for quad in discriminator_weights or [] for p in quad]
    # the ReLU' bits are written only when a backward pass can follow
    store_active = torch.is_grad_enabled() and any(t.requires_grad for t in [frames] + params)
    h, weights, relations, logits = RelationAttentionFunction.apply(frames, plan, float(grl_scale),
                                                                    bool(use_attention), store_active, *params)
    if discriminator_weights is None:
        return h, None, relations, None
    return h, weights, relations, logits


def self_check(device, dtype=torch.float32, rtol=1e-3, atol=1e-4):
    """Run the Triton op and the reference on one small random case (T = 5, official table, odd sizes) on
    `device` and compare every output and every gradient. Returns (ok, message); never raises. ta3n.py calls it
    before its first CUDA step so that `--kernel auto` falls back to the reference when the compiled kernels
    misbehave on an untested GPU or Triton version."""
    try:
        g = torch.Generator().manual_seed(0)
        B, T, D, H, HD = 3, 5, 24, 40, 24
        tuples = relation_tuples(T)
        rand = lambda *s: (torch.randn(*s, generator=g) * 0.3).to(device, dtype).requires_grad_()
        frames = rand(B, T, D)
        rel = [(rand(H, t.shape[1] * D), rand(H)) for t in tuples]
        disc = [(rand(HD, H), rand(HD), rand(2, HD), rand(2)) for _ in tuples]
        leaves = [frames] + [p for pair in rel for p in pair] + [p for quad in disc for p in quad]
        results = []
        for backend in ("triton", "torch"):
            outs = relation_attention(frames, tuples, rel, disc, 0.75, backend=backend)
            upstream = torch.Generator().manual_seed(1)
            loss = sum((o.float() * torch.randn(o.shape, generator=upstream).to(device)).sum() for o in outs)
            grads = torch.autograd.grad(loss, leaves)
            results.append([o.detach().float().cpu() for o in outs] + [x.float().cpu() for x in grads])
        for a, b in zip(*results):
            if not torch.allclose(a, b, rtol=rtol, atol=atol):
                return False, f"Triton and reference differ by {(a - b).abs().max().item():.3g} on {device}"
        return True, "ok"
    except Exception as e:                                 # a compile or launch failure counts as a failed check
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
