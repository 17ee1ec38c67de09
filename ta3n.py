"""TA3N: Temporal Attentive Adversarial Adaptation Network, on pre-extracted frame features.

Min-Hung Chen, Zsolt Kira, Ghassan AlRegib, Jaekwon Yoo, Ruxin Chen, Jian Zheng: "Temporal Attentive Alignment
for Large-Scale Video Domain Adaptation", ICCV 2019, https://arxiv.org/abs/1907.12743. Defaults follow the
official code (github.com/cmhungsteve/TA3N, commit 2c65b5d) and its UCF→HMDB_full script (script_train_val.sh);
file:line citations are in that repository. Notes, flags and measured numbers: docs/ta3n.md.

    python ta3n.py                                            # SYNTHETIC benchmark synth2-a -> synth2-b
    python ta3n.py --source ucf --target hmdb --data-root DATA          # the official setting (U→H)
    python ta3n.py --source hmdb --target ucf --data-root DATA          # H→U preset: β_relation 1, γ 0.3
    python ta3n.py --variant ta2n                             # all discriminators, no attention (Table 6-8)

Each step feeds a source and a target batch through one shared network: frame features (spatial module G_sf),
n-frame relation features R_n (TRN-M), domain attention from per-scale relation discriminators, the video
feature h, the classifier G_y; discriminators behind gradient reversal align frames, relations and videos.

Paper -> code   (shapes: B batch = B_s + B_t, K frames, D input width, S = K−1 scales, R_n tuples of n frames,
                 H = 256 relation width, d video width (256 relation, 512 pooling), C classes)
  Eq. (1)   L_y  = CE(G_y(h_s), y_s)                                     class_loss()
  Eq. (2)   L_sd = 1/K Σ_j CE(G_sd(GRL(f_j)), domain)   frame level      domain_loss(), rows (B·K, 2)
  Eq. (3)   L_td = CE(G_td(GRL(h)), domain)             video level      domain_loss(), rows (B, 2)
  Eq. (5)   R_n  = Σ_m ReLU(W_n [f_t1; …; f_tn] + b_n)  TRN-M            kernels.relation_attention
  Eq. (6)   L_rd = 1/(K−1) Σ_n CE(G_rd^n(GRL(R_n)), domain)              domain_loss(), rows (B·S, 2)
  Eq. (7)   w_n  = 1 − H(softmax(d̂_n)),  H(p) = −Σ_c p_c ln p_c           domain_attention() / kernels
  Eq. (8)   h    = Σ_n (1 + w_n) · R_n                                    kernels.relation_attention
  Eq. (9)   L_ae = (1 + H(d̂_video)) · H(ŷ), mean over S∪T                 attentive_entropy_loss()
  Eq. (10)  L = L_y + γ L_ae − (λ_s L_sd + λ_r L_rd + λ_t L_td)           train_step()
  GRL       forward x, backward −λ · grad                                 grad_reverse()
  λ_s, λ_r, λ_t are the official script's β_frame = 0.5, β_relation = 0.75, β_video = 0.75 (--beta-*); a negative
  β is the DANN ramp 2/(1 + exp(−10p)) − 1 with p = epoch/epochs, held for the epoch (main.py:350-352).

Where the official code differs from the paper, or the paper is silent; the default follows the code
 1. λ is only the GRL scale: every domain CE is added with weight 1 (so the discriminators train at full rate
    whatever λ is). --lambda-as loss-weight gives Eq. (10) literally: losses weighted by λ, GRL scale 1. The
    feature extractor sees the same gradient either way.
 2. λ values: the script uses frame 0.5, relation 0.75, video 0.75; the paper's §7.3.2 states λ_s 0.75, λ_r 0.5,
    λ_t 0.75 (pass --beta-frame 0.75 --beta-relation 0.5). γ: 0.003 in the U→H script, 0.3 for H→U; the paper
    states 0.3.
 3. Neither w_n (Eq. 7-8) nor the weight (1 + H(d̂)) of Eq. (9) is detached: L_y and L_ae also train the relation
    and video discriminators (normal sign) and reach the features through their GRLs. --detach-attention
    detaches both (the paper's equations leave it open).
 4. H uses the natural log, unnormalised: w ∈ [1 − ln 2, 1] = [0.307, 1], (1 + w) ∈ [1.307, 2].
 5. TRN-M uses at most 3 fixed, evenly spaced tuples per scale (the largest scale 1), summed within a scale; no
    1-frame scale (--relations all: every tuple). h sums over scales; Eq. (6)'s 1/(K−1) is one CE over all
    B·S rows. The video discriminator sees the same dropped-out h as the classifier.
 6. The 5 centred frames are read in training too, every epoch (--train-sampling random: TSN offsets).
 7. lr0/(1+10p)^0.75 is set after each step with p = (i + epoch·L)/(epochs·L), epoch counted from 1: p runs from
    1/epochs to ≈1.03 and the first step uses lr0 (--lr-schedule dann: p from 0 to 1, set before each step).
    SGD is Nesterov (hard-coded in main.py; the paper only says momentum 0.9): --no-nesterov.
 8. Init: shared fc, classifier, frame and video discriminators N(0, 0.001), bias 0; TRN layers and relation
    discriminators PyTorch default. The official code also builds unused layers that consume RNG: we do not.
 9. The official code reports the best target-test epoch; data.py reports last, source-selected and (labelled)
    oracle. The official zero-padding of the last batch is skipped (no BatchNorm: it changes nothing).
10. L_ae is added only when attention is on (main.py:559): with --attention none the --variant preset gives
    --entropy-loss none; an explicit --entropy-loss attentive still adds it (the paper does not tie the two).
11. At evaluation only the discriminators that domain attention reads are run (the official code runs all).

Ablations (paper Tables 6-8, 10-11) and options
  --variant ta3n|ta2n|source-only  presets of the three flags below (explicit flags win):
        ta3n = all discriminators, domain attention, attentive entropy; ta2n = all discriminators, no attention,
        no entropy loss; source-only = no discriminators, no attention, no entropy loss (target data unused)
  --discriminators frame,relation,video (any subset, or none)     --attention domain|general|none
  --entropy-loss attentive|none      --temporal relation|pooling (TemRelation | TemPooling)
        TemPooling has no relations: domain attention then weights each frame by 1 + w from the frame
        discriminator before the mean (official avgpool path); general = Linear-Tanh-Linear, softmax over
        scales (or frames), then (1 + a)·r as the official code.
  --relations official|all   --kernel auto|triton|torch (auto: Triton on CUDA, PyTorch reference on CPU)
  --lambda-as grl|loss-weight   --detach-attention   --lr-schedule official|dann   --train-sampling center|random
  --beta-frame/--beta-relation/--beta-video (< 0: DANN ramp)   --mmd official|median
  --label verb|noun|verb+noun (EPIC-100; data.py): verb+noun gives G_y two heads, L_y = 0.5·(CE_verb + CE_noun) and
        H(ŷ) of Eq. (9) the mean of the heads' entropies (official EPIC-100 TA3N code, main.py train())
  --save-features   <out>/features.npz: final h of the source val and target val splits (benchmark/plot.py)
Analysis (Table 9) in metrics.json "analysis": MMD² and the video-discriminator domain loss of the final video
features h, source val vs target val. --mmd official (default): the official mmd_rbf kernel (5 Gaussians, bandwidths
×2 around the mean squared distance); --mmd median: one Gaussian, median heuristic. The paper names neither.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from kernels import relation_attention, relation_tuples, self_check

DISCRIMINATORS = ("frame", "relation", "video")
# --variant -> (discriminators, attention, entropy_loss)
VARIANTS = {"ta3n": (list(DISCRIMINATORS), "domain", "attentive"),
            "ta2n": (list(DISCRIMINATORS), "none", "none"),
            "source-only": ([], "none", "none")}
# per (source, target) values of the official script's H→U comments (script_train_val.sh:80-82, 89-90); flags win
PAIR_PRESETS = {("hmdb", "ucf"): {"beta_relation": 1.0, "gamma": 0.3}}
DEFAULT_PRESET = {"beta_relation": 0.75, "gamma": 0.003}
FRAME_DIM, RELATION_DIM = 512, 256            # script: fc_dim 512; TRN-M bottleneck 256


@dataclass
class Args(data.RunArgs):
    variant: str = field(default="ta3n", metadata={"help": "preset of --discriminators/--attention/--entropy-loss "
                                                   "(ta3n, ta2n, source-only); explicit flags win",
                                                   "choices": list(VARIANTS)})
    temporal: str = field(default="relation", metadata={"help": "temporal module: relation (TemRelation, TRN-M) "
                                                        "or pooling (TemPooling)", "choices": ["relation", "pooling"]})
    discriminators: list[str] = field(default=None, metadata={"help": "adversarial discriminators: any of frame,"
                                                              "relation,video (comma or space separated) or none; "
                                                              "default from --variant"})
    attention: str = field(default=None, metadata={"help": "domain (Eq. 7-8), general (FC-Tanh-FC-softmax) or none;"
                                                   " default from --variant", "choices": ["domain", "general", "none"]})
    entropy_loss: str = field(default=None, metadata={"help": "attentive (Eq. 9) or none; default from --variant",
                                                      "choices": ["attentive", "none"]})
    relations: str = field(default="official", metadata={"help": "TRN-M tuples: official (≤ 3 per scale) or all",
                                                         "choices": ["official", "all"]})
    kernel: str = field(default="auto", metadata={"help": "relation + attention op: auto (triton on CUDA, torch "
                                                  "otherwise), triton (on CPU only under TRITON_INTERPRET=1), torch",
                                                  "choices": ["auto", "triton", "torch"]})
    beta_frame: float = field(default=0.5, metadata={"help": "λ_s of the frame discriminator (GRL scale); < 0: the "
                                                     "DANN ramp 2/(1+exp(−10p))−1, set once per epoch (official)"})
    beta_relation: float = field(default=None, metadata={"help": "λ_r of the relation discriminators; default 0.75, "
                                                         "1.0 for hmdb->ucf; < 0: the DANN ramp"})
    beta_video: float = field(default=0.75, metadata={"help": "λ_t of the video discriminator (GRL scale); < 0: the "
                                                      "DANN ramp"})
    gamma: float = field(default=None, metadata={"help": "weight γ of L_ae; default 0.003, 0.3 for hmdb->ucf"})
    lambda_as: str = field(default="grl", metadata={"help": "grl: λ scales the reversed gradient, domain losses "
                                                    "unweighted (official); loss-weight: Eq. (10) literally",
                                                    "choices": ["grl", "loss-weight"]})
    detach_attention: bool = field(default=False, metadata={"help": "detach w_n (Eq. 8) and 1 + H(d̂) (Eq. 9) "
                                                            "(official: not detached)"})
    dropout: float = field(default=0.5, metadata={"help": "dropout on frame features and on h"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    nesterov: bool = field(default=True, metadata={"help": "Nesterov momentum (official main.py)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "SGD weight decay"})
    clip_grad: float = field(default=20.0, metadata={"help": "gradient-norm clip (official --gd 20)"})
    lr_schedule: str = field(default="official", metadata={"help": "official: lr0/(1+10p)^0.75 after each step, "
                                                           "epoch from 1; dann: p from 0 to 1, before each step",
                                                           "choices": ["official", "dann"]})
    train_sampling: str = field(default="center", metadata={"help": "training frames: center (official) or random "
                                                            "(TSN)", "choices": ["center", "random"]})
    mmd: str = field(default="official", metadata={"help": "Table 9 MMD² kernel: official (mmd_rbf: 5 Gaussians, "
                                                   "bandwidths ×2 around the mean squared distance) or median (one "
                                                   "Gaussian, median heuristic)", "choices": ["official", "median"]})


def resolve(args: Args) -> Args:
    """Derived values, in one visible block: presets, flag combinations, the kernel backend. Fails on bad input."""
    preset = VARIANTS[args.variant]
    if args.discriminators is None:
        args.discriminators = list(preset[0])
    names = [n.strip() for item in args.discriminators for n in item.split(",") if n.strip()]
    if names == ["none"]:
        names = []
    for n in names:
        if n not in DISCRIMINATORS:
            data.fail(f"unknown discriminator {n!r} in --discriminators (choose from frame, relation, video or none)")
    args.discriminators = [n for n in DISCRIMINATORS if n in names]            # canonical order, no repeats
    args.attention = preset[1] if args.attention is None else args.attention
    if args.entropy_loss is None:   # official main.py:559 adds L_ae only when attention is on; explicit flag wins
        args.entropy_loss = preset[2] if args.attention != "none" else "none"
    for key, value in PAIR_PRESETS.get((args.source, args.target), DEFAULT_PRESET).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    relation = args.temporal == "relation"
    if relation and args.num_segments < 2:
        data.fail("--temporal relation needs --num-segments >= 2")
    if "relation" in args.discriminators and not relation:
        data.fail("the relation discriminator needs --temporal relation (TemPooling has no relation features)")
    if args.attention == "domain" and relation and "relation" not in args.discriminators:
        data.fail("--attention domain on relations needs the relation discriminator (add relation to --discriminators)")
    if args.attention == "domain" and not relation and "frame" not in args.discriminators:
        data.fail("--attention domain with --temporal pooling attends frames with the frame discriminator: "
                  "add frame to --discriminators")
    if args.entropy_loss == "attentive" and "video" not in args.discriminators:
        data.fail("--entropy-loss attentive needs the video discriminator (its d̂ weights Eq. 9)")
    if not 0 <= args.dropout < 1:
        data.fail(f"--dropout must be in [0, 1), got {args.dropout}")

    # the kernel: resolved here so that CPU training never runs Triton's interpreter by accident
    interpret = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    cuda = data.pick_device(args.device).type == "cuda"
    if args.kernel == "auto":
        args.kernel = "triton" if cuda else "torch"
        if cuda:   # the compiled kernels are checked against the reference once before they train anything
            ok, message = self_check(data.pick_device(args.device))
            if not ok:
                print(f"warning: Triton self-check failed ({message}); using the PyTorch reference", file=sys.stderr)
                args.kernel = "torch"
    elif args.kernel == "triton" and not cuda and not interpret:
        data.fail("--kernel triton needs a CUDA device (or TRITON_INTERPRET=1 for the slow CPU interpreter)")
    return args


# ---- method: TA3N (Chen et al.) ----
# == gradient reversal (the Ĝ of every adversarial discriminator) ==

class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lambd: float):
        ctx.lambd = lambd
        return x.view_as(x)                                                       # identity forward

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lambd * grad, None                                            # −λ · grad; λ gets none


def grad_reverse(x, lambd: float):
    return GradReverse.apply(x, lambd)


def init_official(layer: nn.Linear) -> nn.Linear:
    """The official init of the shared fc, classifier and frame/video discriminators: N(0, 0.001), bias 0."""
    nn.init.normal_(layer.weight, 0.0, 0.001)
    nn.init.zeros_(layer.bias)
    return layer


def discriminator(width: int, *, official_init: bool) -> nn.Sequential:
    """G_d: Linear(width, width) → ReLU → Linear(width, 2); the GRL is applied by the caller."""
    layers = [nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2)]
    if official_init:
        init_official(layers[0])
        init_official(layers[2])
    return nn.Sequential(*layers)


def entropy(logits):
    """H(softmax(logits)) over the last dim, natural log (no epsilon: log-softmax is exact at p = 0)."""
    log_p = F.log_softmax(logits, -1)
    return -(log_p.exp() * log_p).sum(-1)


def domain_attention(domain_logits):
    return 1 - entropy(domain_logits)                                             # Eq. (7): w = 1 − H(d̂)


# == the network (paper Fig. 4: G_sf → TRN-M with G_rd^n and attention → G_y, with G_sd and G_td) ==

class TA3N(nn.Module):
    """forward(x (B, K, D), grl {frame, relation, video: λ}) -> dict of logits (B, C), feature h (B, d) before
    dropout, and the domain logits frame (B, K, 2), relation (B, S, 2), video (B, 2) and attention w (B, S or K),
    each None when its part is off. `domains=False` (evaluation) skips the heads attention does not need."""

    def __init__(self, in_dim: int, num_classes: int, *, num_segments: int, temporal: str, discriminators: list,
                 attention: str, relations: str = "official", backend: str = "torch", detach_attention=False,
                 dropout: float = 0.5, frame_dim: int = FRAME_DIM, relation_dim: int = RELATION_DIM,
                 heads: tuple = ()):
        super().__init__()
        self.temporal, self.attention, self.backend = temporal, attention, backend
        self.heads = tuple(heads)    # EPIC-100 verb+noun: sizes of the classifier's heads (one Linear, side by side)
        self.detach_attention = detach_attention
        self.spatial = init_official(nn.Linear(in_dim, frame_dim))                # G_sf (+ ReLU, dropout)
        self.dropout = nn.Dropout(dropout)
        self.frame_discriminator = discriminator(frame_dim, official_init=True) if "frame" in discriminators else None
        video_dim = frame_dim
        if temporal == "relation":
            tuples = relation_tuples(num_segments, max_per_scale=3 if relations == "official" else None)
            self.scales = [t.shape[1] for t in tuples]                            # K, K−1, ..., 2
            for t in tuples:                        # buffers follow .to(device); not saved in checkpoints
                self.register_buffer(f"tuples_{t.shape[1]}", t, persistent=False)
            self.relation_fuse = nn.ModuleList(nn.Linear(n * frame_dim, relation_dim) for n in self.scales)  # g_φ(n)
            self.relation_discriminators = nn.ModuleList(
                discriminator(relation_dim, official_init=False) for _ in self.scales) \
                if "relation" in discriminators else None                        # G_rd^n, default init
            video_dim = relation_dim
        if attention == "general":   # official models.py: Linear(d, d) → Tanh → Linear(d, 1), default init
            self.general_attention = nn.Sequential(nn.Linear(video_dim, video_dim), nn.Tanh(), nn.Linear(video_dim, 1))
        self.classifier = init_official(nn.Linear(video_dim, num_classes))       # G_y (two heads: side by side)
        self.video_discriminator = discriminator(video_dim, official_init=True) if "video" in discriminators else None

    def tuples(self):
        return [getattr(self, f"tuples_{n}") for n in self.scales]

    def attend(self, parts, w):
        """Residual attention (1 + w)·part over the scale/frame axis; parts (B, S, d), w (B, S)."""
        if self.attention == "general":
            w = F.softmax(self.general_attention(parts).squeeze(-1), dim=1)       # (B, S), sums to 1 over S
        elif self.detach_attention:
            w = w.detach()
        return (1 + w).unsqueeze(-1) * parts, w

    def forward(self, x, grl: dict, domains: bool = True):
        out = dict.fromkeys(["frame", "relation", "video", "attention"])
        f = self.dropout(F.relu(self.spatial(x)))                                 # (B, K, 512)
        relation = self.temporal == "relation"
        # domains=False (evaluation): a discriminator runs only if domain attention reads it, the frame one for
        # pooling, the relation ones for relations; the official code runs them all and discards the unused outputs
        attends = self.attention == "domain"
        if self.frame_discriminator is not None and (domains or (attends and not relation)):
            out["frame"] = self.frame_discriminator(grad_reverse(f, grl["frame"]))   # (B, K, 2)
        if relation:
            disc = None if self.relation_discriminators is None or not (domains or attends) else [
                (d[0].weight, d[0].bias, d[2].weight, d[2].bias) for d in self.relation_discriminators]
            fused_attention = self.attention == "domain" and not self.detach_attention
            # Eq. (5)-(8) in one op: R (B, S, H), d̂ (B, S, 2), w (B, S); h (B, H) with (1 + w) when fused
            h, w, relations, out["relation"] = relation_attention(
                f, self.tuples(), [(m.weight, m.bias) for m in self.relation_fuse], disc, grl["relation"],
                use_attention=fused_attention, backend=self.backend)
            out["attention"] = w
            if self.attention != "none" and not fused_attention:
                attended, out["attention"] = self.attend(relations, w)
                h = attended.sum(1)                                               # Eq. (8): (B, H)
        else:
            parts = f
            if self.attention != "none":       # official avgpool: each frame weighted by 1 + w_frame, then mean
                w = domain_attention(out["frame"]) if self.attention == "domain" else None   # Eq. (7): (B, K)
                parts, out["attention"] = self.attend(f, w)
            h = parts.mean(1)                                                     # TemPooling: (B, 512)
        out["feature"] = h
        h = self.dropout(h)
        out["logits"] = self.classifier(h)                                        # G_y: (B, C)
        if self.video_discriminator is not None and domains:
            out["video"] = self.video_discriminator(grad_reverse(h, grl["video"]))   # G_td on the dropped-out h
        return out


# == losses, one per equation ==

def class_loss(logits_s, labels_s, heads: tuple = ()):
    """Eq. (1); with two heads (EPIC-100 --label verb+noun) 0.5·(CE_verb + CE_noun), the official EPIC code's."""
    return data.label_loss(logits_s, labels_s, heads)                            # Eq. (1)


