"""The baselines of the video DA / DG papers, run under the same protocol as the proposed methods.

TA3N (Chen, Kira, AlRegib, Yoo, Chen, Zheng: "Temporal Attentive Alignment for Large-Scale Video Domain
Adaptation", ICCV 2019, https://arxiv.org/abs/1907.12743), §5 Tables 3-5 and supplementary §7.3.3, extends image
DA methods to video by putting them on two backbones: TemPooling (mean over frames) and TemRelation (TRN-M).
This file holds those baselines, plus CDAN (TCoN's baseline) and the TSN/TRN domain-generalization baselines
(APN's comparison), one `# ==== NAME ====` section each.

    python baselines.py --method dann --temporal relation              # synth2-a -> synth2-b by default
    python baselines.py --method jan --temporal pooling --source ucf --target hmdb --data-root DATA

Methods (--method), each on --temporal pooling|relation (auto: relation, tsn: pooling)
  source-only   train on source labels only (TA3N `--use_target none`; target data is never read)
  target-only   train on target-train labels (the upper bound; TA3N "Target only")
  dann          Ganin & Lempitsky, ICML 2015: G_sd after the spatial module + G_td after the temporal module
                (no relation discriminators, as in TA3N §7.3.3 item 1)
  jan           Long et al., ICML 2017: joint MMD on [class predictions, video feature]
  adabn         Li et al., 2016 (arXiv:1603.04779): per-domain BN statistics in the spatial module
  mcd           Saito et al., CVPR 2018: two classifiers, steps A/B/C with n_gen generator steps
  cdan          Long et al., NeurIPS 2018: discriminator on f ⊗ softmax(g); --cdan-entropy for CDAN+E
  tsn, trn      source-only DG baselines (Wang et al. ECCV 2016; Zhou et al. ECCV 2018): no target data at all,
                TSN random segment sampling; tsn = TemPooling, trn = TemRelation

Backbone (TA3N Fig. 8; official code models.py:141, 565-575, TRNmodule.py:27-86; docs/official_code.md §1.3)
  G_sf  Linear(D→512) [+ AdaBN] → ReLU → Dropout(0.5) on each of the K frames, init N(0, 0.001)
  G_tf  TemPooling: mean over K → 512-d;  TemRelation: TRN-M over the official 3-per-scale tuples → 256-d
  G_y   Dropout(0.5) → Linear(d→C), init N(0, 0.001)

Paper -> code (equation labels are this file's own: §7.3.3 describes the baselines in words and each baseline's
paper numbers its equations differently)
  Eq. (1)  L_y = CE(G_y(h_s), y_s)                                        class_loss()
  Eq. (2)  R_n = Σ_{tuples t of n frames} ReLU(W_n [f_t1;…;f_tn]),  h = Σ_n R_n       TemporalRelation
  Eq. (3)  GRL_λ: forward x, backward −λ·grad                             grad_reverse()
  Eq. (4)  L_sd, L_td = CE(G_d(GRL_λ(f)), domain), source 0 / target 1    domain_loss()
  Eq. (5)  k(a,b) = Σ_i exp(−‖a−b‖² / (σ²·2^(i−⌊m/2⌋))), i < m, σ² = mean pairwise ‖·‖²   multi_gaussian_kernel()
  Eq. (6)  JMMD = mean_ij [Πk(s_i,s_j) + Πk(t_i,t_j) − Πk(s_i,t_j) − Πk(t_i,s_j)]       joint_mmd()
  Eq. (7)  AdaBN: BN_d(z) = γ·(z − μ_d)/√(σ²_d + ε) + β, d = source | target     SpatialModule
  Eq. (8)  d(p1, p2) = mean_k |p1_k − p2_k|                               classifier_discrepancy()
  Eq. (9)  MCD  A: min_{G,F1,F2} L_y(F1)+L_y(F2)   B: min_{F1,F2} L_y(F1)+L_y(F2) − d_t   C: min_G d_t (n_gen×)
  Eq. (10) CDAN T(f, g) = f ⊗ softmax(g), flattened → GRL → D               multilinear_map()
  Eq. (11) CDAN+E weights w = 1 + exp(−H(softmax(g))), normalised per domain      conditional_domain_loss()
  Eq. (12) lr_p = lr0 / (1 + 10p)^0.75;  λ_p = 2 / (1 + exp(−10p)) − 1      annealed_lr(), grl_ramp()
Shapes: B batch, K frames, D input width, d video-feature width (512 pooling, 256 relation), C classes,
R_n number of n-frame tuples.

Where the official code differs from the papers (cmhungsteve/TA3N main.py:447-556, loss.py:85-120,
models.py:490-543; docs/official_code.md §1.4-1.5, docs/baselines.md)
- DANN: λ is only the GRL scale (0.75 video, 0.5 frame: the script's `--beta`); both domain CEs are added with
  weight 1, so the discriminators train at full rate. We follow the code. (The TA3N text lists λs = 0.75.)
- JAN: the code feeds the raw *logits* (not softmax) and the pre-dropout video feature, with 2 kernels on the
  logits and 5 on the feature (main.py `kernel_nums=[2, 5]`), bandwidth = mean pairwise squared distance
  (detached), and trims both batches to min(B_s, B_t) first rows. We follow it; `--jan-on softmax` uses the
  JAN paper's softmax predictions. Weight α = 1 (opts.py default; the released script runs TA3N, not JAN).
- AdaBN: the code gives each domain its own BatchNorm1d *with its own affine*, and the target one never gets a
  gradient (no loss touches target data), so its γ, β stay at 1, 0. AdaBN shares all weights and swaps only the
  statistics; we share γ, β and keep two sets of running statistics. Test uses the target running statistics
  (eval mode), as the code's validate() does by feeding everything through the target stream; the held-out
  source split used for model selection is normalised with the source statistics.
- MCD: the code does a single step per batch: CE(F1)+CE(F2) on source, and −d on target through GRL(μ) in
  front of both classifiers, so the classifiers maximize d while G minimizes μ·d in the same update (opts
  default μ = 0: G never minimizes d at all). We implement the MCD paper's three steps A/B/C with n_gen = 4
  generator steps (the MCD authors' `num_k` default), two SGD optimizers with the same schedule. Test uses F1,
  like the code's validate().
- CDAN is not in the TA3N code. We follow the CDAN paper's code conventions: softmax detached in the multilinear
  map, GRL ramp λ_p (Eq. 12), loss weight 1, entropy weights normalised per domain with a reversed gradient
  through H. The discriminator has TA3N's shape Linear(C·d→d)→ReLU→Linear(d→2), so DANN and CDAN differ only
  by the conditioning.
- The official epoch counter starts at 1: p = (i + epoch·L)/(epochs·L) runs from 1/epochs to ≈1.03 and the lr is
  set after each step (the first step uses lr0). We keep this so numbers line up with the TA3N script.
- Training reads the 5 centred frames every epoch (no temporal jitter), except tsn/trn (TSN random sampling).

Ablation / option flags: --temporal, --beta-frame, --beta-video, --jan-weight, --jan-on, --mcd-steps,
--cdan-entropy, --train-sampling, --clip-grad, --weight-decay, --momentum.
EPIC-100 (data.py): --label verb+noun gives G_y (and MCD's second classifier) two heads side by side: L_y is
0.5·(CE_verb + CE_noun) (official EPIC-100 TA3N code, main.py train()), and every softmax or entropy of the class
predictions (JAN --jan-on softmax, MCD's discrepancy, CDAN's map and CDAN+E's weights) is taken within each head and
averaged over the heads. --save-features writes <out>/features.npz (the pre-dropout video features of the source val
and target val splits) for benchmark/plot.py.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
from kernels import relation_tuples      # TRN-M's official tuple table (shared with ta3n.py)

UDA_METHODS = ["dann", "jan", "adabn", "mcd", "cdan"]
METHODS = ["source-only", "target-only", *UDA_METHODS, "tsn", "trn"]


@dataclass
class Args(data.RunArgs):
    method: str = field(default="source-only", metadata={"help": "which baseline", "choices": METHODS})
    temporal: str = field(default="auto", metadata={"help": "temporal module: pooling (TemPooling) or relation "
                                                    "(TemRelation, TRN-M); auto = relation, pooling for tsn",
                                                    "choices": ["auto", "pooling", "relation"]})
    beta_frame: float = field(default=0.5, metadata={"help": "DANN: GRL scale of the frame discriminator G_sd"})
    beta_video: float = field(default=0.75, metadata={"help": "DANN: GRL scale of the video discriminator G_td"})
    jan_weight: float = field(default=1.0, metadata={"help": "JAN: weight α of the JMMD loss"})
    jan_on: str = field(default="logits", metadata={"help": "JAN: class predictions as logits (official code) or "
                                                    "softmax (JAN paper)", "choices": ["logits", "softmax"]})
    mcd_steps: int = field(default=4, metadata={"help": "MCD: generator steps n_gen (step C) per batch"})
    cdan_entropy: bool = field(default=False, metadata={"help": "CDAN+E: entropy-conditioned sample weights"})
    train_sampling: str = field(default="auto", metadata={"help": "training frames: center (TA3N) or random (TSN); "
                                                          "auto = random for tsn/trn, center otherwise",
                                                          "choices": ["auto", "center", "random"]})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (Nesterov)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "SGD weight decay"})
    clip_grad: float = field(default=20.0, metadata={"help": "gradient-norm clip (TA3N --gd)"})


FRAME_DIM, RELATION_DIM, DROPOUT = 512, 256, 0.5      # TA3N script: fc_dim 512, TRN bottleneck 256, dropout_i/v 0.5


def init_head(layer: nn.Linear) -> nn.Linear:
    """TA3N's init for the shared fc, classifiers and discriminators: weight ~ N(0, 0.001), bias 0."""
    nn.init.normal_(layer.weight, 0.0, 0.001)
    nn.init.zeros_(layer.bias)
    return layer


