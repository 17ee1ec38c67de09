"""TCoN: Temporal Co-attention Network, on pre-extracted frame features.

Boxiao Pan*, Zhangjie Cao*, Ehsan Adeli, Juan Carlos Niebles: "Adversarial Cross-Domain Action Recognition with
Co-Attention", AAAI 2020, https://arxiv.org/abs/1912.10405. The authors released no code, so this file is the
reference: every detail the paper leaves open is decided below, with why (docs/tcon.md has the measurements).

    python tcon.py                                             # SYNTHETIC synth2-a -> synth2-b
    python tcon.py --source ucf --target hmdb --data-root DATA
    python tcon.py --backbone trn                              # TRN relation tokens (paper Table 3, vs TA3N)
    python tcon.py --source-only                               # the paper's "TSN" row: source labels only
    python tcon.py --lambda-d 1 --alignment soft --pseudo-labels threshold --pseudo-start 0   # paper-literal

Each step pairs every source video with target videos predicted as its class inside the mini-batch, builds a
co-attention matrix per pair, derives from it the attention that weights the classifier's segment logits
(source: co-attention; target: a small network G_a trained to regress it) and re-arranges the source segments
into the target's temporal order ("target-aligned source features"), which two adversarial discriminators
match against target videos (video level) and source segments (segment level).

Paper -> code  (f = a segment token of G_f; cosine similarity <·,·>, see choice 3)
  Eq. (1-2)  a^ss_j = 1/(K−1) Σ_{j̄≠j} <f_j, f_j̄>  (a^tt likewise)              self_attention()
  (text)     A^st[j, j'] = <f^s_j, f^t_j'>                                      similarity()
  Eq. (3)    A^co = (a^ss a^ttᵀ) ⊙ A^st                                         co_attention()
  Eq. (4-5)  a^s, a^t: mean over a video's pairs of A^co's row / column sums       ground_truth_attention()
  Eq. (6)    â^t = G_a(f^t) = softmax_j'(MLP(f^t_j'))                             AttentionNet
  Eq. (7)    C_a = MSE(K·â^t, K·a^t)                                            attention_loss()
  Eq. (8)    C_y = CE(Σ_j a^s_j G_y(f^s_j), y) + CE(Σ_j' â^t_j' G_y(f^t_j'), ŷ) (ŷ: --pseudo-labels)
                                                                              attentive_logits(), classification_loss()
  Eq. (9)    f̂_{k,j'} = Σ_j W_k[j, j'] f^s_j, W: A^co's columns, one-hot or softmax  alignment_weights(),
                                                                              target_aligned()
  Eq. (10)   C_dv = BCE(G^v_d(F^t), 1) + BCE(G^v_d(F̂), 0), F = K tokens concatenated   video_domain_loss()
  Eq. (11)   C_ds = BCE(G^seg_d(f^s_j), 1) + BCE(G^seg_d(f̂_j'), 0)              segment_domain_loss()
  Eq. (12)   min_{f,a,y} C_y + λ_a C_a − λ_d (C_dv + C_ds)   (GRL(λ_d) before both discriminators)   tcon_step()
  Eq. (13)   min_{d} C_dv + C_ds                                                (same step, through the GRL)
Shapes: B_s, B_t source/target batch, K tokens per video (segments; R = 10 relation tuples with --backbone trn),
D input width, d token width (512 tsn, 256 trn), P pairs, C classes.

Where the paper is silent or wrong, and what we chose (all ours unless a paper's text is quoted)
 1. G_f = Linear(D→512) → ReLU per frame (TA3N's shared fc), TA3N's N(0, 0.001) init on every layer but TRN's
    fusion layers (the TA3N comparison starts from the same point; G_a starts at uniform attention). Dropout(0.5)
    only in front of G_y: co-attention and both discriminators see the tokens before dropout (a mix of dropped-out
    tokens has fewer exact zeros than one dropped-out token, a free tell for G^v_d). ReLU keeps tokens ≥ 0.
 2. --backbone trn (Table 3; the paper does not map segments onto TRN): each of TRN-M's official 3-per-scale
    tuples gives one token ReLU(W_n[f_t1; …; f_tn]) (256-d, K=5: R = 10) and TCoN runs on these tokens. TRN-M sums
    the tuple features before a linear G_y; the attention-weighted sum of tuple logits is that sum, reweighted.
 3. <·,·> is cosine: raw inner products of 512-d ReLU tokens are O(10-100) and make a^ss·a^tt explode.
    --similarity dot gives the literal inner product (/ √d).
 4. Pairs ("similar label predictions, within the mini-batch"): score = P^t (P^s)ᵀ of the detached softmax
    predictions (source: mean segment logits). --pairing source (default): each source takes its top-2 targets
    among those predicted as its label (its single best target when none is); target: each target takes its
    top-2 sources of its predicted class (the other natural reading). Why source: with target-picked
    pairs the class mix of F̂ follows the target predictions, so Eq. (10) pulls the targets towards the classes
    they are already predicted as (on the retired v1 synthetic benchmark the target predictions collapsed onto one
    class within 3 epochs). Source-picked pairs give F̂ the source label mix whatever the predictions say.
 5. a^s, a^t: mean over a video's pairs (Eqs. 4-5), L1-normalised ("all attention vectors sum to 1"), detached
    (regression targets and classifier weights). A video in no pair uses its normalised a^ss / a^tt; C_a (Eq. 7)
    averages over the paired targets only.
 6. G_a = Linear(d→128) → ReLU → Linear(128→1) per token, softmax over the tokens (sums to 1 like a^t).
    L_a = MSE of K·â^t against K·a^t (uniform = 1, size independent of K); λ_a = 1.
 7. Warm-up: uniform target attention until G_a beats it, EMA(0.9) of C_a < 0.5 × EMA of the C_a of uniform
    attention (scale-free), at the latest after 20 % of the steps; G_a trains from the start. On synth2-a -> b TRN
    switches by the criterion (steps 22-27), TSN by the cap (G_a stays ≥ 0.92 × uniform's C_a): time-based there.
    An absolute EMA(C_a) < 0.01 fired at step 1 on TSN, before G_a had learned anything.
 8. Eq. (9): W = one-hot on each target token's best source token (--alignment hard), detached; the source values
    keep their gradient, so every f̂ token is a real source token. Why: a blend is detectable. A fresh
    discriminator tells real source tokens from source tokens blended into another source video's order (trained
    TRN tokens: C_ds 0.63, C_dv 0.013 soft; 1.32, 0.62 hard; chance 1.39); keeping the norm changes nothing. With
    soft weights G^v_d wins Eq. 10 through the blend, not the domain, and λ_d = 1 wrecks the features to hide it.
    --alignment soft: the pair's A^co min-max rescaled to [0, 1], then the column softmax at τ = 0.1 (raw A^co,
    0.38 ± 0.06 at init on TSN tokens, gives near-uniform columns).
 9. Eq. (8): attention weights the segment logits, then CE. The target term (the paper's confident targets on
    pseudo-labels, threshold not given) is off by default: balanced and from half-way, it helps TRN by 3 points
    over seeds 1-3 but costs TSN 8, whose target predictions are less than half right. --pseudo-labels threshold
    (max softmax ≥ 0.9) / balanced (also ≤ ⌈B_t/C⌉ per predicted class), --pseudo-start (fraction of the steps,
    never before the warm-up ends); the target sum is divided by all B_t (the paper's 1/N_t).
10. Eq. (11) typo: the text labels *target* segments 1 but the equation feeds source segments: source = 1,
    target-aligned = 0. Eq. (12) sign: "− λ_d (C_dv − C_ds)" would make G_f help the segment discriminator,
    against the paper's goal and its −SAdNet ablation: both discriminators sit behind one GRL(λ_d).
11. λ_d = 0.1 · (2/(1+exp(−10p)) − 1), p = step / all steps. The paper ramps "from 0 to 1 as in DANN"
    (--lambda-d 1): with soft weights TRN then peaks and collapses (docs/tcon.md). G^v_d = Linear(K·d→512) → ReLU
    → Dropout(0.5) → Linear(512→1), G^seg_d = Linear(d→512) → ReLU → Linear(512→1), BCE; each loss sums its two
    per-term means.
12. Optimiser: the paper's Adam, lr 3e-4, ×0.1 every 30 epochs (never, in the protocol's 30); --lr-schedule
    anneal (lr0/(1+10p)^0.75 per step) with --no-lambda-ramp is TA3N's style, measured lower (the lr ends at
    0.17×). TA3N's SGD (lr 0.03) barely moves these heads from the N(0, 0.001) init, so it is not offered. Batch:
    the protocol's 128 source + 74 target (the paper: 64). K = 5 (the paper grid-searches K; values unavailable).
    Training frames: TSN random offsets in the K segments; testing: centred frames, â^t from G_a.

Ablation flags (paper Table 5, Jester)
  --no-segment-discriminator   TCoN − SAdNet: no C_ds
  --no-aligned                 TCoN − TAdNet: one video discriminator on concatenated source vs target, no f̂
  --no-co-attention            TCoN − CoAttn: normalised self-attention a^ss/a^tt replace a^s/a^t (classifier
                               and G_a's targets); Eq. (9) aligns with A^st alone (the paper does not say what
                               aligns without co-attention; A^st is A^co without its self-attention factors)
  --no-attentive-classifier    TCoN − Attn: segment logits averaged uniformly; G_a and C_a unused
  --pairing target             who picks partners (choice 4); --similarity dot, --alignment soft --tau: 3 and 8
  --lambda-d 1, --no-lambda-ramp, --lr-schedule anneal, --pseudo-labels, --pseudo-start, --warmup-ratio: 7, 9, 11, 12
  --source-only                no target data: uniform average of segment logits, source labels only
                               (Table 1's TSN row; with --backbone trn, Table 3's TRN)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from kernels import relation_tuples      # TRN-M's official tuple table (shared with ta3n.py)


@dataclass
class Args(data.RunArgs):
    lr: float = field(default=3e-4, metadata={"help": "initial learning rate (paper: Adam 3e-4)"})
    backbone: str = field(default="tsn", metadata={"help": "tokens: tsn segments or trn relation tuples",
                                                   "choices": ["tsn", "trn"]})
    similarity: str = field(default="cosine", metadata={"help": "<·,·> of Eqs. 1-3: cosine, or dot (inner product "
                                                         "/ √d, the literal one)", "choices": ["cosine", "dot"]})
    tau: float = field(default=0.1, metadata={"help": "temperature of Eq. 9's column softmax (--alignment soft)"})
    pairing: str = field(default="source", metadata={"help": "who picks partners in the batch: each source its "
                                                    "targets, or each target its sources", "choices":
                                                    ["source", "target"]})
    pairs_per_video: int = field(default=2, metadata={"help": "same-class partners each picking video takes"})
    lambda_a: float = field(default=1.0, metadata={"help": "weight λ_a of the attention regression loss C_a"})
    lambda_d: float = field(default=0.1, metadata={"help": "final value of the GRL weight λ_d of both discriminators "
                                                   "(paper: 1)"})
    lambda_ramp: bool = field(default=True, metadata={"help": "ramp λ_d from 0 as in DANN (paper); off: constant λ_d"})
    lr_schedule: str = field(default="step", metadata={"help": "step: ×0.1 every --lr-step epochs (paper); anneal: "
                                                       "lr0/(1+10p)^0.75 per step (DANN, TA3N)",
                                                       "choices": ["step", "anneal"]})
    alignment: str = field(default="hard", metadata={"help": "Eq. 9 weights: soft (column softmax at --tau) or hard "
                                                     "(each target token takes its best source token)",
                                                     "choices": ["soft", "hard"]})
    pseudo_labels: str = field(default="off", metadata={"help": "target term of Eq. 8: off, threshold "
                                                             "(confident targets), or balanced (confident, at most "
                                                             "B_t/C per predicted class)",
                                                             "choices": ["off", "threshold", "balanced"]})
    pseudo_threshold: float = field(default=0.9, metadata={"help": "confidence for a target pseudo-label (Eq. 8)"})
    pseudo_start: float = field(default=0.0, metadata={"help": "pseudo-labels from this fraction of all steps on "
                                                       "(and never before the warm-up ends)"})
    warmup_ratio: float = field(default=0.5, metadata={"help": "G_a replaces uniform target attention once EMA(C_a) "
                                                       "< this × EMA(C_a of uniform attention)"})
    warmup_max_fraction: float = field(default=0.2, metadata={"help": "switch to G_a at the latest after this "
                                                                "fraction of all steps"})
    segment_discriminator: bool = field(default=True, metadata={"help": "segment-level discriminator (Eq. 11)"})
    aligned: bool = field(default=True, metadata={"help": "target-aligned source features (Eq. 9); off: one "
                                                  "discriminator on source vs target videos"})
    co_attention: bool = field(default=True, metadata={"help": "co-attention (Eq. 3); off: self-attention only"})
    attentive_classifier: bool = field(default=True, metadata={"help": "attention-weighted segment logits; off: "
                                                               "uniform average"})
    source_only: bool = field(default=False, metadata={"help": "train on source labels only (no target data)"})
    lr_step: int = field(default=30, metadata={"help": "multiply the lr by 0.1 every this many epochs"})
    train_sampling: str = field(default="random", metadata={"help": "training frames: random (TSN) or center",
                                                            "choices": ["random", "center"]})


FRAME_DIM, RELATION_DIM, ATTENTION_HIDDEN, DISC_HIDDEN, DROPOUT = 512, 256, 128, 512, 0.5
WARMUP_EMA = 0.9


# ---- method: TCoN (Pan et al.) ----
# == feature extractor G_f: segment tokens (TSN) or relation tokens (TRN) ==


class FeatureExtractor(nn.Module):
    """G_f: per-frame Linear → ReLU (tsn), then one ReLU(Linear) token per relation tuple (trn). (B, K, D) ->
    (B, K, 512) or (B, R, 256); dropout is applied by the caller (choice 1)."""

    def __init__(self, in_dim: int, *, num_segments: int, backbone: str):
        super().__init__()
        self.frame = nn.Linear(in_dim, FRAME_DIM)
        self.out_dim, self.scales = FRAME_DIM, []
        if backbone == "trn":
            tuples = relation_tuples(num_segments)
            self.scales = [t.shape[1] for t in tuples]
            for t in tuples:                                 # buffers follow .to(device); rebuilt, not checkpointed
                self.register_buffer(f"tuples_{t.shape[1]}", t, persistent=False)
            self.fuse = nn.ModuleList([nn.Linear(n * FRAME_DIM, RELATION_DIM) for n in self.scales])
            self.out_dim = RELATION_DIM

    def forward(self, x):
        f = F.relu(self.frame(x))                                                 # (B, K, 512)
        if not self.scales:
            return f
        # one gather per scale, all tuples of the scale at once (a loop over ≤ K−1 scales, never over tuples)
        tokens = [F.relu(fuse(f[:, getattr(self, f"tuples_{n}")].flatten(2)))     # (B, R_n, n·512) -> (B, R_n, 256)
                  for n, fuse in zip(self.scales, self.fuse)]
        return torch.cat(tokens, 1)                                               # (B, R, 256)


# == co-attention module (paper Fig. 3) ==

def similarity(f_a, f_b, kind: str = "cosine"):
    """<f_a_j, f_b_j'> for all token pairs: (..., K_a, d), (..., K_b, d) -> (..., K_a, K_b)."""
    if kind == "cosine":
        f_a, f_b = F.normalize(f_a, dim=-1), F.normalize(f_b, dim=-1)
        return f_a @ f_b.transpose(-1, -2)
    return f_a @ f_b.transpose(-1, -2) / math.sqrt(f_a.shape[-1])


