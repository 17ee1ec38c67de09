"""MA2L-TD: Multi-level Attentive Adversarial Learning with Temporal Dilation, on pre-extracted frame features.

Peipeng Chen, Yuan Gao, Andy J. Ma: "Multi-level Attentive Adversarial Learning with Temporal Dilation for
Unsupervised Video Domain Adaptation", WACV 2022 (official code github.com/justchenpp/MA2L-TD, files under
mmodel/ZZZ_model/ unless said otherwise). Defaults: the paper where it is explicit, else the released code;
the other reading is a flag. Measurements and the profile: docs/ma2l_td.md.

    python ma2l_td.py                                    # SYNTHETIC benchmark synth2-a -> synth2-b (53 frames, 5 levels)
    python ma2l_td.py --source ucf --target hmdb --data-root DATA      # UCF-HMDB_full, U→H
    python ma2l_td.py --levels 4                         # 23 frames, 4 levels (the paper's small benchmarks)

K frames are encoded to level 1 (f^1_1..f^1_K). Level m+1 is built from level m by an attentive temporally-dilated
aggregation: slot j of level m+1 pools the q level-m vectors j, j+d_m, .., j+(q-1)d_m with weights from their own
slot discriminators, plus a dilated 1-D convolution. Every slot of every level has its own domain discriminator;
the levels' losses are weighted by level-wise attention. Only the classifier (mean of f^1) is used at test time.

Geometry: d_1 = 1, d_m = (q-1)·d_{m-1} + 1, k_{m+1} = k_m - (q-1)·d_m, k_M = 1, so K = k_1 = 1 + (q-1)·Σ d_m:
q=3, M=5: d = 1, 3, 7, 15 and slots 53 -> 51 -> 45 -> 31 -> 1 (181 slot discriminators; 128 without level 1).

Paper -> code   (shapes: B batch rows (clips × videos, source + target), K = k_1 frames, k_m slots of level m,
                 D input width, C bottleneck width (256), q kernel size, h discriminator hidden width, M levels)
  Eq. (1)   L_s = CE(C(mean_j f^1_j), y)                          class_loss()
  Eq. (2)   L_t = mean_b −Σ_c p log p  (target)                   target_entropy_loss()
  Eq. (3)   L^m = red_j L_b(D^m_j(f^m_j), d)   (B, k_m) per slot  slot_domain_losses(), SlotDiscriminators
  Eq. (5)   F^m = mean_j f^m_j                                    MA2LTD.adapt()
  Eq. (6)   l^m = L_b(𝒟^m(F^m), d)                                level_attention()
  Eq. (7)   ω^m = l^m / Σ_m l^m   (per sample)                    level_attention()
  Eq. (8)   L_adv = Σ_m ω^m L^m   (per sample, then per domain)   adversarial_loss()
  Eq. (9)   min_{D,A} L_adv;  min_{C,mlp} L_s + L_t − L_adv       GRL(λ) at the aggregator input; train_step()
  Eq. (10)  f^{m+1}_j = AttPool(S^m_j) + H^m(S^m_j)               DilatedAggregation
  Eq. (11)  ℓ^m_{j+s·d} = L_b(D^m_{j+s·d}(f^m_{j+s·d}), d)        = the per-slot losses of Eq. (3), detached
  Eq. (12)  w = ℓ / Σ_s ℓ;  f^{m+1}_j = H + Σ_s w_s f^m_{j+s·d}   attpool_weights(), DilatedAggregation
  L_b is BCE with logits, domain label d = 0 source, 1 target (official DomainBCE, loss.py).

Where the official code differs from the paper (default: the paper where it is explicit, else the code)
 1. AttPool (Eqs. 11-12) is absent in the code: the taps get 1/q (network.py, ResidualDialConv; its attentive
    branch is never called) (--attn-pool uniform).
 2. Level attention: the code uses the binary entropy of an untrained linear probe (network.py,
    DiscrminiatorBlock) (--level-attn code). Paper: 𝒟^m = Linear(C, 1) on F^m; l^m its detached BCE against d.
    Both normalised per sample (code).
 3. Level 1 has slot discriminators in the paper, not in the code (model.py:99, commented out)
    (--no-frame-level-discriminators; the level-1 AttPool then has no ℓ and uses 1/q).
 4. Slot loss: Σ_j (paper Eq. 3) vs mean_j (code, loss.py DomainBCE; default, else the 51-slot level dominates).
 5. lr 3e-4 "with decay" (paper) vs 3e-5, never decayed (code: --lr 3e-5 --lr-decay-epoch 0); Adam, weight
    decay 5e-4 (code, model.py:119).
 6. L_t weight 1 in Eq. (2) (paper: --entropy-weight 1) vs 1/C: the code's HLoss averages −p log p over batch ×
    classes (loss.py). Default 1/C: the paper's numbers come from that code; weight 1 collapses on our benchmark.
 7. Batches and epochs, code only (the paper: "batch 32"): 32 source + 32 target videos a step (model.py:44-49);
    a class-balanced source (datas/rgb_feats_dataset.py, BalancedSampler: every class cut to the smallest
    class's count, interleaved class by class; --source-sampler shuffle); an epoch is one pass over the target
    list, last batch partial, the source loader cycled without end (mmodel/basic_model.py:17, inf_iter).
 8. Clips: 5 random TSN clips per video and step, the loss averaged over them (code, model.py:117; the paper
    samples one: --train-clips 1). Test: 5 clips averaged (code: random; here evenly shifted centred clips).
 9. BatchNorm: one BN batch per domain and clip, source clips first (code, model.py:85-86), so each domain is
    normalised by its own statistics (--bn-passes joint: one batch, this file before issue 14). L_adv per
    domain: (mean over source + mean over target) / 2 (code, model.py:113).
10. GRL: no coefficient in the paper; the code puts one GRL in front of the aggregators, λ = 2λ_max/(1 +
    exp(−10p)) − λ_max per epoch, λ_max 0.1 (model.py, coeff) (--lambda-max): the discriminators and the
    aggregators minimise L_adv, only the encoder gets −λ∇L_adv (the code's resolution of Eq. 9).
11. Code, not in the paper: H^m = Conv1d(C, C, q, dilation d_m) → ReLU → Conv1d(C, C, 1), shared by the slots of
    a level; init xavier-normal Linear weights, zero biases, BN weights N(1, 0.02), Conv1d default (network.py).
12. Videos shorter than K = 53 frames: the code's loader duplicates frames over the video (its clips are then
    identical); default spread (the same TSN formulas, clips still differ; --short-videos pad: TA3N's rule).
13. The code reports the best target-test epoch (class-mean); data.py: last, source-selected, oracle (labelled).
Ours, where the paper is silent and the code has nothing to follow: ℓ is detached in Eq. (12) (the weights must not
open a gradient path the encoder could game; the released code has no attentive pooling, only 1/q), ε = 1e-6;
paper-mode 𝒟^m learns from its own BCE on the detached F^m (the code's level probe is never trained); lr ×0.1 from
2/3 of the epochs (the paper says the lr decays but gives no schedule; the code's StepLR at epoch 500 never fires);
test BN statistics recomputed on the target train list (--test-bn target, AdaBN-style; the source list used for
selection gets statistics recomputed on the source train list; --test-bn running: the code's running mix), both
target accuracies recorded every epoch; --no-adaptation keeps the steps and the test statistics of the adapted
model (its running statistics are source statistics); source pass p is shuffled by a generator seeded by
(--seed, p), so --resume continues the stream.

Ablations (paper Table 4) and options
  --slot-discriminators shared        w/o individual discriminators (one per level)
  --aligned-levels frame-video        w/o multi-level alignment: discriminators on level 1 and M only
                                      (the middle levels are still built, with 1/q pooling)
  --level-attn none                   w/o level-wise attention (ω^m = 1/#levels)
  --attn-pool uniform --no-residual-conv   w/o attentive TD aggregation (plain average pooling of the taps)
  --no-adaptation                     source only: L_s, no target data in training
  released code: --attn-pool uniform --level-attn code --no-frame-level-discriminators --lr 3e-5
                 --lr-decay-epoch 0 --test-bn running   (the rest of the code's setup is the default)
  --levels, --kernel-size (q) set K (Table 5); --bottleneck-dim, --disc-hidden shrink the model.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data


@dataclass
class Args(data.RunArgs):
    epochs: int = field(default=30, metadata={"help": "training epochs, each one pass over the target train list "
                                              "(code: 300)"})
    batch_size: int = field(default=32, metadata={"help": "videos per domain and step: 32 source + 32 target "
                                                  "(code; the paper: batch 32)"})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate (paper 3e-4; code 3e-5)"})
    num_segments: int = field(default=0, metadata={"help": "frames per video K; 0 = derived: 1 + (q−1)·Σ d_m "
                                                   "(53 for --levels 5 --kernel-size 3)"})
    levels: int = field(default=5, metadata={"help": "number of levels M (paper: 5 on UCF-HMDB_full, else 4)"})
    kernel_size: int = field(default=3, metadata={"help": "q, taps per aggregation (paper 3)"})
    attn_pool: str = field(default="paper", metadata={"help": "AttPool weights: paper (Eqs. 11-12) or uniform "
                                                      "1/q (official code)", "choices": ["paper", "uniform"]})
    residual_conv: bool = field(default=True, metadata={"help": "the dilated 1-D convolution H^m of Eq. (10)"})
    level_attn: str = field(default="paper", metadata={"help": "level weights ω: paper (Eqs. 5-7), code (entropy "
                                                       "of an untrained probe) or none (equal)",
                                                       "choices": ["paper", "code", "none"]})
    frame_level_discriminators: bool = field(default=True, metadata={"help": "slot discriminators on level 1 "
                                                                     "(paper; the code has none)"})
    slot_discriminators: str = field(default="individual", metadata={"help": "one discriminator per slot (paper) "
                                                                     "or one shared per level (Table 4)",
                                                                     "choices": ["individual", "shared"]})
    aligned_levels: str = field(default="all", metadata={"help": "levels with discriminators: all, or frame-video "
                                                         "(level 1 and M, Table 4)", "choices": ["all", "frame-video"]})
    slot_reduction: str = field(default="mean", metadata={"help": "over the slots of a level: mean (code) or sum "
                                                          "(paper Eq. 3)", "choices": ["mean", "sum"]})
    adaptation: bool = field(default=True, metadata={"help": "--no-adaptation: source only (L_s alone)"})
    bottleneck_dim: int = field(default=256, metadata={"help": "C, width of f (code 256)"})
    disc_hidden: int = field(default=1024, metadata={"help": "hidden width h of each slot discriminator (code 1024)"})
    dropout: float = field(default=0.5, metadata={"help": "encoder dropout (code 0.5)"})
    disc_dropout: float = field(default=0.2, metadata={"help": "slot discriminator dropout (code 0.2)"})
    entropy_weight: float = field(default=-1.0, metadata={"help": "weight of L_t; −1 = 1/C, the code's HLoss (a "
                                                          "mean over batch × classes); 1 = paper Eq. (2)"})
    lambda_max: float = field(default=0.1, metadata={"help": "GRL ramp maximum (code adv_coeff 0.1)"})
    weight_decay: float = field(default=5e-4, metadata={"help": "Adam weight decay (code 5e-4)"})
    lr_decay_epoch: int = field(default=-1, metadata={"help": "lr ×0.1 from this epoch on; −1 = at 2/3 of the "
                                                      "epochs, 0 = never (code)"})
    train_clips: int = field(default=5, metadata={"help": "random clips per video and step, loss averaged over "
                                                  "clips (code 5; paper 1)"})
    test_clips: int = field(default=5, metadata={"help": "evenly shifted clips averaged at test (code 5)"})
    source_sampler: str = field(default="balanced", metadata={"help": "source order: class-balanced (code) or "
                                                              "shuffled", "choices": ["balanced", "shuffle"]})
    bn_passes: str = field(default="separate", metadata={"help": "encoder BatchNorm batches: one per domain and "
                                                         "clip (code) or one joint batch",
                                                         "choices": ["separate", "joint"]})
    test_bn: str = field(default="target", metadata={"help": "BN statistics at test: recomputed on the target "
                                                     "train list, or the running ones (code)",
                                                     "choices": ["target", "running"]})
    short_videos: str = field(default="spread", metadata={"help": "videos shorter than K: spread the repeated frames "
                                                          "over the video (code) or pad with the last frame (TA3N)",
                                                          "choices": ["spread", "pad"]})


def level_geometry(levels: int, q: int):
    """Dilations d_1..d_{M-1} and slots k_1..k_M: d_1 = 1, d_m = (q−1)·d_{m−1} + 1, k_m = k_{m+1} + (q−1)·d_m."""
    dilations = [1]
    for _ in range(levels - 2):
        dilations.append((q - 1) * dilations[-1] + 1)                     # smallest d with no sequential reuse
    slots = [1]
    for d in reversed(dilations):
        slots.insert(0, slots[0] + (q - 1) * d)
    return dilations, slots


def resolve(args: Args) -> Args:
    """Derived values in one visible block: the frame count from the geometry, the lr decay epoch; bad input fails.
    (The entropy weight's 1/C needs the class count: main() sets it once the data is loaded.)"""
    if args.levels < 2:
        data.fail(f"--levels must be >= 2 (frame and video level), got {args.levels}")
    if args.kernel_size < 2:
        data.fail(f"--kernel-size must be >= 2, got {args.kernel_size}")
    k = level_geometry(args.levels, args.kernel_size)[1][0]
    if args.num_segments == 0:
        args.num_segments = k
    elif args.num_segments != k:
        data.fail(f"--num-segments {args.num_segments} does not fit {args.levels} levels with kernel size "
                  f"{args.kernel_size}: they need {k} frames (leave --num-segments at 0)")
    if args.train_clips < 1 or args.test_clips < 1:
        data.fail("--train-clips and --test-clips must be >= 1")
    if not 0 <= args.dropout < 1 or not 0 <= args.disc_dropout < 1:
        data.fail("--dropout and --disc-dropout must be in [0, 1)")
    if args.entropy_weight < 0 and args.entropy_weight != -1:
        data.fail(f"--entropy-weight must be >= 0, or −1 for 1/C, got {args.entropy_weight}")
    if args.lr_decay_epoch < 0:
        args.lr_decay_epoch = max(1, round(2 * args.epochs / 3) + 1)     # ×0.1 after 2/3 of the epochs
    return args


# ---- method: MA2L-TD (Chen, Gao, Ma) ----
# == gradient reversal (one, in front of the aggregators; official GradReverseLayer) ==

class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lambd: float):
        ctx.lambd = lambd
        return x.view_as(x)                                                       # identity forward

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lambd * grad, None                                            # −λ · grad