# ==== backbone: TemPooling / TemRelation (Chen et al., TA3N Fig. 8) ====================================

class SpatialModule(nn.Module):
    """G_sf: Linear(D→512) [→ AdaBN] → ReLU → Dropout on every frame. With adabn=True the BN keeps one set of
    running statistics per domain (index 0 source, 1 target) and one shared affine γ, β (Eq. 7)."""

    def __init__(self, in_dim: int, *, out_dim: int = FRAME_DIM, adabn: bool = False):
        super().__init__()
        self.fc = init_head(nn.Linear(in_dim, out_dim))
        self.adabn = adabn
        if adabn:
            self.bn = nn.ModuleList([nn.BatchNorm1d(out_dim, affine=False) for _ in range(2)])
            self.bn_weight = nn.Parameter(torch.ones(out_dim))
            self.bn_bias = nn.Parameter(torch.zeros(out_dim))
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x, domain: int = 1):
        z = self.fc(x)                                                            # (B, K, 512)
        if self.adabn:
            # statistics over all B·K frames of one domain, as the official code's BatchNorm1d on (B·K, 512)
            z = self.bn[domain](z.flatten(0, 1)).view_as(z) * self.bn_weight + self.bn_bias   # Eq. (7)
        return self.dropout(F.relu(z))