def self_attention(f, kind: str = "cosine"):
    """Eqs. (1-2): mean similarity of each token with the other K−1 tokens of its video. (B, K, d) -> (B, K)."""
    gram = similarity(f, f, kind)                                                 # (B, K, K)
    return (gram.sum(-1) - gram.diagonal(dim1=-2, dim2=-1)) / (f.shape[1] - 1)    # Eq. (1-2)


def co_attention(f_s, f_t, src, tgt, kind: str = "cosine"):
    """Eq. (3) for the pairs (src[p], tgt[p]). f_s (B_s, K, d), f_t (B_t, K, d), src/tgt (P,) long.
    Returns A^co (P, K_s, K_t), A^st (P, K_s, K_t), a^ss (B_s, K), a^tt (B_t, K)."""
    a_ss, a_tt = self_attention(f_s, kind), self_attention(f_t, kind)
    a_st = similarity(f_s[src], f_t[tgt], kind)                                   # (P, K_s, K_t)
    a_co = a_ss[src, :, None] * a_tt[tgt, None, :] * a_st                         # Eq. (3): (a^ss a^ttᵀ) ⊙ A^st
    return a_co, a_st, a_ss, a_tt


def l1_normalise(v, eps: float = 1e-12):
    """Rows scaled to sum 1; an all-zero row (all tokens zero) becomes uniform."""
    total = v.sum(-1, keepdim=True)
    return torch.where(total > eps, v / total.clamp_min(eps), torch.full_like(v, 1.0 / v.shape[-1]))


