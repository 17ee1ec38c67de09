"""Fused n-frame relation enumeration and entropy domain attention (TA3N, Chen et al., ICCV 2019, Eqs. 5-8).

For frames x (B, T, D) and, per scale n = T, T-1, ..., 2, a table of R_n time-ordered n-frame tuples:
  Eq. (5)  R_n = Σ_{tuples t} ReLU(concat(x[:, t_0], ..., x[:, t_{n-1}]) · W_nᵀ + b_n)   (B, H)  TRN-M, summed
  Eq. (6)  d̂_n = G_rd^n(GRL_λ(R_n)),  G_rd^n(r) = ReLU(r·W1ᵀ + b1)·W2ᵀ + b2              (B, 2)
  Eq. (7)  w_n = 1 − H(softmax(d̂_n)),  H(p) = −Σ_c p_c ln p_c                             (B,)
  Eq. (8)  h   = Σ_n (1 + w_n) · R_n       (Σ_n R_n with use_attention=False)            (B, H)
The GRL is the identity forward; backward it multiplies by −λ the gradient flowing from d̂ (and from w, computed from
d̂) into R. The discriminator weights get the normal sign and w is not detached, as in the official code
(../shared/reference/ta3n.md §2.3-2.4). Contract: frames (B, T, D) fp32/fp16/bf16 (fp64 too, for gradcheck);
relation_weights [(W_n (H, n·D), b_n (H,))], discriminator_weights [(W1 (Hd, H), b1 (Hd,), W2 (2, Hd), b2 (2,))]
or None, nn.Linear layout; returns h (B, H), w (B, S), R (B, S, H), d̂ (B, S, 2) in frames.dtype (S scales).

The structure we exploit. concat(x[t]) · W_nᵀ = Σ_j x[t_j] · W_n^(j)ᵀ with W_n^(j) = W_n[:, jD:(j+1)D], so one
matmul P = x · [W_n^(j)]ᵀ (B, T, K = H·Σ_n n) projects every frame at every position of every scale, and a tuple
is a sum of n gathered H-rows of P. Per forward pass (fp32):
                official loop (one Linear per tuple)              fused (one matmul + two Triton kernels)
  FLOPs         2·B·D·H·Σ_n R_n·n                                 2·B·D·H·T·Σ_n n
  HBM bytes     gathered inputs 4·B·D·Σ_n R_n·n (written, read,   weights 3·4·K·D (stacking copy, matmul), frames,
                kept for backward), W_n once per tuple, ~6        P written once (4·B·T·K) and its rows re-read
                passes over each tuple's (B, H) output            mostly from L1/L2, R written once
  launches      ≈ 4 per tuple (≈ 8 per tuple backward)            6 forward, 10 backward, for any table
TA3N (B = 128+74, T = 5, D = 512, H = 256, official table: Σ R_n·n = 32, T·Σ n = 70): 3.7 GFLOP instead of 1.7
(projecting all T frames at every position costs 2.2×), ≈ 48 MB instead of ≈ 69 MB, 6 launches instead of ≈ 45;
the loop is launch-bound on a GPU. T = 16, all tuples (Σ R_n·n = 524,272, T·Σ n = 2,160): 0.11 instead of 28
TFLOP, and P takes 0.45 GB where the gathered inputs would take 217 GB. The trick loses on sparse tables at large T
(T = 16, official table: 5.8× the loop's FLOPs); a gather-GEMM for scales with R_n < T would fix that (not done
here; the reference does choose per scale).

Numerics: all sums accumulate in fp32 (fp64 for fp64 input). fp16/bf16 inputs keep P in the input dtype (its matmul
accumulates in fp32, like nn.Linear under autocast); everything after is fp32. H uses the natural log through
log-softmax, no epsilon: w ∈ [1 − ln 2, 1] = [0.3069, 1]; uniform logits give 1 − ln 2. tl.dot uses
input_precision="ieee" (no TF32).

Backward is Triton too, not a recomputation through the reference. An attention kernel writes dL/dR (GRL applied)
and the discriminators' pre-activation gradients (their weight gradients are two torch.bmm). A relation kernel then
recomputes each tuple's pre-activation from P and counts, per (frame t, position j), the tuples whose ReLU is on:
dL/dP[t, (n, j)] = dL/dR_n · #{tuples with t_j = t and the unit on}, one exact dot of 0/1 matrices (fp16 in, fp32
sums): no atomics, deterministic. dL/dx and dL/dW are two matmuls with dL/dP.
Layout: tuple table → reference (the specification and CPU path) → kernels → launchers → autograd → public op.
"""
import itertools
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


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
    dtype, logits = relations.dtype, []
    for scale, (w1, b1, w2, b2) in enumerate(discriminator_weights):
        reversed_relation = _GradientReversal.apply(relations[:, scale], grl_scale)  # Eq. (6): GRL before G_rd^n
        hidden = F.relu(F.linear(reversed_relation, w1.to(dtype), b1.to(dtype)))     # (B, Hd)
        logits.append(F.linear(hidden, w2.to(dtype), b2.to(dtype)))                  # (B, 2)
    logits = torch.stack(logits, 1)                                                  # (B, S, 2)
    log_probs = torch.log_softmax(logits, -1)
    weights = 1 + (log_probs.exp() * log_probs).sum(-1)                              # Eq. (7): w = 1 − H(d̂), (B, S)
    attended = (1 + weights).unsqueeze(-1) * relations if use_attention else relations
    return attended.sum(1), weights, logits                                          # Eq. (8): h (B, H)