class TemporalPooling(nn.Module):
    """G_tf of TemPooling (and TSN's average consensus): the mean of the K frame features."""
    out_dim = FRAME_DIM

    def forward(self, frames):
        return frames.mean(1)                                                     # (B, 512)


class TemporalRelation(nn.Module):
    """G_tf of TemRelation: TRN-M (Eq. 2). Per tuple Linear(n·512→256)+ReLU, summed over tuples and scales."""
    out_dim = RELATION_DIM

    def __init__(self, num_frames: int, *, in_dim: int = FRAME_DIM, out_dim: int = RELATION_DIM):
        super().__init__()
        tuples = relation_tuples(num_frames)
        self.scales = [t.shape[1] for t in tuples]                                # K, K-1, ..., 2
        for t in tuples:                                   # buffers follow .to(device); not saved in checkpoints
            self.register_buffer(f"tuples_{t.shape[1]}", t, persistent=False)
        # PyTorch default init, as the official TRN fusion layers
        self.fuse = nn.ModuleList([nn.Linear(n * in_dim, out_dim) for n in self.scales])

    def forward(self, frames):
        h = 0
        for n, fuse in zip(self.scales, self.fuse):                               # one iteration per scale
            v = frames[:, getattr(self, f"tuples_{n}")].flatten(2)                # (B, R_n, n·512)
            h = h + F.relu(fuse(v)).sum(1)                                        # Eq. (2): Σ tuples, Σ scales
        return h                                                                  # (B, 256)