def ground_truth_attention(a_co, src, tgt, a_ss, a_tt):
    """Eqs. (4-5): per video, the mean over its pairs of A^co's row sums (source) / column sums (target), then
    L1-normalised. A video in no pair falls back to its normalised self-attention. Returns (B_s, K), (B_t, K)."""
    def pool(sums, idx, fallback):
        total = torch.zeros_like(fallback).index_add_(0, idx, sums)              # Σ over the video's pairs
        count = torch.bincount(idx, minlength=len(fallback)).to(sums.dtype)[:, None]    # M_i
        return l1_normalise(torch.where(count > 0, total / count.clamp_min(1), fallback))
    return pool(a_co.sum(2), src, a_ss), pool(a_co.sum(1), tgt, a_tt)            # Eq. (4), Eq. (5)


def top_same_class(score, same, k: int):
    """Each row's top-k columns by score among the columns of its class (same-class columns rank first), or its
    single best column when none shares the class. score/same (R, C). Returns row (P,), col (P,)."""
    col = (score + 2.0 * same).topk(min(k, score.shape[1]), dim=1).indices    # (R, k); score in [0, 1]
    keep = same.gather(1, col)
    keep[:, 0] = True                                                             # every row keeps its best
    row = torch.arange(len(score), device=col.device)[:, None].expand_as(col)
    return row[keep], col[keep]