def grad_reverse(x, lambd: float):
    return GradReverse.apply(x, lambd)


def grl_coefficient(epoch: int, epochs: int, lambda_max: float) -> float:
    """Official ramp, once per epoch: p = (epoch − 1)/epochs, λ = 2λ_max/(1 + e^{−10p}) − λ_max (0 at epoch 1)."""
    p = (epoch - 1) / epochs
    return 2 * lambda_max / (1 + math.exp(-10 * p)) - lambda_max


# == frame encoder (θ_mlp) and classifier C ==

class FrameEncoder(nn.Module):
    """Official FeatureEncoder, per frame: Linear → BN → ReLU → Dropout → Linear → BN → ReLU. (B, K, D) -> (B, K, C).
    One call is one BatchNorm batch (all B·K frames). `stats` ((mean1, var1), (mean2, var2)) replaces the batch or
    running statistics (test with recomputed statistics)."""

    def __init__(self, in_dim: int, dim: int, dropout: float):
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(in_dim, dim), nn.BatchNorm1d(dim)
        self.fc2, self.bn2 = nn.Linear(dim, dim), nn.BatchNorm1d(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, stats=None):
        b, k, _ = x.shape
        h = self.fc1(x.flatten(0, 1))                                             # (B·K, C)
        h = self.dropout(F.relu(normalise(self.bn1, h, stats and stats[0])))
        return F.relu(normalise(self.bn2, self.fc2(h), stats and stats[1])).view(b, k, -1)   # (B, K, C)