class VideoModel(nn.Module):
    """G_sf → G_tf → Dropout → G_y. forward returns (frame features (B, K, 512), video feature before dropout
    (B, d), video feature after dropout (B, d)); the classifiers and discriminators take the last one, as in
    the official code. `classifier_2` exists only for MCD."""

    def __init__(self, in_dim: int, num_classes: int, num_frames: int, *, temporal: str, adabn: bool = False,
                 two_classifiers: bool = False, heads: tuple = ()):
        super().__init__()
        self.heads = tuple(heads)    # EPIC-100 verb+noun: sizes of the classifier's heads (one Linear, side by side)
        self.spatial = SpatialModule(in_dim, adabn=adabn)
        self.temporal = TemporalPooling() if temporal == "pooling" else TemporalRelation(num_frames)
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = init_head(nn.Linear(self.temporal.out_dim, num_classes))                  # G_y
        self.classifier_2 = init_head(nn.Linear(self.temporal.out_dim, num_classes)) if two_classifiers else None

    def forward(self, x, domain: int = 1):
        # domain picks AdaBN's statistics (0 source, 1 target); the default is the test-time choice
        frames = self.spatial(x, domain)                                          # (B, K, 512)
        video = self.temporal(frames)                                             # (B, d)
        return frames, video, self.dropout(video)


def domain_discriminator(in_dim: int, hidden: int) -> nn.Sequential:
    """TA3N's discriminator shape: Linear(in→hidden) → ReLU → Linear(hidden→2), init N(0, 0.001)."""
    return nn.Sequential(init_head(nn.Linear(in_dim, hidden)), nn.ReLU(), init_head(nn.Linear(hidden, 2)))


def class_loss(logits, labels, heads: tuple = ()):
    """Eq. (1); with two heads (EPIC-100 --label verb+noun) 0.5·(CE_verb + CE_noun), the official EPIC code's."""
    return data.label_loss(logits, labels, heads)                                 # Eq. (1)


def entropy(logits, heads: tuple = ()):
    """H(softmax(g)) per row, natural log; with two heads the mean of the heads' entropies."""
    if len(heads) > 1:
        return data.head_entropy(logits, heads)
    return -(F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum(1)


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff: float):
        ctx.coeff = coeff
        return x.view_as(x)                                                       # Eq. (3): identity

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None                                            # Eq. (3): −λ·grad


def grad_reverse(x, coeff: float):
    return GradReverse.apply(x, coeff)


def domain_loss(d_s, d_t):
    """Eq. (4): 2-way CE of domain logits, source = 0, target = 1, averaged over all rows of both domains."""
    labels = torch.cat([torch.zeros(len(d_s)), torch.ones(len(d_t))]).long().to(d_s.device)
    return F.cross_entropy(torch.cat([d_s, d_t]), labels)


# ==== Source-only / Target-only / TSN / TRN (single-domain supervised training) ======================

def supervised_step(model, x, y, domain: int) -> tuple:
    _, _, v = model["net"](x, domain)
    loss = class_loss(model["net"].classifier(v), y, model["net"].heads)          # Eq. (1)
    return loss, {"loss_y": loss.item()}


# ==== DANN (Ganin & Lempitsky) ===========================================================================
# G_sd on every frame after the spatial module, G_td on the video feature after the temporal module.

def dann_step(model, args, x_s, y_s, x_t) -> tuple:
    net = model["net"]
    f_s, _, v_s = net(x_s)
    f_t, _, v_t = net(x_t)
    loss_y = class_loss(net.classifier(v_s), y_s, net.heads)                      # Eq. (1)
    d_frame = [model["frame_discriminator"](grad_reverse(f, args.beta_frame)).flatten(0, 1) for f in (f_s, f_t)]
    loss_sd = domain_loss(*d_frame)                                               # Eq. (4), (B·K, 2) rows
    d_video = [model["video_discriminator"](grad_reverse(v, args.beta_video)) for v in (v_s, v_t)]
    loss_td = domain_loss(*d_video)                                               # Eq. (4), (B, 2) rows
    # official: domain CEs with weight 1; λ lives only in the GRLs
    return loss_y + loss_sd + loss_td, {"loss_y": loss_y.item(), "loss_sd": loss_sd.item(), "loss_td": loss_td.item()}