def pair_by_prediction(probs_s, labels_s, probs_t, k: int, by: str = "source"):
    """Choice 4: pairs of similar label predictions within the batch. by="source": each source takes its top-k
    targets predicted as its label; by="target": each target takes its top-k sources labelled with its predicted
    class. probs (B, C) detached, labels_s (B_s,). Returns src (P,), tgt (P,)."""
    score = probs_t @ probs_s.T                                                   # (B_t, B_s), in [0, 1]
    same = labels_s[None, :] == probs_t.argmax(1)[:, None]                        # (B_t, B_s)
    if by == "target":
        tgt, src = top_same_class(score, same, k)
    else:
        src, tgt = top_same_class(score.T, same.T, k)                             # rows = sources
    return src, tgt


def alignment_weights(a_co, tau: float, kind: str = "soft"):
    """Eq. (9)'s normalisation (choice 8). soft: the pair's A^co rescaled to [0, 1], then a softmax at temperature τ
    over the source tokens j of each column j'; hard: each column one-hot on its largest A^co (the τ → 0 limit).
    (P, K_s, K_t) -> (P, K_s, K_t), every column sums to 1."""
    if kind == "hard":
        return F.one_hot(a_co.argmax(1), a_co.shape[1]).transpose(1, 2).to(a_co.dtype)   # (P, K_t) -> (P, K_s, K_t)
    low, high = a_co.amin(dim=(1, 2), keepdim=True), a_co.amax(dim=(1, 2), keepdim=True)     # (P, 1, 1)
    scaled = (a_co - low) / (high - low).clamp_min(1e-12)                         # the pair's range -> [0, 1]
    return F.softmax(scaled / tau, dim=1)                                         # Eq. (9) column softmax