def relation_attention_reference(frames, tuples, relation_weights, discriminator_weights, grl_scale,
                                 use_attention=True, backend="torch"):
    """Pure-PyTorch specification of `relation_attention`: same signature (`backend` is ignored), same outputs.

    No loop over tuples or videos. Per scale it takes the form with fewer matmul FLOPs: gather each tuple's frames
    and multiply (R_n·n products of D×H per video), or project every frame at every position and gather-sum over
    the n positions (T·n products). Gathering needs fewer FLOPs when R_n <= T (every scale of the official T = 5
    table); projecting is the only one that fits in memory for full tables at large T (up to C(16, 8) = 12,870
    tuples per scale).
    Computes in fp32 (fp64 for fp64 frames) and returns frames.dtype.
    """
    compute = torch.float64 if frames.dtype == torch.float64 else torch.float32
    x = frames.to(compute)                                                            # (B, T, D)
    B, T, D = x.shape
    relations = []
    for tup, (weight, bias) in zip(tuples, relation_weights):
        (num_tuples, n), tup = tup.shape, tup.to(x.device)
        weight, bias = weight.to(compute), bias.to(compute)
        if num_tuples <= T:
            stacked = x[:, tup].reshape(B, num_tuples, n * D)                         # (B, R_n, n·D), tuple order
            pre = F.linear(stacked, weight, bias)                                     # (B, R_n, H)
        else:
            per_position = weight.reshape(-1, n, D).permute(2, 1, 0).reshape(D, -1)  # (D, n·H): [W_n^(j)ᵀ]_j
            projected = (x.reshape(B * T, D) @ per_position).view(B, T, n, -1)        # (B, T, n, H)
            pre = bias + sum(projected[:, tup[:, j], j] for j in range(n))            # (B, R_n, H); j < n positions
        relations.append(F.relu(pre).sum(1))                                          # Eq. (5): R_n (B, H)
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
def _scale_meta(meta_ptr, scale):
    # per scale: n, R_n, its first row in the stacked tuple table, its first position column start_n
    row = meta_ptr + scale * 4
    return tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3)


@triton.jit
def _tuple_preactivation(proj_video, table_ptr, stride_tab, stride_pt, row0, n, start, H, offs_r, mask_r, offs_h,
                         mask_h, bias, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, ACC: tl.constexpr):
    # Eq. (5) before the ReLU, for BLOCK_R tuples: b_n + Σ_j P[t_j, start_n + j], one gathered H-row per position
    pre = tl.zeros([BLOCK_R, BLOCK_H], ACC) + bias[None, :]
    for j in range(0, n):
        frame = tl.load(table_ptr + (row0 + offs_r).to(tl.int64) * stride_tab + j, mask=mask_r, other=0)
        rows = proj_video + frame.to(tl.int64)[:, None] * stride_pt + ((start + j) * H + offs_h)[None, :]
        pre += tl.load(rows, mask=mask_r[:, None] & mask_h[None, :], other=0.0).to(ACC)
    return pre                                                                           # (BLOCK_R, BLOCK_H)