# ==== JAN (Long et al.) ==================================================================================

def multi_gaussian_kernel(x_s, x_t, *, kernel_mul: float = 2.0, kernel_num: int = 5):
    """Eq. (5) on all pairs of the 2n points [x_s; x_t]: a sum of kernel_num Gaussians whose bandwidths are
    σ²·kernel_mul^(i − kernel_num//2), σ² = mean squared distance over distinct pairs (detached, as loss.py).
    Args: x_s, x_t (n, d). Returns (2n, 2n)."""
    z = torch.cat([x_s, x_t])                                                     # (2n, d)
    sq = (z * z).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0)                 # (2n, 2n) squared distances
    m = len(z)
    sigma2 = (dist.detach().sum() / (m * m - m)).clamp_min(1e-12)                 # guard: identical points
    scales = kernel_mul ** (torch.arange(kernel_num, dtype=z.dtype, device=z.device) - kernel_num // 2)
    return torch.exp(-dist[None] / (sigma2 * scales[:, None, None])).sum(0)       # Eq. (5)


def joint_mmd(feats_s: list, feats_t: list, kernel_nums: list, kernel_mul: float = 2.0):
    """Eq. (6): MMD with the product of the per-layer kernels (JMMD; one layer = DAN's MK-MMD), the biased
    "ver 2" estimate of loss.py. Unequal batches are trimmed to the first min(B_s, B_t) rows, as main.py does."""
    n = min(len(feats_s[0]), len(feats_t[0]))
    joint = 1.0
    for f_s, f_t, num in zip(feats_s, feats_t, kernel_nums):                    # one iteration per layer
        joint = joint * multi_gaussian_kernel(f_s[:n], f_t[:n], kernel_mul=kernel_mul, kernel_num=num)
    ss, tt, st, ts = joint[:n, :n], joint[n:, n:], joint[:n, n:], joint[n:, :n]
    return (ss + tt - st - ts).mean()                                             # Eq. (6)


def jan_step(model, args, x_s, y_s, x_t) -> tuple:
    net = model["net"]
    _, video_s, v_s = net(x_s)
    _, video_t, v_t = net(x_t)
    logits_s, logits_t = net.classifier(v_s), net.classifier(v_t)
    loss_y = class_loss(logits_s, y_s, net.heads)                                 # Eq. (1)
    pred_s, pred_t = (logits_s, logits_t) if args.jan_on == "logits" else (
        data.head_probabilities(logits_s, net.heads), data.head_probabilities(logits_t, net.heads))   # per head
    # official main.py: layers [predictions, pre-dropout video feature] with 2 and 5 kernels
    loss_jmmd = joint_mmd([pred_s, video_s], [pred_t, video_t], kernel_nums=[2, 5])     # Eq. (6)
    return loss_y + args.jan_weight * loss_jmmd, {"loss_y": loss_y.item(), "loss_jmmd": loss_jmmd.item()}


# ==== AdaBN (Li et al.) ==================================================================================
# The BN itself lives in SpatialModule (Eq. 7). Training: source through the source statistics, target
# through the target statistics; only the source loss has gradients, the target pass only updates its
# running statistics, which the test pass (eval mode, domain 1) then uses.

def adabn_step(model, x_s, y_s, x_t) -> tuple:
    net = model["net"]
    _, _, v_s = net(x_s, domain=0)
    with torch.no_grad():
        net.spatial(x_t, domain=1)                                                # target running statistics
    loss = class_loss(net.classifier(v_s), y_s, net.heads)                        # Eq. (1)
    return loss, {"loss_y": loss.item()}


# ==== MCD (Saito et al.) =================================================================================
# G = spatial + temporal modules (+ dropout), F1/F2 = the two classifiers. Each batch: step A (G, F1, F2 on
# source), step B (F1, F2: source CE minus target discrepancy, G fixed), step C (G: target discrepancy, n_gen
# times, F fixed). The TA3N code's one-step variant is described in the module docstring.

def classifier_discrepancy(logits_1, logits_2, heads: tuple = ()):
    """Eq. (8); with two heads the mean of the heads' discrepancies."""
    pairs = list(zip(data.split_heads(logits_1, heads), data.split_heads(logits_2, heads)))
    return sum((F.softmax(a, 1) - F.softmax(b, 1)).abs().mean() for a, b in pairs) / len(pairs)      # Eq. (8)


def mcd_step_a(net, x_s, y_s):
    _, _, v = net(x_s)
    return class_loss(net.classifier(v), y_s, net.heads) + class_loss(net.classifier_2(v), y_s, net.heads)  # Eq. (9) A


def mcd_step_b(net, x_s, y_s, x_t):
    with torch.no_grad():                                                         # G is fixed in step B
        v_s, v_t = net(x_s)[2], net(x_t)[2]
    loss_y = class_loss(net.classifier(v_s), y_s, net.heads) + class_loss(net.classifier_2(v_s), y_s, net.heads)
    disc = classifier_discrepancy(net.classifier(v_t), net.classifier_2(v_t), net.heads)
    return loss_y - disc, disc                                                    # Eq. (9) B


def mcd_step_c(net, x_t):
    _, _, v_t = net(x_t)
    return classifier_discrepancy(net.classifier(v_t), net.classifier_2(v_t), net.heads)     # Eq. (9) C


def mcd_params(net) -> tuple:
    generator = list(net.spatial.parameters()) + list(net.temporal.parameters())
    classifiers = list(net.classifier.parameters()) + list(net.classifier_2.parameters())
    return generator, classifiers


def mcd_step(model, args, optimizers, x_s, y_s, x_t) -> dict:
    net = model["net"]
    params_g, params_f = mcd_params(net)
    opt_g, opt_f = optimizers
    loss_a = mcd_step_a(net, x_s, y_s)
    sgd_step(model, loss_a, [opt_g, opt_f], params_g + params_f, args.clip_grad)
    loss_b, disc_b = mcd_step_b(net, x_s, y_s, x_t)
    sgd_step(model, loss_b, [opt_f], params_f, args.clip_grad)
    for _ in range(args.mcd_steps):
        disc_c = mcd_step_c(net, x_t)
        sgd_step(model, disc_c, [opt_g], params_g, args.clip_grad)
    return {"loss_y": loss_a.item() / 2, "disc_b": disc_b.item(), "disc_c": disc_c.item()}


# ==== CDAN (Long et al.) =================================================================================

def multilinear_map(features, logits, heads: tuple = ()):
    """Eq. (10): T(f, g) = f ⊗ softmax(g), flattened; softmax detached as in the CDAN code (within each head when
    there are two). (B, d), (B, C) -> (B, C·d)."""
    probs = data.head_probabilities(logits, heads).detach()
    return (probs[:, :, None] * features[:, None, :]).flatten(1)                 # (B, C·d)


def conditional_domain_loss(d_s, d_t, logits_s=None, logits_t=None, coeff: float = 1.0, heads: tuple = ()):
    """Eq. (4) on the conditional discriminator's logits; with logits given (CDAN+E), Eq. (11): weights
    w = 1 + exp(−H), normalised to sum 1 within each domain (so each domain counts half, whatever B_s/B_t);
    H gets a reversed gradient (GRL coeff), as in the CDAN code."""
    if logits_s is None:
        return domain_loss(d_s, d_t)
    w = [1 + torch.exp(-grad_reverse(entropy(g, heads), coeff)) for g in (logits_s, logits_t)]    # Eq. (11)
    w = torch.cat([w_d / w_d.sum().detach() for w_d in w])                      # (B_s + B_t,)
    labels = torch.cat([torch.zeros(len(d_s)), torch.ones(len(d_t))]).long().to(d_s.device)
    ce = F.cross_entropy(torch.cat([d_s, d_t]), labels, reduction="none")
    return (w * ce).sum() / w.sum().detach()


def cdan_step(model, args, x_s, y_s, x_t, coeff: float) -> tuple:
    net = model["net"]
    _, _, v_s = net(x_s)
    _, _, v_t = net(x_t)
    logits_s, logits_t = net.classifier(v_s), net.classifier(v_t)
    loss_y = class_loss(logits_s, y_s, net.heads)                                 # Eq. (1)
    d = [model["conditional_discriminator"](grad_reverse(multilinear_map(v, g, net.heads), coeff))   # Eq. (10)
         for v, g in ((v_s, logits_s), (v_t, logits_t))]
    ent = (logits_s, logits_t) if args.cdan_entropy else (None, None)
    loss_d = conditional_domain_loss(*d, *ent, coeff=coeff, heads=net.heads)
    return loss_y + loss_d, {"loss_y": loss_y.item(), "loss_cdan": loss_d.item(), "grl": coeff}


# ---- method: schedules and the epoch loop ----

def annealed_lr(lr0: float, p: float) -> float:
    return lr0 / (1 + 10 * p) ** 0.75                                             # Eq. (12)


def grl_ramp(p: float) -> float:
    return 2 / (1 + math.exp(-10 * p)) - 1                                        # Eq. (12)


def sgd_step(model, loss, optimizers, params, clip: float):
    model.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    for opt in optimizers:
        opt.step()


def single_domain_batches(n: int, batch_size: int, generator) -> list:
    """One shuffled pass over one domain (source-only, target-only, tsn, trn); the last batch stays partial."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


def train_one_epoch(run, model, optimizers, args, epoch: int, sampling: str) -> dict:
    d, method = run.data, args.method
    # the labelled split: source, or target train for the upper bound
    split_a = d.target_train if method == "target-only" else d.source_train
    if method in UDA_METHODS:
        steps = run.pairs()                                # (source, target) batches, 128 / 128·n_t/n_s
    else:
        steps = [(idx, None) for idx in single_domain_batches(len(split_a), args.batch_size, run.generator)]
    all_params = list(model.parameters())
    totals = {}
    for i, (idx_a, idx_t) in enumerate(run.progress(steps)):
        x_a = run.frames(split_a, idx_a, mode=sampling)                          # (B, K, D)
        y_a = torch.as_tensor(split_a.labels[idx_a.numpy()]).to(run.device)
        x_t = run.frames(d.target_train, idx_t, mode=sampling) if idx_t is not None else None    # (B_t, K, D)
        if method == "mcd":
            stats = mcd_step(model, args, optimizers, x_a, y_a, x_t)
        else:
            if method == "dann":
                loss, stats = dann_step(model, args, x_a, y_a, x_t)
            elif method == "jan":
                loss, stats = jan_step(model, args, x_a, y_a, x_t)
            elif method == "adabn":
                loss, stats = adabn_step(model, x_a, y_a, x_t)
            elif method == "cdan":
                # the CDAN code's ramp, over this run's steps (p from 0 to 1)
                loss, stats = cdan_step(model, args, x_a, y_a, x_t, grl_ramp(((epoch - 1) * len(steps) + i) /
                                                                                (args.epochs * len(steps))))
            else:
                loss, stats = supervised_step(model, x_a, y_a, domain=1 if method == "target-only" else 0)
            sgd_step(model, loss, optimizers, all_params, args.clip_grad)
        # official: lr set after each step, with p = (i + epoch·L) / (epochs·L) and epoch counted from 1
        lr = annealed_lr(args.lr, (i + epoch * len(steps)) / (args.epochs * len(steps)))
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value / len(steps)
    return {**totals, "lr": lr}


def build_model(args, in_dim: int, num_classes: int, temporal: str, heads: tuple = ()) -> nn.ModuleDict:
    """The backbone plus the method's extra heads, in one ModuleDict so one checkpoint holds them all. `heads`: the
    classifier heads' sizes for EPIC-100 --label verb+noun (num_classes is then their sum)."""
    net = VideoModel(in_dim, num_classes, args.num_segments, temporal=temporal, adabn=args.method == "adabn",
                     two_classifiers=args.method == "mcd", heads=heads)
    model = nn.ModuleDict({"net": net})
    d = net.temporal.out_dim
    if args.method == "dann":
        model["frame_discriminator"] = domain_discriminator(FRAME_DIM, FRAME_DIM)     # G_sd
        model["video_discriminator"] = domain_discriminator(d, d)                     # G_td
    elif args.method == "cdan":
        model["conditional_discriminator"] = domain_discriminator(num_classes * d, d)
    return model


def make_optimizers(model, args) -> list:
    sgd = lambda params: torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                                         weight_decay=args.weight_decay, nesterov=True)
    if args.method == "mcd":
        return [sgd(p) for p in mcd_params(model["net"])]                        # opt_g, opt_f
    return [sgd(model.parameters())]                                              # one group, as the official code