def target_aligned(weights, f_s_pairs):
    """Eq. (9): f̂_{k,j'} = Σ_j W[k, j, j'] f^s_{i(k), j}. (P, K_s, K_t), (P, K_s, d) -> (P, K_t, d)."""
    return torch.einsum("pjk,pjd->pkd", weights, f_s_pairs)                       # Eq. (9)


class AttentionNet(nn.Module):
    """G_a (Eq. 6): a score per token, softmax over the K tokens of the video. (B, K, d) -> (B, K)."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(in_dim, ATTENTION_HIDDEN), nn.ReLU(), nn.Linear(ATTENTION_HIDDEN, 1))

    def forward(self, f):
        return F.softmax(self.score(f).squeeze(-1), dim=1)                       # Eq. (6)


# == attentive classifier G_y and discriminators (paper Fig. 4) ==

def attentive_logits(segment_logits, attention):
    """Eq. (8)'s inner sum Σ_j a_j G_y(f_j): (B, K, C), (B, K) -> (B, C)."""
    return torch.einsum("bk,bkc->bc", attention, segment_logits)


def uniform(f):
    return torch.full(f.shape[:2], 1.0 / f.shape[1], dtype=f.dtype, device=f.device)     # (B, K)


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff: float):
        ctx.coeff = coeff
        return x.view_as(x)                                                       # identity forward

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None                                            # Eq. (12): −λ_d ∇ into G_f


def grad_reverse(x, coeff: float):
    return GradReverse.apply(x, coeff)


def build_model(args, in_dim: int, num_classes: int) -> nn.ModuleDict:
    """Every trainable piece in one ModuleDict, so one checkpoint holds them all."""
    g_f = FeatureExtractor(in_dim, num_segments=args.num_segments, backbone=args.backbone)
    d = g_f.out_dim
    k = sum(len(t) for t in relation_tuples(args.num_segments)) if args.backbone == "trn" else args.num_segments
    model = nn.ModuleDict({
        "features": g_f,                                                          # G_f
        "dropout": nn.Dropout(DROPOUT),
        "attention": AttentionNet(d),                                             # G_a
        "classifier": nn.Linear(d, num_classes),                                  # G_y, per token
        "video_discriminator": nn.Sequential(nn.Linear(k * d, DISC_HIDDEN), nn.ReLU(), nn.Dropout(DROPOUT),
                                             nn.Linear(DISC_HIDDEN, 1)),          # G^v_d
        "segment_discriminator": nn.Sequential(nn.Linear(d, DISC_HIDDEN), nn.ReLU(),
                                               nn.Linear(DISC_HIDDEN, 1)),        # G^seg_d
    })
    # TA3N's init, N(0, 0.001) weights and zero bias, on every layer but TRN's fusion layers (PyTorch default, as
    # the official TRN): the same start as the TA3N comparison, and G_a starts at uniform attention
    fuse = set(g_f.fuse.modules()) if g_f.scales else set()
    for layer in model.modules():
        if isinstance(layer, nn.Linear) and layer not in fuse:
            nn.init.normal_(layer.weight, 0.0, 0.001)
            nn.init.zeros_(layer.bias)
    return model


# == losses, one per equation ==

def attention_loss(a_hat, a_gt):
    """Eq. (7): regression of G_a's target attention onto the ground truth, K-scaled MSE (choice 6)."""
    k = a_hat.shape[1]
    return F.mse_loss(k * a_hat, k * a_gt)                                        # Eq. (7)