def normalise(bn, h, stats=None):
    """The BN layer as usual, or (stats given) with that fixed mean and variance and the layer's affine weights."""
    if stats is None:
        return bn(h)
    return F.batch_norm(h, stats[0], stats[1], bn.weight, bn.bias, training=False, eps=bn.eps)


@torch.no_grad()
def recomputed_bn_statistics(encoder, split, num_segments: int, device, short: str, batch: int = 256):
    """AdaBN-style statistics of a split: mean and variance of each encoder BN input over every frame of the split's
    centred clips, layer by layer (layer 2 sees layer 1 normalised by the new statistics). -> ((m1, v1), (m2, v2))."""
    idx = data.sample_indices(split.lengths, num_segments, "center", short=short)      # (N, K)
    stats = []
    for layer in (1, 2):
        total, total_sq, n = 0.0, 0.0, 0
        for start in range(0, len(split), batch):
            v = torch.arange(start, min(start + batch, len(split)))
            h = encoder.fc1(data.gather_frames(split, v, idx[v], device).flatten(0, 1))   # (B·K, C)
            if layer == 2:
                h = encoder.fc2(F.relu(normalise(encoder.bn1, h, stats[0])))           # dropout: identity at test
            total, total_sq, n = total + h.double().sum(0), total_sq + h.double().square().sum(0), n + len(h)
        mean = total / n
        stats.append((mean.float(), (total_sq / n - mean.square()).clamp_min(0).float()))
    return stats