def resolve(args) -> tuple:
    """Derived values and invalid combinations, right after parsing (one error line each)."""
    if args.method == "tsn" and args.temporal == "relation":
        data.fail("--method tsn is the TemPooling DG baseline; use --method trn for TemRelation")
    if args.method == "trn" and args.temporal == "pooling":
        data.fail("--method trn is the TemRelation DG baseline; use --method tsn for TemPooling")
    # a method's own options are refused with another method rather than silently ignored
    defaults = {f.name: f.default for f in dataclasses.fields(Args)}
    for names, owner in ((("beta_frame", "beta_video"), "dann"), (("jan_weight", "jan_on"), "jan"),
                         (("mcd_steps",), "mcd"), (("cdan_entropy",), "cdan")):
        for name in names:
            if getattr(args, name) != defaults[name] and args.method != owner:
                data.fail(f"--{name.replace('_', '-')} applies to --method {owner} only (got --method {args.method})")
    if args.mcd_steps < 1:
        data.fail(f"--mcd-steps must be >= 1 (got {args.mcd_steps})")
    if args.num_segments < 1:
        data.fail(f"--num-segments must be >= 1 (got {args.num_segments})")
    temporal = args.temporal if args.temporal != "auto" else ("pooling" if args.method == "tsn" else "relation")
    if temporal == "relation" and args.num_segments < 2:
        data.fail("--temporal relation needs --num-segments >= 2 (TRN-M has no 1-frame relation)")
    sampling = args.train_sampling if args.train_sampling != "auto" else (
        "random" if args.method in ("tsn", "trn") else "center")
    return temporal, sampling