def domain_loss(d_s, d_t):
    """Eqs. (2), (3), (6): one 2-way CE over every row of both domains, source = 0, target = 1. For frames
    (B, K, 2) and relations (B, S, 2) the mean over rows is the paper's 1/K and 1/(K−1) average."""
    d_s, d_t = d_s.reshape(-1, 2), d_t.reshape(-1, 2)                             # (B_s·rows, 2), (B_t·rows, 2)
    labels = torch.cat([d_s.new_zeros(len(d_s)), d_t.new_ones(len(d_t))]).long()
    return F.cross_entropy(torch.cat([d_s, d_t]), labels)


def attentive_entropy_loss(logits, domain_logits, detach: bool = False, heads: tuple = ()):
    """Eq. (9), mean over the S∪T batch: (1 + H(d̂)) · H(ŷ). The official weight is not detached. With two heads
    H(ŷ) is the mean of the heads' entropies under the same weight (official EPIC code: 0.5·(L_ae,verb + L_ae,noun))."""
    weight = 1 + entropy(domain_logits)
    h_y = entropy(logits) if len(heads) < 2 else data.head_entropy(logits, heads)
    return ((weight.detach() if detach else weight) * h_y).mean()                # Eq. (9)


# == training ==

def annealed_lr(lr0: float, p: float) -> float:
    return lr0 / (1 + 10 * p) ** 0.75                                             # DANN's annealing