# == attentive temporally-dilated aggregation (Fig. 4) ==

def dilated_taps(x, q: int, dilation: int):
    """S^m_j for every j: x (B, k, ...) -> (B, k − (q−1)·d, q, ...), tap s of slot j = x[:, j + s·d]."""
    span = (q - 1) * dilation + 1
    taps = x.unfold(1, span, 1)[..., ::dilation]                                  # (B, k', ..., q)
    return taps.movedim(-1, 2)                                                    # (B, k', q, ...)


def attpool_weights(slot_losses, q: int, dilation: int, eps: float = 1e-6):
    """Eq. (12): w_{j,s} = ℓ_{j+s·d} / Σ_s ℓ_{j+s·d}; slot_losses (B, k) detached ℓ of Eq. (11) -> (B, k', q)."""
    ell = dilated_taps(slot_losses, q, dilation) + eps                           # (B, k', q)
    return ell / ell.sum(-1, keepdim=True)                                        # Eq. (12)


class DilatedAggregation(nn.Module):
    """A^m: level m (B, k, C) -> level m+1 (B, k − (q−1)·d, C), Eq. (10)/(12). w (B, k', q) or None for 1/q."""

    def __init__(self, dim: int, q: int, dilation: int, residual_conv: bool):
        super().__init__()
        self.q, self.dilation = q, dilation
        self.conv = nn.Sequential(nn.Conv1d(dim, dim, q, dilation=dilation), nn.ReLU(),
                                  nn.Conv1d(dim, dim, 1)) if residual_conv else None     # H^m, shared over j

    def forward(self, x, w=None):
        taps = dilated_taps(x, self.q, self.dilation)                             # (B, k', q, C)
        pooled = taps.mean(2) if w is None else (w.unsqueeze(-1) * taps).sum(2)  # Eq. (12) AttPool: (B, k', C)
        if self.conv is not None:
            pooled = pooled + self.conv(x.transpose(1, 2)).transpose(1, 2)       # Eq. (10): + H^m(S^m_j)
        return pooled