def classification_loss(logits_s, y_s, logits_t=None, threshold: float = 0.9, balanced: bool = False):
    """Eq. (8): source CE + CE of confident target videos on their pseudo-labels, summed over B_t and divided by
    B_t. balanced: at most ⌈B_t/C⌉ targets per predicted class, the most confident (choice 9). Returns (loss,
    fraction of the targets pseudo-labelled)."""
    loss = F.cross_entropy(logits_s, y_s)                                         # Eq. (8), source term
    if logits_t is None:
        return loss, 0.0
    confidence, pseudo = F.softmax(logits_t.detach(), 1).max(1)
    mask = confidence >= threshold
    if balanced:                  # rank of each target among the confident ones of its predicted class, by confidence
        score = torch.where(mask, confidence, torch.zeros_like(confidence))
        same = pseudo[:, None] == pseudo[None, :]                                 # (B_t, B_t)
        ahead = (same & (score[None, :] > score[:, None])).sum(1)                 # confident rivals ranked above
        mask = mask & (ahead < math.ceil(len(logits_t) / logits_t.shape[1]))
    loss_t = (F.cross_entropy(logits_t, pseudo, reduction="none") * mask).sum() / len(logits_t)   # Eq. (8)
    return loss + loss_t, mask.float().mean().item()


def video_domain_loss(disc, video_t, video_other, coeff: float):
    """Eq. (10): G^v_d on the K tokens concatenated in temporal order; target = 1, target-aligned source = 0
    (with --no-aligned the source videos themselves). (B_t, K, d), (P, K, d)."""
    d_t = disc(grad_reverse(video_t.flatten(1), coeff))                           # (B_t, 1); input (B_t, K·d)
    d_o = disc(grad_reverse(video_other.flatten(1), coeff))                       # (P, 1)
    return (F.binary_cross_entropy_with_logits(d_t, torch.ones_like(d_t))         # Eq. (10)
            + F.binary_cross_entropy_with_logits(d_o, torch.zeros_like(d_o)))


def segment_domain_loss(disc, f_s, f_hat, coeff: float):
    """Eq. (11) with the label typo fixed: source segments = 1, target-aligned segments = 0."""
    d_s = disc(grad_reverse(f_s.flatten(0, 1), coeff))                            # (B_s·K, 1)
    d_hat = disc(grad_reverse(f_hat.flatten(0, 1), coeff))                        # (P·K, 1)
    return (F.binary_cross_entropy_with_logits(d_s, torch.ones_like(d_s))         # Eq. (11)
            + F.binary_cross_entropy_with_logits(d_hat, torch.zeros_like(d_hat)))


# == one training step: Eqs. (1)-(13) ==

def tcon_step(model, args, x_s, y_s, x_t, coeff: float, attention_on: bool, pseudo_on: bool = False):
    """The TCoN loss of one (source, target) batch. Returns (loss, stats, (src, tgt) pairs)."""
    f_s, f_t = model["features"](x_s), model["features"](x_t)                     # (B_s, K, d), (B_t, K, d)
    h_s, h_t = model["dropout"](f_s), model["dropout"](f_t)
    seg_s, seg_t = model["classifier"](h_s), model["classifier"](h_t)             # (B, K, C) segment logits
    a_hat = model["attention"](f_t)                                               # Eq. (6): (B_t, K)
    att_t = a_hat if attention_on and args.attentive_classifier else uniform(f_t)
    logits_t = attentive_logits(seg_t, att_t)                                     # Eq. (8), target video logits

    with torch.no_grad():                                                         # attention targets are detached
        src, tgt = pair_by_prediction(F.softmax(seg_s.mean(1), 1), y_s, F.softmax(logits_t, 1),
                                      args.pairs_per_video, args.pairing)
        a_co, a_st, a_ss, a_tt = co_attention(f_s, f_t, src, tgt, args.similarity)
        if args.co_attention:
            a_s, a_t = ground_truth_attention(a_co, src, tgt, a_ss, a_tt)        # Eqs. (4-5)
        else:                                                                     # −CoAttn: self-attention only
            a_s, a_t, a_co = l1_normalise(a_ss), l1_normalise(a_tt), a_st
        weights = alignment_weights(a_co, args.tau, args.alignment)               # Eq. (9) column softmax

    att_s = a_s if args.attentive_classifier else uniform(f_s)
    logits_s = attentive_logits(seg_s, att_s)                                     # Eq. (8), source video logits
    loss_y, pseudo_frac = classification_loss(logits_s, y_s, logits_t if pseudo_on else None,
                                              args.pseudo_threshold, args.pseudo_labels == "balanced")  # Eq. (8)
    paired = torch.bincount(tgt, minlength=len(f_t)) > 0                         # C_a: targets with a partner only
    loss_a = attention_loss(a_hat[paired], a_t[paired])                           # Eq. (7)
    loss = loss_y + (args.lambda_a * loss_a if args.attentive_classifier else 0.0)

    if args.aligned:                                      # discriminators see tokens before dropout (choice 1)
        f_hat = target_aligned(weights, f_s[src])                                # Eq. (9): (P, K, d)
        loss_dv = video_domain_loss(model["video_discriminator"], f_t, f_hat, coeff)            # Eq. (10)
        loss_ds = (segment_domain_loss(model["segment_discriminator"], f_s, f_hat, coeff)      # Eq. (11)
                   if args.segment_discriminator else torch.zeros((), device=x_s.device))
    else:                                                                         # −TAdNet: source vs target
        loss_dv = video_domain_loss(model["video_discriminator"], f_t, f_s, coeff)
        loss_ds = torch.zeros((), device=x_s.device)
    loss = loss + loss_dv + loss_ds                                               # Eqs. (12-13) through the GRL
    stats = {"loss_y": loss_y.item(), "loss_a": loss_a.item(), "loss_dv": loss_dv.item(), "loss_ds": loss_ds.item(),
             "loss_a_uniform": attention_loss(uniform(f_t)[paired], a_t[paired]).item(),   # the C_a G_a must beat
             "pseudo_frac": pseudo_frac, "pairs": float(len(src))}
    return loss, stats, (src, tgt)