def main(argv=None) -> dict:
    args = data.parse_args(Args, argv, __doc__)
    temporal, sampling = resolve(args)

    # ---- run plumbing (identical in every script; see data.py) ----
    run = data.Run(args, "baselines", with_target_train=args.method in UDA_METHODS + ["target-only"],
                   variant=f"{args.method}_{temporal}")                 # one output folder per method and backbone
    if args.method == "target-only" and (run.data.target_train.labels < 0).any():
        data.fail(f"--method target-only trains on target-train labels, and {run.data.name} has none")
    model = build_model(args, run.data.source_train.dim, run.data.num_classes, temporal,
                        tuple(run.data.heads.values())).to(run.device)
    optimizers = make_optimizers(model, args)
    state = {"model": model, **{f"optimizer_{i}": opt for i, opt in enumerate(optimizers)}}

    # ---- method: the baseline picked by --method (train_one_epoch above) ----
    net = model["net"]
    # AdaBN normalises each split with its own domain's statistics (domain 1 = target); MCD tests classifier 1
    evaluate = dict(predict=lambda x: net.classifier(net(x, domain=1)[2]),
                    predict_source=lambda x: net.classifier(net(x, domain=0)[2]))
    if args.eval_only:                                     # --eval-only --checkpoint PATH: test, no training
        run.load_trained(state)
        run.end_epoch({}, **evaluate)
    for epoch in run.epochs(state) if not args.eval_only else []:
        model.train()
        stats = train_one_epoch(run, model, optimizers, args, epoch, sampling)
        model.eval()
        run.end_epoch(stats, **evaluate)
    if args.save_features:                          # pre-dropout video feature, eval mode, for benchmark/plot.py
        data.save_features(run, lambda x: net(x, domain=1)[1], lambda x: net(x, domain=0)[1])
    return run.finish(extra={"method": args.method, "temporal": temporal, "train_sampling": sampling,
                             "parameters": sum(p.numel() for p in model.parameters())})


if __name__ == "__main__":
    main()