# == domain discriminators: one per slot, batched (stacked weights, one bmm per layer) ==

class SlotDiscriminators(nn.Module):
    """D^m_j for the k slots of a level: Linear(C, h) → ReLU → Dropout → Linear(h, h) → ReLU → Dropout → Linear(h, 1)
    each (official Discriminator), weights stacked (n, in, out) with n = k (individual) or 1 (shared); init as the
    code: xavier-normal weights, zero biases. forward: x (B, k, C) -> logits (B, k).
    The (n, in, out) layout is what baddbmm multiplies by, so each weight's gradient comes out in the parameter's
    own layout. With nn.Linear's (n, out, in) and w.transpose(1, 2), autograd had to copy every transposed weight
    gradient into the parameter's strides at every step: the largest cost in the profile (docs/ma2l_td.md)."""

    def __init__(self, num_slots: int, dim: int, hidden: int, dropout: float, shared: bool = False):
        super().__init__()
        n = 1 if shared else num_slots
        self.shared, self.dropout = shared, dropout
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for fan_in, fan_out in ((dim, hidden), (hidden, hidden), (hidden, 1)):
            std = math.sqrt(2 / (fan_in + fan_out))                               # xavier normal (code)
            self.weights.append(nn.Parameter(torch.randn(n, fan_in, fan_out) * std))
            self.biases.append(nn.Parameter(torch.zeros(n, 1, fan_out)))

    def forward(self, x):
        b, k, c = x.shape
        h = x.reshape(1, b * k, c) if self.shared else x.transpose(0, 1)          # (1, B·k, C) or (k, B, C)
        for i, (w, bias) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(bias, h, w)                                         # (n, rows, out)
            if i < 2:
                # = dropout(relu(h)): the mask and the 1/(1−p) scale are >= 0, so the two commute; in this order
                # backward keeps one float tensor per layer (relu's output, also the next layer's input) and a
                # bool mask, instead of relu's and dropout's outputs
                h = F.relu(F.dropout(h, self.dropout, self.training), inplace=True)
        return h.reshape(b, k) if self.shared else h.squeeze(-1).transpose(0, 1)  # (B, k)


# == the network (Fig. 2-3) ==

def official_init(model: nn.Module):
    """The code's init_weights (network.py): Linear xavier-normal weights and zero biases, BatchNorm weights
    N(1, 0.02) and zero biases; Conv1d keeps PyTorch's default (the code's rule matches only Conv2d)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class MA2LTD(nn.Module):
    """encode (B, K, D) -> f^1 (B, K, C); classify f^1 -> logits (B, C); adapt(f^1, domain, λ) -> the adaptation
    branch's per-slot losses, level logits and AttPool weights."""

    def __init__(self, in_dim: int, num_classes: int, args: Args):
        super().__init__()
        self.q, self.attn_pool, self.level_attn = args.kernel_size, args.attn_pool, args.level_attn
        self.dilations, self.slots = level_geometry(args.levels, args.kernel_size)
        c = args.bottleneck_dim
        self.encoder = FrameEncoder(in_dim, c, args.dropout)                      # θ_mlp
        self.classifier = nn.Linear(c, num_classes)                               # C
        levels = range(args.levels)
        if args.aligned_levels == "frame-video":
            levels = [0, args.levels - 1]
        self.aligned = [m for m in levels if m > 0 or args.frame_level_discriminators]   # 0-based level indices
        if not args.adaptation:
            self.aligned = []
        else:
            self.aggregators = nn.ModuleList(DilatedAggregation(c, self.q, d, args.residual_conv)
                                             for d in self.dilations)             # A^m, θ_a
            self.slot_discriminators = nn.ModuleDict({
                str(m): SlotDiscriminators(self.slots[m], c, args.disc_hidden, args.disc_dropout,
                                           shared=args.slot_discriminators == "shared") for m in self.aligned})
            if args.level_attn != "none":
                self.level_discriminators = nn.ModuleDict({str(m): nn.Linear(c, 1) for m in self.aligned})   # 𝒟^m
        official_init(self)
        if args.adaptation and args.level_attn == "code":   # official NDiscriminator: a probe that is never trained
            self.level_discriminators.requires_grad_(False)

    def encode(self, x, stats=None):
        return self.encoder(x, stats)                                             # (B, K, C)

    def classify(self, f):
        return self.classifier(f.mean(1))                                         # Eq. (1)-(2) input: (B, classes)

    def adapt(self, f, domain, lambd: float) -> dict:
        """f (B, K, C) level 1, domain (B,) float 0/1. Returns slot_losses {m: (B, k_m)}, level_logits {m: (B,)}
        computed on detached F^m, attpool {m: (B, k_{m+1}, q) or None}."""
        out = {"slot_losses": {}, "level_logits": {}, "attpool": {}}
        x = grad_reverse(f, lambd)                              # Eq. (9): aggregators + D minimise, encoder maximises
        for m in range(len(self.slots)):
            if m in self.aligned:
                logits = self.slot_discriminators[str(m)](x)                      # (B, k_m)
                out["slot_losses"][m] = slot_domain_losses(logits, domain)       # Eq. (3) / (11): (B, k_m)
                if self.level_attn != "none":
                    out["level_logits"][m] = self.level_discriminators[str(m)](x.mean(1).detach()).squeeze(-1)  # Eq. (5)
            if m == len(self.slots) - 1:
                break
            w = None                                                              # 1/q: code, or no ℓ at this level
            if self.attn_pool == "paper" and m in self.aligned:
                w = attpool_weights(out["slot_losses"][m].detach(), self.q, self.dilations[m])   # Eq. (12): (B, k', q)
            out["attpool"][m] = w
            x = self.aggregators[m](x, w)                                         # Eq. (10): (B, k_{m+1}, C)
        return out