def source_only_step(model, x_s, y_s):
    """--source-only: uniform average of the segment logits, source CE (Eq. 8's first term with a = 1/K)."""
    seg_s = model["classifier"](model["dropout"](model["features"](x_s)))        # (B_s, K, C)
    loss = F.cross_entropy(seg_s.mean(1), y_s)
    return loss, {"loss_y": loss.item()}


def predict(model, x, use_attention: bool):
    """Test-time logits: G_a's attention (uniform before the warm-up ends or with −Attn). (B, K, D) -> (B, C)."""
    f = model["features"](x)                                                      # (B, K, d); eval: no dropout
    att = model["attention"](f) if use_attention else uniform(f)
    return attentive_logits(model["classifier"](f), att)


# ---- method: schedules, warm-up and the epoch loop ----

def dann_ramp(p: float) -> float:
    return 2 / (1 + math.exp(-10 * p)) - 1                                        # paper: "as in DANN"


def adversarial_weight(p: float, final: float, ramp: bool) -> float:
    """λ_d at training progress p ∈ [0, 1] (choice 11): final · DANN ramp, or the constant final."""
    return final * (dann_ramp(p) if ramp else 1.0)


def annealed_lr(lr0: float, p: float) -> float:
    return lr0 / (1 + 10 * p) ** 0.75                                             # DANN / TA3N lr annealing