def official_progress(epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
    """main.py's p after step `step` (0-based) of epoch `epoch` (1-based): from 1/epochs to ≈1.03."""
    return (step + epoch * steps_per_epoch) / (epochs * steps_per_epoch)


def set_lr(optimizer, lr: float):
    for group in optimizer.param_groups:
        group["lr"] = lr


def dann_ramp(p: float) -> float:
    return 2 / (1 + math.exp(-10 * p)) - 1                                        # DANN's λ_p, 0 → 1


def scheduled_betas(args, epoch: int) -> dict:
    """λ per discriminator for epoch `epoch` (1-based): a negative --beta-* is replaced by the DANN ramp at the p
    of the epoch's first step, (0 + epoch·L)/(epochs·L) = epoch/epochs, and held for the epoch. The official code
    (main.py:350-352) evaluates the ramp at every step, but overwrites the negative value at the first one."""
    p = official_progress(epoch, 0, 1, args.epochs)
    return {k: (dann_ramp(p) if getattr(args, f"beta_{k}") < 0 else getattr(args, f"beta_{k}")) for k in DISCRIMINATORS}


def train_step(model, optimizer, args, x_s, y_s, x_t=None, betas: dict = None) -> dict:
    """One SGD step on a source batch (and a target batch when any target loss is on). `betas`: the λ of each
    discriminator (scheduled_betas; default epoch 1's). Returns loss tensors."""
    betas = scheduled_betas(args, 1) if betas is None else betas
    grl = {k: (betas[k] if args.lambda_as == "grl" else 1.0) for k in DISCRIMINATORS}
    weight = {k: (1.0 if args.lambda_as == "grl" else betas[k]) for k in DISCRIMINATORS}
    b_s = len(x_s)
    out = model(x_s if x_t is None else torch.cat([x_s, x_t]), grl)           # one pass over (B_s + B_t, K, D)
    losses = {"loss_y": class_loss(out["logits"][:b_s], y_s, model.heads)}        # Eq. (1)
    for k in args.discriminators:                                                 # Eqs. (2), (6), (3)
        losses[f"loss_{k}"] = domain_loss(out[k][:b_s], out[k][b_s:])
    if args.entropy_loss == "attentive":
        losses["loss_ae"] = attentive_entropy_loss(out["logits"], out["video"], args.detach_attention,
                                                   model.heads)                   # Eq. (9)
    # Eq. (10): with GRLs the minus sign lives in the reversed gradient, so every term is added
    total = losses["loss_y"] + sum(weight[k] * losses[f"loss_{k}"] for k in args.discriminators)
    if "loss_ae" in losses:
        total = total + args.gamma * losses["loss_ae"]
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
    optimizer.step()
    losses["loss"] = total
    if out["attention"] is not None:
        losses["attention"] = out["attention"].mean()
    return {k: v.detach() for k, v in losses.items()}


def train_one_epoch(model, optimizer, run, args, epoch: int) -> dict:
    d = run.data
    uses_target = bool(args.discriminators)
    steps_per_epoch = math.ceil(len(d.source_train) / args.batch_size)           # official len(source_loader)
    total_steps = args.epochs * steps_per_epoch
    betas = scheduled_betas(args, epoch)
    model.train()
    sums, count, started = {}, 0, time.perf_counter()
    for i, (idx_s, idx_t) in enumerate(run.progress(run.pairs())):
        if args.lr_schedule == "dann":                                           # p from 0, before the step
            set_lr(optimizer, annealed_lr(args.lr, ((epoch - 1) * steps_per_epoch + i) / total_steps))
        x_s = run.frames(d.source_train, idx_s, mode=args.train_sampling)        # (B_s, K, D)
        y_s = torch.as_tensor(d.source_train.labels[idx_s]).to(run.device)
        x_t = run.frames(d.target_train, idx_t, mode=args.train_sampling) if uses_target else None   # (B_t, K, D)
        stats = train_step(model, optimizer, args, x_s, y_s, x_t, betas)
        if args.lr_schedule == "official":   # official: set after the step, epoch counted from 1 (p ≥ 1/epochs)
            set_lr(optimizer, annealed_lr(args.lr, official_progress(epoch, i, steps_per_epoch, args.epochs)))
        for k, v in stats.items():
            sums[k] = sums.get(k, 0) + v
        count += 1
    ramped = {f"beta_{k}": betas[k] for k in args.discriminators if getattr(args, f"beta_{k}") < 0}
    return {**{k: float(v) / count for k, v in sums.items()}, **ramped, "lr": optimizer.param_groups[0]["lr"],
            "train_time_s": time.perf_counter() - started}


# == analysis (paper Table 9) ==

def multi_kernel_mmd2(a, b, kernels: int = 5, multiplier: float = 2.0):
    """Biased MMD² with the official `mmd_rbf` kernel (official loss.py:46-59): k(x, y) = Σ_i exp(−‖x − y‖² / b_i),
    a sum (not a mean) of `kernels` Gaussians with b_i = b̄ · multiplier^(i − kernels//2), i = 0..kernels−1, where
    b̄ = the mean squared distance between distinct points of the pooled sample. The official code uses 5 kernels ×2
    on video features (main.py:458-459, 475-476) and "ver 2" = mean(K_ss + K_tt − K_st − K_ts) on equal-size halves
    (loss.py:74-79); the block means below are the same number for equal sizes and also take N_a ≠ N_b.
    a (N_a, d), b (N_b, d)."""
    z = torch.cat([a, b]).double()
    dist = torch.cdist(z, z).pow(2)                                               # (N, N), zero diagonal
    n, total = len(a), len(z)
    mean_dist = (dist.sum() / (total * total - total)).clamp_min(1e-12)
    k = sum(torch.exp(-dist / (mean_dist * multiplier ** (i - kernels // 2))) for i in range(kernels))   # (N, N)
    return float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())


def gaussian_mmd2(a, b):
    """Biased MMD² with one Gaussian kernel k(x, y) = exp(−‖x − y‖² / (2σ²)), σ² = the median squared distance
    between distinct points of the pooled sample (median heuristic; --mmd median). a (N_a, d), b (N_b, d)."""
    z = torch.cat([a, b]).double()
    dist = torch.cdist(z, z).pow(2)                                               # (N, N)
    off_diagonal = dist[~torch.eye(len(z), dtype=torch.bool)]
    sigma2 = off_diagonal.median().clamp_min(1e-12)
    k = torch.exp(-dist / (2 * sigma2))
    n = len(a)
    return float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())


@torch.no_grad()
def domain_discrepancy(model, run, grl) -> dict:
    """MMD² and the video discriminator's domain loss (source 0 / target 1) of the final video features h on
    source val vs target val, eval mode. Lower MMD and higher domain loss mean a smaller domain gap."""
    model.eval()
    k, dev = run.args.num_segments, run.device
    feature = lambda x: model(x, grl, domains=False)["feature"]
    h_s = data.predict_split(feature, run.data.source_val, k, dev)               # (N_s, d)
    h_t = data.predict_split(feature, run.data.target_val, k, dev)               # (N_t, d)
    if run.args.mmd == "official":
        mmd2, kernel = multi_kernel_mmd2(h_s, h_t), "official mmd_rbf: sum of 5 gaussians exp(-d^2/b), b = mean " \
            "pairwise squared distance x 2^(-2..2)"
    else:
        mmd2, kernel = gaussian_mmd2(h_s, h_t), "gaussian exp(-d^2/(2 sigma^2)), sigma^2 = median pairwise squared " \
            "distance"
    out = {"mmd2": mmd2, "mmd_kernel": kernel, "domain_loss": None,
           "features": f"h before dropout, source val {len(h_s)} vs target val {len(h_t)}"}
    if model.video_discriminator is not None:
        disc = model.video_discriminator
        out["domain_loss"] = float(domain_loss(disc(h_s.to(dev)), disc(h_t.to(dev))))
    return out


def build(args, in_dim: int, num_classes: int, device="cpu", heads: tuple = (), **widths):
    """The model and its optimizer (one parameter group, one lr: the official code has no 10× heads). `heads`: the
    classifier heads' sizes for EPIC-100 --label verb+noun (num_classes is then their sum). `widths`
    (frame_dim, relation_dim) exist for tests that run the Triton interpreter on tiny shapes."""
    model = TA3N(in_dim, num_classes, num_segments=args.num_segments, temporal=args.temporal,
                 discriminators=args.discriminators, attention=args.attention, relations=args.relations,
                 backend=args.kernel, detach_attention=args.detach_attention, dropout=args.dropout,
                 heads=heads, **widths).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                                weight_decay=args.weight_decay)
    return model, optimizer


def main(argv=None) -> dict:
    args = resolve(data.parse_args(Args, argv, __doc__))
    # ---- run plumbing (identical in every script; see data.py) ----
    run = data.Run(args, script="ta3n", with_target_train=True,
                   variant="" if args.variant == "ta3n" else args.variant)    # one output folder per variant
    d = run.data
    model, optimizer = build(args, d.source_train.dim, d.num_classes, run.device, heads=tuple(d.heads.values()))
    grl = {k: getattr(args, f"beta_{k}") for k in DISCRIMINATORS}   # evaluation runs without gradients: λ unused
    predict = lambda x: model(x, grl, domains=False)["logits"]
    if args.eval_only:                                     # --eval-only --checkpoint PATH: test, no training
        run.load_trained({"model": model})
        run.end_epoch({}, predict=predict)
    for epoch in run.epochs(state={"model": model, "optimizer": optimizer}) if not args.eval_only else []:
        stats = train_one_epoch(model, optimizer, run, args, epoch)
        model.eval()
        run.end_epoch(stats, predict=predict)
    if args.save_features:                                    # h before dropout, eval mode, for benchmark/plot.py
        model.eval()
        data.save_features(run, lambda x: model(x, grl, domains=False)["feature"])
    return run.finish(extra={"analysis": domain_discrepancy(model, run, grl)})


if __name__ == "__main__":
    main()