# == losses, one per equation ==

def class_loss(logits_s, labels_s):
    return F.cross_entropy(logits_s, labels_s)                                    # Eq. (1)


def target_entropy_loss(logits_t):
    log_p = F.log_softmax(logits_t, -1)
    return -(log_p.exp() * log_p).sum(-1).mean()                                  # Eq. (2): mean_b −Σ_c p log p


def slot_domain_losses(logits, domain):
    """Per-slot BCE L_b(D^m_j(f^m_j), d): logits (B, k), domain (B,) -> (B, k), unreduced (Eqs. 3 and 11)."""
    return F.binary_cross_entropy_with_logits(logits, domain[:, None].expand_as(logits), reduction="none")


def domain_mean(values, domain):
    """(mean over the source rows + mean over the target rows) / 2 of values (B,): each domain weighs one half
    whatever its batch size (official model.py:113)."""
    return (values[domain == 0].mean() + values[domain == 1].mean()) / 2


def level_attention(level_logits: dict, domain, mode: str, levels: list):
    """Eqs. (6)-(7): ω (B, #levels), per sample, detached. paper: l^m = BCE(𝒟^m(F^m), d); code: binary entropy
    of the probe's sigmoid; none: equal weights."""
    if mode == "none":
        return domain.new_full((len(domain), len(levels)), 1 / len(levels))
    z = torch.stack([level_logits[m] for m in levels], 1).detach()               # (B, #levels)
    if mode == "paper":
        ell = F.binary_cross_entropy_with_logits(z, domain[:, None].expand_as(z), reduction="none")   # Eq. (6)
    else:
        p = torch.sigmoid(z)
        ell = F.binary_cross_entropy_with_logits(z, p, reduction="none")        # official: H(p), the entropy
    return ell / ell.sum(1, keepdim=True).clamp_min(1e-12)                        # Eq. (7)


def adversarial_loss(slot_losses: dict, omega, levels: list, domain, reduction: str = "mean"):
    """Eq. (8) per sample: Σ_m ω^m_b · L^m_b, L^m_b = mean_j (code) or Σ_j (paper Eq. 3) of ℓ^m_{b,j}; then the
    code's per-domain average (source mean + target mean) / 2."""
    per_level = torch.stack([getattr(slot_losses[m], reduction)(1) for m in levels], 1)   # Eq. (3): (B, #levels)
    return domain_mean((omega * per_level).sum(1), domain)                        # Eq. (8)


def level_discriminator_loss(level_logits: dict, domain):
    """Trains 𝒟^m (paper mode) on the detached F^m: Σ_m BCE(𝒟^m(F^m), d), weighted per domain like L_adv."""
    return sum(domain_mean(F.binary_cross_entropy_with_logits(z, domain, reduction="none"), domain)
               for z in level_logits.values())


# == batches and epochs as the official code ==