def step_lr(lr0: float, epoch: int, every: int) -> float:
    return lr0 * 0.1 ** ((epoch - 1) // every)                                    # paper: ×0.1 every 30 epochs


class AttentionWarmup:
    """Choice 7: uniform target attention until G_a beats it, EMA(C_a) < ratio · EMA(C_a of uniform attention), or
    after max_fraction of all steps. An explicit object updated by the loop (no hidden counter in a module); its state
    goes into the checkpoint."""

    def __init__(self, ratio: float, max_fraction: float, decay: float = WARMUP_EMA):
        self.ratio, self.max_fraction, self.decay = ratio, max_fraction, decay
        self.ema, self.ema_uniform, self.on, self.switch_step, self.reason = None, None, False, None, None

    def update(self, loss_a: float, loss_a_uniform: float, step: int, total_steps: int) -> bool:
        """Record C_a of G_a and of uniform attention at step `step` (0-based); returns whether G_a is used from
        the next step on."""
        first = self.ema is None
        self.ema = loss_a if first else self.decay * self.ema + (1 - self.decay) * loss_a
        self.ema_uniform = (loss_a_uniform if first else
                            self.decay * self.ema_uniform + (1 - self.decay) * loss_a_uniform)
        if not self.on:
            if self.ema < self.ratio * self.ema_uniform:
                self.on, self.switch_step, self.reason = True, step + 1, "ratio"
            elif step + 1 >= self.max_fraction * total_steps:
                self.on, self.switch_step, self.reason = True, step + 1, "cap"
        return self.on

    def state_dict(self) -> dict:
        return {"ema": self.ema, "ema_uniform": self.ema_uniform, "on": self.on, "switch_step": self.switch_step,
                "reason": self.reason}

    def load_state_dict(self, state: dict):
        self.ema, self.ema_uniform, self.on = state["ema"], state["ema_uniform"], state["on"]
        self.switch_step, self.reason = state["switch_step"], state["reason"]


def train_one_epoch(run, model, optimizer, warmup, args, epoch: int) -> dict:
    d = run.data
    if args.source_only:
        steps = [(idx, None) for idx in torch.randperm(len(d.source_train), generator=run.generator)
                 .split(args.batch_size)]
    else:
        steps = run.pairs()                                  # (source, target) batches, 128 / 128·n_t/n_s
    total_steps = args.epochs * len(steps)
    totals = {}
    for i, (idx_s, idx_t) in enumerate(run.progress(steps)):
        step = (epoch - 1) * len(steps) + i
        p = step / total_steps                               # training progress in [0, 1)
        lr = annealed_lr(args.lr, p) if args.lr_schedule == "anneal" else step_lr(args.lr, epoch, args.lr_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x_s = run.frames(d.source_train, idx_s, mode=args.train_sampling)         # (B_s, K, D)
        y_s = torch.as_tensor(d.source_train.labels[idx_s.numpy()]).to(run.device)
        if args.source_only:
            loss, stats = source_only_step(model, x_s, y_s)
        else:
            x_t = run.frames(d.target_train, idx_t, mode=args.train_sampling)     # (B_t, K, D)
            coeff = adversarial_weight(p, args.lambda_d, args.lambda_ramp)
            pseudo_on = args.pseudo_labels != "off" and warmup.on and p >= args.pseudo_start
            loss, stats, _ = tcon_step(model, args, x_s, y_s, x_t, coeff, warmup.on, pseudo_on)
            stats.update(lambda_d=coeff)                   # target-train labels are never read in training
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not args.source_only:
            warmup.update(stats["loss_a"], stats["loss_a_uniform"], step, total_steps)
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value / len(steps)
    return {**totals, "attention_on": float(warmup.on), "lr": optimizer.param_groups[0]["lr"]}


def resolve(args):
    """Invalid values and combinations, right after parsing (one error line each)."""
    k_min = 3 if args.backbone == "trn" else 2
    if args.num_segments < k_min:
        data.fail(f"--num-segments must be >= {k_min} for --backbone {args.backbone} (self-attention, Eq. 1, "
                  f"needs at least 2 tokens per video; got {args.num_segments})")
    if args.tau <= 0:
        data.fail(f"--tau must be > 0 (got {args.tau})")
    if args.pairs_per_video < 1:
        data.fail(f"--pairs-per-video must be >= 1 (got {args.pairs_per_video})")
    if not 0 < args.pseudo_threshold <= 1:
        data.fail(f"--pseudo-threshold must be in (0, 1] (got {args.pseudo_threshold})")
    if not 0 <= args.pseudo_start <= 1 or args.warmup_ratio <= 0 or args.lambda_d < 0:
        data.fail(f"--pseudo-start must be in [0, 1], --warmup-ratio > 0 and --lambda-d >= 0 (got "
                  f"{args.pseudo_start}, {args.warmup_ratio}, {args.lambda_d})")
    if not 0 <= args.warmup_max_fraction <= 1:
        data.fail(f"--warmup-max-fraction must be in [0, 1] (got {args.warmup_max_fraction})")
    if args.lambda_a < 0 or args.lr <= 0 or args.lr_step < 1:
        data.fail("--lambda-a must be >= 0, --lr > 0 and --lr-step >= 1")
    if args.source_only and not (args.aligned and args.segment_discriminator and args.co_attention
                                 and args.attentive_classifier):
        data.fail("--source-only already turns every adaptation part off; drop the ablation flags")


def main(argv=None) -> dict:
    args = data.parse_args(Args, argv, __doc__)
    resolve(args)

    # ---- run plumbing (identical in every script; see data.py) ----
    run = data.Run(args, "tcon", with_target_train=not args.source_only,
                   variant=args.backbone + ("_source-only" if args.source_only else ""))   # one folder per variant
    model = build_model(args, run.data.source_train.dim, run.data.num_classes).to(run.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)                  # paper: Adam, lr 3e-4
    warmup = AttentionWarmup(args.warmup_ratio, args.warmup_max_fraction)
    state = {"model": model, "optimizer": optimizer, "warmup": warmup}
    use_attention = lambda: warmup.on and args.attentive_classifier and not args.source_only
    if args.eval_only:                                     # --eval-only --checkpoint PATH: test, no training
        run.load_trained(state)                            # the model and the attention switch
        run.end_epoch({}, predict=lambda x: predict(model, x, use_attention()))

    # ---- method: TCoN (train_one_epoch above) ----
    for epoch in run.epochs(state) if not args.eval_only else []:
        model.train()
        stats = train_one_epoch(run, model, optimizer, warmup, args, epoch)
        model.eval()
        run.end_epoch(stats, predict=lambda x: predict(model, x, use_attention()))
    return run.finish(extra={"backbone": args.backbone, "attention_switch_step": warmup.switch_step,
                             "attention_switch_reason": warmup.reason,
                             "parameters": sum(p.numel() for p in model.parameters())})


if __name__ == "__main__":
    main()