@triton.jit
def _log_softmax_entropy(logits):
    # Eq. (7) through log-softmax over the 2 domain logits (natural log, no epsilon): returns ln p (BLOCK_B, 2), H
    top = tl.max(logits, axis=1)
    log_p = logits - (top + tl.log(tl.sum(tl.exp(logits - top[:, None]), axis=1)))[:, None]
    return log_p, -tl.sum(tl.exp(log_p) * log_p, axis=1)


@triton.jit
def _relation_fwd_kernel(
    proj_ptr,                # (B, T, K) projections P; column (start_n + j)·H + h
    table_ptr,               # (Σ R_n, max n) int32 tuple table, every scale stacked
    meta_ptr,                # (S, 4) int32 per scale: n, R_n, first table row, start_n
    bias_ptr,                # (S, H) relation biases b_n
    rel_ptr,                 # out (B, S, H) R_n, accumulation dtype
    H,                       # relation width
    stride_pb, stride_pt, stride_tab,  # P's video and frame strides (columns are contiguous); table row stride
    BLOCK_R: tl.constexpr,   # tuples per step
    BLOCK_H: tl.constexpr,   # relation units per program
    ACC: tl.constexpr,       # accumulation dtype: fp32, or fp64 for fp64 input
):
    video, scale = tl.program_id(0).to(tl.int64), tl.program_id(1)
    n, num_tuples, row0, start = _scale_meta(meta_ptr, scale)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    bias = tl.load(bias_ptr + scale * H + offs_h, mask=mask_h, other=0.0).to(ACC)
    total = tl.zeros([BLOCK_H], ACC)
    for r0 in range(0, num_tuples, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < num_tuples
        pre = _tuple_preactivation(proj_ptr + video * stride_pb, table_ptr, stride_tab, stride_pt, row0, n, start, H,
                                   offs_r, mask_r, offs_h, mask_h, bias, BLOCK_R, BLOCK_H, ACC)
        total += tl.sum(tl.where(mask_r[:, None], tl.maximum(pre, 0.0), 0.0), axis=0)   # Eq. (5): Σ_t ReLU(·)
    tl.store(rel_ptr + (video * tl.num_programs(1) + scale) * H + offs_h, total, mask=mask_h)


@triton.jit
def _attention_fwd_kernel(
    rel_ptr,                 # (B, S, H) R_n
    w1_ptr, b1_ptr,          # (S, Hd, H), (S, Hd) discriminator layer 1
    w2_ptr, b2_ptr,          # (S, 2, Hd), (S, 2) discriminator layer 2
    hidden_ptr,              # out (S, B, Hd) discriminator ReLU activations, saved for backward
    logit_ptr, weight_ptr,   # out (B, S, 2) d̂_n and (B, S) w_n
    h_ptr,                   # out (B, H) h
    B, S, H, HD,             # sizes
    USE_ATTENTION: tl.constexpr,  # False: h = Σ_n R_n
    BLOCK_B: tl.constexpr,   # videos per program (>= 16 for tl.dot)
    BLOCK_H: tl.constexpr,   # all of H, padded to a power of two
    BLOCK_HD: tl.constexpr,  # discriminator units per step
    ACC: tl.constexpr,       # accumulation dtype
):
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h, offs_c = tl.arange(0, BLOCK_H), tl.arange(0, 2)
    mask_b, mask_h = offs_b < B, offs_h < H
    h_acc = tl.zeros([BLOCK_B, BLOCK_H], ACC)
    for s in range(0, S):
        rel = tl.load(rel_ptr + (offs_b[:, None] * S + s) * H + offs_h[None, :],
                      mask=mask_b[:, None] & mask_h[None, :], other=0.0)                 # (BLOCK_B, BLOCK_H)
        logits = tl.zeros([BLOCK_B, 2], ACC) + tl.load(b2_ptr + s * 2 + offs_c).to(ACC)[None, :]   # Eq. (6): d̂_n
        for k0 in range(0, HD, BLOCK_HD):
            offs_k = k0 + tl.arange(0, BLOCK_HD)
            mask_k = offs_k < HD
            w1t = tl.load(w1_ptr + (s * HD + offs_k[None, :]) * H + offs_h[:, None],
                          mask=mask_h[:, None] & mask_k[None, :], other=0.0).to(ACC)    # W1ᵀ (BLOCK_H, BLOCK_HD)
            b1 = tl.load(b1_ptr + s * HD + offs_k, mask=mask_k, other=0.0).to(ACC)
            hidden = tl.maximum(tl.dot(rel, w1t, input_precision="ieee") + b1[None, :], 0.0)  # (BLOCK_B, BLOCK_HD)
            tl.store(hidden_ptr + (s * B + offs_b[:, None]) * HD + offs_k[None, :], hidden,
                     mask=mask_b[:, None] & mask_k[None, :])
            w2 = tl.load(w2_ptr + (s * 2 + offs_c[:, None]) * HD + offs_k[None, :], mask=mask_k[None, :],
                         other=0.0).to(ACC)                                              # (2, BLOCK_HD)
            logits += tl.sum(hidden[:, None, :] * w2[None, :, :], axis=2)               # 2 outputs: no tl.dot
        _, entropy = _log_softmax_entropy(logits)
        weight = 1.0 - entropy                                                           # Eq. (7)
        tl.store(logit_ptr + (offs_b[:, None] * S + s) * 2 + offs_c[None, :], logits, mask=mask_b[:, None])
        tl.store(weight_ptr + offs_b * S + s, weight, mask=mask_b)
        if USE_ATTENTION:
            h_acc += (1.0 + weight)[:, None] * rel                                       # Eq. (8)
        else:
            h_acc += rel
    tl.store(h_ptr + offs_b[:, None] * H + offs_h[None, :], h_acc, mask=mask_b[:, None] & mask_h[None, :])


@triton.jit
def _attention_bwd_kernel(
    rel_ptr, w1_ptr, w2_ptr,  # saved R (B, S, H); W1 (S, Hd, H); W2 (S, 2, Hd)
    hidden_ptr, logit_ptr,    # saved discriminator activations (S, B, Hd) and d̂ (B, S, 2)
    grad_h_ptr, grad_w_ptr,   # upstream dL/dh (B, H), dL/dw (B, S)
    grad_rel_ptr, grad_logit_ptr,  # upstream dL/dR (B, S, H), dL/dd̂ (B, S, 2)
    grad_rel_total_ptr,       # out (B, S, H) total dL/dR_n, GRL applied
    grad_pre_ptr,             # out (S, B, Hd) dL/d(discriminator pre-activation), for dW1 and db1
    grad_logit_total_ptr,     # out (S, B, 2) total dL/dd̂ (upstream + through w), for dW2 and db2
    grl_scale, B, S, H, HD,   # λ and sizes
    USE_ATTENTION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HD: tl.constexpr,
    ACC: tl.constexpr,        # as in _attention_fwd_kernel
):
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h, offs_c = tl.arange(0, BLOCK_H), tl.arange(0, 2)
    mask_b, mask_h = offs_b < B, offs_h < H
    mask_bh = mask_b[:, None] & mask_h[None, :]
    grad_h = tl.load(grad_h_ptr + offs_b[:, None] * H + offs_h[None, :], mask=mask_bh, other=0.0).to(ACC)
    for s in range(0, S):
        rel_offs = (offs_b[:, None] * S + s) * H + offs_h[None, :]
        logit_offs = (offs_b[:, None] * S + s) * 2 + offs_c[None, :]
        rel = tl.load(rel_ptr + rel_offs, mask=mask_bh, other=0.0)
        log_p, entropy = _log_softmax_entropy(tl.load(logit_ptr + logit_offs, mask=mask_b[:, None], other=0.0))
        grad_rel = tl.load(grad_rel_ptr + rel_offs, mask=mask_bh, other=0.0).to(ACC)
        grad_w = tl.load(grad_w_ptr + offs_b * S + s, mask=mask_b, other=0.0).to(ACC)
        if USE_ATTENTION:
            grad_rel += (2.0 - entropy)[:, None] * grad_h                                # Eq. (8): ∂h/∂R_n = 1 + w_n
            grad_w += tl.sum(grad_h * rel, axis=1)                                       # ∂h/∂w_n = R_n
        else:
            grad_rel += grad_h
        # Eq. (7): ∂w/∂d̂_c = p_c · (ln p_c + H)
        grad_logit = tl.load(grad_logit_ptr + logit_offs, mask=mask_b[:, None], other=0.0).to(ACC)
        grad_logit += grad_w[:, None] * tl.exp(log_p) * (log_p + entropy[:, None])       # (BLOCK_B, 2)
        tl.store(grad_logit_total_ptr + (s * B + offs_b[:, None]) * 2 + offs_c[None, :], grad_logit,
                 mask=mask_b[:, None])
        back = tl.zeros([BLOCK_B, BLOCK_H], ACC)
        for k0 in range(0, HD, BLOCK_HD):
            offs_k = k0 + tl.arange(0, BLOCK_HD)
            mask_k = offs_k < HD
            mask_bk = mask_b[:, None] & mask_k[None, :]
            hidden = tl.load(hidden_ptr + (s * B + offs_b[:, None]) * HD + offs_k[None, :], mask=mask_bk, other=0.0)
            w2 = tl.load(w2_ptr + (s * 2 + offs_c[:, None]) * HD + offs_k[None, :], mask=mask_k[None, :],
                         other=0.0).to(ACC)                                              # (2, BLOCK_HD)
            grad_pre = tl.sum(grad_logit[:, :, None] * w2[None, :, :], axis=1)
            grad_pre = tl.where(hidden > 0.0, grad_pre, 0.0)                             # (BLOCK_B, BLOCK_HD)
            tl.store(grad_pre_ptr + (s * B + offs_b[:, None]) * HD + offs_k[None, :], grad_pre, mask=mask_bk)
            w1 = tl.load(w1_ptr + (s * HD + offs_k[:, None]) * H + offs_h[None, :],
                         mask=mask_k[:, None] & mask_h[None, :], other=0.0).to(ACC)     # (BLOCK_HD, BLOCK_H)
            back += tl.dot(grad_pre, w1, input_precision="ieee")
        # GRL: the discriminator's gradient reaches R_n reversed and scaled by λ
        tl.store(grad_rel_total_ptr + rel_offs, grad_rel - grl_scale * back, mask=mask_bh)


@triton.jit
def _relation_bwd_kernel(
    proj_ptr, table_ptr, meta_ptr, bias_ptr,  # as in _relation_fwd_kernel
    grad_rel_ptr,            # (B, S, H) total dL/dR_n from _attention_bwd_kernel
    grad_proj_ptr,           # out (B, T, K) dL/dP, laid out like P
    grad_bias_ptr,           # out (B, S, H) per-video dL/db_n, summed over videos by the launcher
    T, H, stride_pb, stride_pt, stride_tab,  # sizes and strides as in _relation_fwd_kernel
    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, ACC: tl.constexpr,
    N_PAD: tl.constexpr,     # positions, padded (N_PAD·T_PAD >= 16 for tl.dot)
    T_PAD: tl.constexpr,     # frames, padded
):
    video, scale = tl.program_id(0).to(tl.int64), tl.program_id(1)
    n, num_tuples, row0, start = _scale_meta(meta_ptr, scale)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    bias = tl.load(bias_ptr + scale * H + offs_h, mask=mask_h, other=0.0).to(ACC)
    # one row q per (position j, frame t): counts[q, h] = #{tuples with t_j = t whose unit h is active}
    offs_q = tl.arange(0, N_PAD * T_PAD)
    q_pos, q_frame = offs_q // T_PAD, offs_q % T_PAD
    counts = tl.zeros([N_PAD * T_PAD, BLOCK_H], tl.float32)
    for r0 in range(0, num_tuples, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < num_tuples
        pre = _tuple_preactivation(proj_ptr + video * stride_pb, table_ptr, stride_tab, stride_pt, row0, n, start, H,
                                   offs_r, mask_r, offs_h, mask_h, bias, BLOCK_R, BLOCK_H, ACC)
        active = ((pre > 0.0) & mask_r[:, None]).to(tl.float16)                          # ReLU' (BLOCK_R, BLOCK_H)
        table_q = tl.load(table_ptr + (row0 + offs_r[None, :]).to(tl.int64) * stride_tab + q_pos[:, None],
                          mask=(q_pos[:, None] < n) & mask_r[None, :], other=-1)         # (N_PAD·T_PAD, BLOCK_R)
        one_hot = (table_q == q_frame[:, None]).to(tl.float16)
        counts = tl.dot(one_hot, active, counts)                                         # exact: 0/1 in, fp32 sums
    grad_rel = tl.load(grad_rel_ptr + (video * tl.num_programs(1) + scale) * H + offs_h, mask=mask_h, other=0.0)
    # every tuple has exactly one frame at position 0, so the position-0 rows add up to the active-tuple count
    active_total = tl.sum(tl.where((q_pos == 0)[:, None], counts, 0.0), axis=0)
    tl.store(grad_bias_ptr + (video * tl.num_programs(1) + scale) * H + offs_h, grad_rel * active_total.to(ACC),
             mask=mask_h)
    dst = grad_proj_ptr + video * stride_pb + q_frame[:, None] * stride_pt + ((start + q_pos) * H)[:, None]
    tl.store(dst + offs_h[None, :], (counts.to(ACC) * grad_rel[None, :]).to(grad_proj_ptr.dtype.element_ty),
             mask=((q_pos < n) & (q_frame < T))[:, None] & mask_h[None, :])


# ---- launchers ----
_PLANS = {}  # device copies of tuple tables, keyed by the caller's tensors (kept alive here, so keys stay unique)


def _tuple_plan(tuples, num_frames, hidden, device):
    """Stacked int32 tuple table, per-scale metadata and the weight-gradient row order; built once per table."""
    key = (str(device), num_frames, hidden) + tuple((t.data_ptr(), tuple(t.shape), t._version) for t in tuples)
    if key not in _PLANS:
        tables = [t.detach().cpu().long() for t in tuples]
        for t in tables:
            if t.dim() != 2 or t.numel() == 0 or t.min() < 0 or t.max() >= num_frames \
                    or not bool((t[:, 1:] > t[:, :-1]).all()):
                raise ValueError(f"each tuple table must be (R_n, n) strictly increasing frame indices < {num_frames}")
        sizes, counts = [t.shape[1] for t in tables], [t.shape[0] for t in tables]
        starts = [sum(sizes[:s]) for s in range(len(sizes))]
        meta = [(n, r, sum(counts[:s]), starts[s]) for s, (n, r) in enumerate(zip(sizes, counts))]
        # dL/dW comes out in P's row order (scale, position j, unit h); nn.Linear's W_n viewed (H·n, D) is (h, j)
        grad_rows = [(torch.arange(n) * hidden + torch.arange(hidden)[:, None]).reshape(-1) + start * hidden
                     for n, start in zip(sizes, starts)]
        table = torch.cat([F.pad(t, (0, max(sizes) - t.shape[1]), value=-1) for t in tables])
        if len(_PLANS) >= 16:
            _PLANS.pop(next(iter(_PLANS)))
        _PLANS[key] = dict(sizes=sizes, counts=counts, starts=starts, keep_alive=tuple(tuples),
                           table=table.to(device=device, dtype=torch.int32),
                           meta=torch.tensor(meta, dtype=torch.int32, device=device),
                           grad_rows=torch.cat(grad_rows).to(device))
    return _PLANS[key]


def _pow2(x, low, high):
    return max(low, min(high, triton.next_power_of_2(x)))


def _relation_blocks(hidden, plan, num_frames, backward):
    # Heuristic, no autotuning: 16 is tl.dot's minimum; 64 keeps a (BLOCK_R, BLOCK_H) fp32 tile at 32 registers per
    # thread with 4 warps. Backward also holds the (N_PAD·T_PAD, BLOCK_H) counts, so it caps both tiles at 8192
    # elements and uses 8 warps when the count tile is large (T = 16: 256 rows).
    n_pad, t_pad = triton.next_power_of_2(max(plan["sizes"])), triton.next_power_of_2(num_frames)
    n_pad = max(n_pad, 16 // t_pad)
    cap = max(16, min(64, 8192 // (n_pad * t_pad))) if backward else 64
    warps = 8 if backward and n_pad * t_pad >= 128 else 4
    return _pow2(max(plan["counts"]), 16, cap), _pow2(hidden, 16, cap), n_pad, t_pad, warps


def _attention_blocks(hidden, hidden_d):
    # 16 videos per program (tl.dot's minimum), all of H in one tile, Hd in chunks that keep W1's tile <= 4096 values
    block_h = _pow2(hidden, 16, 1024)
    return 16, block_h, _pow2(hidden_d, 16, max(16, 4096 // block_h)), 8 if block_h >= 256 else 4


def _accumulator(dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


# ---- autograd ----
class RelationAttentionFunction(torch.autograd.Function):
    """The Triton path. params: W_n, b_n for every scale, then W1, b1, W2, b2 for every scale (or nothing)."""

    @staticmethod
    def forward(ctx, frames, plan, grl_scale, use_attention, *params):
        frames = frames.contiguous()
        (B, T, D), S, H = frames.shape, len(plan["sizes"]), params[0].shape[0]
        acc, tl_acc = _accumulator(frames.dtype)
        # Eq. (5), the matmul: P[b, t, (start_n + j)·H + h] = x[b, t] · W_n^(j)[h]; one copy orders W by position
        stacked = torch.cat([w.reshape(H, n, D).transpose(0, 1) for w, n in zip(params[0:2 * S:2], plan["sizes"])])
        stacked = stacked.view(-1, D).to(frames.dtype)                                   # (K, D)
        proj = torch.mm(frames.view(B * T, D), stacked.t()).view(B, T, -1)              # (B, T, K)
        biases = torch.stack(params[1:2 * S:2])                                          # (S, H)
        relations = torch.empty(B, S, H, device=frames.device, dtype=acc)
        block_r, block_h, _, _, warps = _relation_blocks(H, plan, T, backward=False)
        _relation_fwd_kernel[(B, S, triton.cdiv(H, block_h))](
            proj, plan["table"], plan["meta"], biases, relations, H, proj.stride(0), proj.stride(1),
            plan["table"].stride(0), BLOCK_R=block_r, BLOCK_H=block_h, ACC=tl_acc, num_warps=warps)
        ctx.grl_scale, ctx.use_attention, ctx.plan = grl_scale, use_attention, plan
        disc = params[2 * S:]
        if not disc:                                                                     # h = Σ_n R_n
            ctx.save_for_backward(frames, stacked, proj, biases)
            return (relations.sum(1).to(frames.dtype), frames.new_empty(B, 0), relations.to(frames.dtype),
                    frames.new_empty(B, 0, 2))
        HD = disc[0].shape[0]
        flat = torch.cat([p.reshape(-1) for k in range(4) for p in disc[k::4]])         # all W1, b1, W2, b2
        w1, b1, w2, b2 = (part.view(shape) for part, shape in zip(
            flat.split([S * HD * H, S * HD, S * 2 * HD, S * 2]), [(S, HD, H), (S, HD), (S, 2, HD), (S, 2)]))
        hidden, logits, weights, h = (torch.empty(*shape, device=frames.device, dtype=acc)
                                      for shape in [(S, B, HD), (B, S, 2), (B, S), (B, H)])
        block_b, block_h, block_hd, warps = _attention_blocks(H, HD)
        _attention_fwd_kernel[(triton.cdiv(B, block_b),)](
            relations, w1, b1, w2, b2, hidden, logits, weights, h, B, S, H, HD, USE_ATTENTION=use_attention,
            BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_HD=block_hd, ACC=tl_acc, num_warps=warps)
        ctx.save_for_backward(frames, stacked, proj, biases, relations, hidden, logits, w1, w2)
        return tuple(t.to(frames.dtype) for t in (h, weights, relations, logits))

    @staticmethod
    def backward(ctx, grad_h, grad_w, grad_rel, grad_logit):
        frames, stacked, proj, biases = ctx.saved_tensors[:4]
        (B, T, D), (S, H), plan = frames.shape, biases.shape, ctx.plan
        acc, tl_acc = _accumulator(frames.dtype)
        disc_grads = []
        if len(ctx.saved_tensors) > 4:
            relations, hidden, logits, w1, w2 = ctx.saved_tensors[4:]
            HD = w1.shape[1]
            grad_rel_total = torch.empty(B, S, H, device=frames.device, dtype=acc)
            grad_pre, grad_logit_total = (torch.empty(S, B, k, device=frames.device, dtype=acc) for k in (HD, 2))
            block_b, block_h, block_hd, warps = _attention_blocks(H, HD)
            _attention_bwd_kernel[(triton.cdiv(B, block_b),)](
                relations, w1, w2, hidden, logits, grad_h.contiguous(), grad_w.contiguous(), grad_rel.contiguous(),
                grad_logit.contiguous(), grad_rel_total, grad_pre, grad_logit_total, ctx.grl_scale, B, S, H, HD,
                USE_ATTENTION=ctx.use_attention, BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_HD=block_hd, ACC=tl_acc,
                num_warps=warps)
            # discriminator weights: normal sign, summed over videos, one bmm per layer for all scales
            grad_w1 = torch.bmm(grad_pre.transpose(1, 2), relations.transpose(0, 1))      # (S, Hd, H)
            grad_w2 = torch.bmm(grad_logit_total.transpose(1, 2), hidden)                 # (S, 2, Hd)
            grad_b1, grad_b2 = grad_pre.sum(1), grad_logit_total.sum(1)
            disc_grads = [g for s in range(S) for g in (grad_w1[s], grad_b1[s], grad_w2[s], grad_b2[s])]
        else:
            grad_rel_total = (grad_rel.to(acc) + grad_h.to(acc)[:, None]).contiguous()    # h = Σ_n R_n
        grad_proj = torch.empty_like(proj)
        grad_bias = torch.empty(B, S, H, device=frames.device, dtype=acc)
        block_r, block_h, n_pad, t_pad, warps = _relation_blocks(H, plan, T, backward=True)
        _relation_bwd_kernel[(B, S, triton.cdiv(H, block_h))](
            proj, plan["table"], plan["meta"], biases, grad_rel_total, grad_proj, grad_bias, T, H,
            proj.stride(0), proj.stride(1), plan["table"].stride(0), BLOCK_R=block_r, BLOCK_H=block_h,
            ACC=tl_acc, N_PAD=n_pad, T_PAD=t_pad, num_warps=warps)
        grad_proj = grad_proj.view(B * T, -1)                                            # (B·T, K)
        grad_frames = torch.mm(grad_proj, stacked).view(B, T, D) if ctx.needs_input_grad[0] else None
        grad_stacked = torch.mm(grad_proj.t(), frames.view(B * T, D)).index_select(0, plan["grad_rows"])
        grad_biases, relation_grads = grad_bias.sum(0), []                               # (S, H)
        for s, (n, start) in enumerate(zip(plan["sizes"], plan["starts"])):
            relation_grads += [grad_stacked[start * H:(start + n) * H].view(H, n * D), grad_biases[s]]
        return (grad_frames, None, None, None, *relation_grads, *disc_grads)


# ---- the public op ----
def relation_attention(frames, tuples, relation_weights, discriminator_weights, grl_scale,
                       use_attention=True, backend="auto"):
    """TA3N's relation module and domain attention (Eqs. 5-8) as one op; the module docstring has the math.

    Args:
        frames: (B, T, D) fp32, fp16 or bf16 (fp64 works too).
        tuples: relation_tuples(T, ...): list over scales of long (R_n, n) frame indices. Build it once (for example
            as module buffers): the Triton path caches a device copy per tuple tensor.
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
    plan = _tuple_plan(tuples, T, H, frames.device)
    params = [p for pair in relation_weights for p in pair] + [p for quad in discriminator_weights or [] for p in quad]
    h, weights, relations, logits = RelationAttentionFunction.apply(frames, plan, float(grl_scale),
                                                                    bool(use_attention), *params)
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