def balanced_order(labels, generator):
    """One pass of the code's class-balanced sampler (datas/rgb_feats_dataset.py, BalancedSampler): each class's
    videos shuffled and cut to the smallest class's count m, then interleaved class by class: C·m indices."""
    labels = torch.as_tensor(np.asarray(labels))
    groups = [torch.nonzero(labels == c).squeeze(1) for c in labels.unique()]
    m = min(len(g) for g in groups)
    picked = [g[torch.randperm(len(g), generator=generator)[:m]] for g in groups]
    return torch.stack(picked, 1).flatten()                                       # (m, C) read row by row


def source_stream(labels, batch: int, first: int, count: int, seed: int, sampler: str) -> list:
    """Batches first .. first+count−1 of the endless source stream: pass after pass over the source list (ordered
    by balanced_order, or shuffled), each cut into batches with the last one partial (the code cycles a DataLoader
    with drop_last=False, mmodel/basic_model.py:17). Pass p is drawn by its own generator seeded by (seed, p), so
    any epoch's batches can be rebuilt and --resume continues the stream."""
    def one_pass(p):
        g = torch.Generator().manual_seed(seed * 1_000_003 + p)
        return balanced_order(labels, g) if sampler == "balanced" else torch.randperm(len(labels), generator=g)
    per_pass = math.ceil(len(one_pass(0)) / batch)
    batches, order = [], {}
    for i in range(first, first + count):
        p, j = divmod(i, per_pass)
        if p not in order:
            order = {p: one_pass(p)}
        batches.append(order[p][j * batch:(j + 1) * batch])
    return batches


# == training ==

def train_step(model, optimizer, args, x_s, y_s, x_t, lambd: float) -> dict:
    """One Adam step. x_s (c, B_s, K, D) and x_t (c, B_t, K, D) or None (source only): c clips of every video,
    clip-major; y_s (c·B_s,). Each loss is a mean over all rows of its domain, which is the code's average over
    clips of per-clip means (every clip holds the same videos)."""
    domains = [x_s] if x_t is None else [x_s, x_t]
    if args.bn_passes == "joint":
        f = model.encode(torch.cat([x.flatten(0, 1) for x in domains]))           # one BN batch: (c·(B_s+B_t), K, C)
    else:
        # official model.py:85-86: every clip of each domain is its own BN batch, the source clips first
        f = torch.cat([model.encode(clip) for x in domains for clip in x])        # (c·B_s + c·B_t, K, C)
    n_s = len(y_s)
    logits = model.classify(f)
    losses = {"loss_s": class_loss(logits[:n_s], y_s)}                            # Eq. (1)
    total = losses["loss_s"]
    if x_t is not None:
        losses["loss_t"] = target_entropy_loss(logits[n_s:])                      # Eq. (2)
        domain = torch.cat([f.new_zeros(n_s), f.new_ones(len(f) - n_s)])          # d: source 0, target 1
        out = model.adapt(f, domain, lambd)
        omega = level_attention(out["level_logits"], domain, args.level_attn, model.aligned)   # (B, #levels)
        losses["loss_adv"] = adversarial_loss(out["slot_losses"], omega, model.aligned, domain, args.slot_reduction)
        # Eq. (9): every term added; the GRL gives the encoder −λ∇L_adv
        # L_t weight: --entropy-weight, or −1 = 1/C (the code's HLoss averages over batch × classes)
        weight = args.entropy_weight if args.entropy_weight >= 0 else 1 / logits.shape[1]
        total = total + weight * losses["loss_t"] + losses["loss_adv"]
        if args.level_attn == "paper":
            losses["loss_level"] = level_discriminator_loss(out["level_logits"], domain)
            total = total + losses["loss_level"]
        for i, m in enumerate(model.aligned):
            losses[f"omega_{m + 1}"] = omega[:, i].mean()                         # level weights, 1-based level
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    losses["loss"] = total
    return {k: v.detach() for k, v in losses.items()}


def train_one_epoch(model, optimizer, run, args, epoch: int) -> dict:
    d, c, b, k = run.data, args.train_clips, args.batch_size, args.num_segments
    lambd = grl_coefficient(epoch, args.epochs, args.lambda_max)
    lr = args.lr * (0.1 if args.lr_decay_epoch and epoch >= args.lr_decay_epoch else 1.0)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    # one epoch = one pass over the shuffled target list, last batch partial (official target loader); the
    # source stream goes on from where the previous epoch left it
    target = torch.randperm(len(d.target_train), generator=run.generator).split(b)
    source = source_stream(d.source_train.labels, b, (epoch - 1) * len(target), len(target), args.seed,
                           args.source_sampler)
    sums, count, started, cpu_started = {}, 0, time.perf_counter(), time.process_time()
    for idx_s, idx_t in run.progress(list(zip(source, target))):
        # c random TSN clips per video, clip-major: x[i] holds clip i of every video of the batch
        x_s = run.frames(d.source_train, idx_s.repeat(c), mode="random").view(c, len(idx_s), k, -1)  # (c, B_s, K, D)
        y_s = torch.as_tensor(d.source_train.labels[idx_s]).repeat(c).to(run.device)           # (c·B_s,)
        x_t = None
        if args.adaptation:
            x_t = run.frames(d.target_train, idx_t.repeat(c), mode="random").view(c, len(idx_t), k, -1)
        stats = train_step(model, optimizer, args, x_s, y_s, x_t, lambd)
        for key, v in stats.items():
            sums[key] = sums.get(key, 0) + v
        count += 1
    return {**{key: float(v) / count for key, v in sums.items()}, "lambda": lambd, "lr": lr,
            "train_time_s": time.perf_counter() - started, "train_cpu_s": time.process_time() - cpu_started}


def predictors_at_test(model, run, args) -> tuple:
    """The target list tested with both BN statistics (recomputed on the target train list; running), and the
    predict functions of --test-bn for data.Run.end_epoch: (top-1 dict, predict on target, predict on source)."""
    d, k, short = run.data, args.num_segments, run.short_videos
    target_bn = recomputed_bn_statistics(model.encoder, d.target_train, k, run.device, short)
    predict = {"target": lambda x: model.classify(model.encode(x, target_bn)),
               "running": lambda x: model.classify(model.encode(x))}
    top1 = {f"target_top1_{name}_bn": data.accuracy_report(
        data.predict_split(fn, d.target_val, k, run.device, args.test_clips, short=short),
        d.target_val.labels, d.num_classes)["top1"] for name, fn in predict.items()}
    predict_source = predict["running"]
    if args.test_bn == "target":            # model selection on the source list: the source's own statistics
        source_bn = recomputed_bn_statistics(model.encoder, d.source_train, k, run.device, short)
        predict_source = lambda x: model.classify(model.encode(x, source_bn))
    return top1, predict[args.test_bn], predict_source


def build(args, in_dim: int, num_classes: int, device="cpu"):
    model = MA2LTD(in_dim, num_classes, args).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused Adam: one pass over each parameter, no full-size temporaries (the default foreach Adam materialises
    # the weight-decayed gradients and sqrt(v) of all 238 M parameters at every step)
    optimizer = torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay, fused=True)
    return model, optimizer


def geometry_report(model) -> dict:
    slot_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("slot_discriminators"))
    return {"dilations": model.dilations, "slots": model.slots, "aligned_levels": [m + 1 for m in model.aligned],
            "slot_discriminators": sum(model.slots[m] for m in model.aligned),
            "slot_discriminator_params": slot_params, "params": sum(p.numel() for p in model.parameters())}


def bn_report(history: list) -> dict:
    """Target top-1 with either BN statistics at the last and the source-selected epoch (data.py's rules)."""
    chosen, rows = data.select_epochs(history), {r["epoch"]: r for r in history}
    return {key: {"epoch": chosen[key]["epoch"], **{name: rows[chosen[key]["epoch"]][f"target_top1_{name}_bn"]
                                                   for name in ("target", "running")}}
            for key in ("last", "source_selected")}


def main(argv=None) -> dict:
    args = resolve(data.parse_args(Args, argv, __doc__))
    # ---- run plumbing (identical in every script; see data.py) ----
    run = data.Run(args, script="ma2l_td", with_target_train=True,    # source only: target train for test BN only
                   variant="" if args.adaptation else "source-only")
    d = run.data
    model, optimizer = build(args, d.source_train.dim, d.num_classes, run.device)
    if args.eval_only:                                   # --eval-only --checkpoint PATH: test, no training
        run.load_trained({"model": model})
        top1, predict, predict_source = predictors_at_test(model, run, args)
        run.end_epoch(top1, predict=predict, num_clips=args.test_clips, predict_source=predict_source)
    for epoch in run.epochs(state={"model": model, "optimizer": optimizer}) if not args.eval_only else []:
        stats = train_one_epoch(model, optimizer, run, args, epoch)
        model.eval()
        top1, predict, predict_source = predictors_at_test(model, run, args)
        run.end_epoch({**stats, **top1}, predict=predict, num_clips=args.test_clips, predict_source=predict_source)
    by_bn = bn_report(run.history)
    metrics = run.finish(extra={"geometry": geometry_report(model), "target_top1_by_test_bn": by_bn})
    running = "source statistics" if not args.adaptation else "running mix"
    print(f"ma2l_td | target top-1 by test BN statistics (the summary uses --test-bn {args.test_bn}): last epoch "
          f"recomputed target {100 * by_bn['last']['target']:.2f} | {running} {100 * by_bn['last']['running']:.2f}; "
          f"source-selected (ep {by_bn['source_selected']['epoch']}) {100 * by_bn['source_selected']['target']:.2f}"
          f" | {100 * by_bn['source_selected']['running']:.2f}")
    return metrics


if __name__ == "__main__":
    main()
