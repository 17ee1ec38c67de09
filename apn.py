"""APN: Adversarial Pyramid Network for video domain generalization, on pre-extracted frame features.

Zhiyu Yao, Yunbo Wang, Xingqiang Du, Mingsheng Long, Jianmin Wang: "Adversarial Pyramid Network for Video Domain
Generalization", arXiv 1912.03716, https://arxiv.org/abs/1912.03716 (journal version "VideoDG", TPAMI 2021).
Official code: github.com/thuml/VideoDG, read at 0d6fe1c3 (cited below as "official code, file:line").

    python apn.py                                       # SYNTHETIC: synth2-a trains; unseen synth2-b, synth2-c test
    python apn.py --source ucf --target hmdb --data-root DATA
    python apn.py --no-ada                              # the pyramid alone (the paper's "APN" rows)
    python apn.py --gammas 0.001 0.01 0.1 1             # the paper's γ-ensemble (4 models side by side, 4x the cost)

Domain generalization: one source domain trains, the targets are only tested. The run gets no target training
split at all (data.Run(..., with_target_train=False): target_train is None), the batches come from the source
alone, and target test videos are read only by the no_grad evaluation after each epoch. docs/apn.md has the
measured numbers and the commands that produced them.

Paper -> code  (F frame features, R relation features; Shapes: B batch, M = K segments, D input width,
d hidden width (256), W relation subsets of one scale, G ensemble members (γ values), C classes)
  §4.1       f_i = FC(Dropout_0.8(x_i)), F_M = [f_1 … f_M]                 APN.encode
  §4.1       Attention-Block(Query, Key)                                    AttentionBlock
  §4.2 (I)   R^I_G = AB(F_M, F_M);  R^I_m = AB(F_m, F_m), m = 2 … M−1       APN.forward, relation_sampler()
  Eq. (6)    R^II_m = AB(R^I_G, R^I_m)        (global feature = query)      APN.forward
  Eq. (7)    R^II = Σ_m R^II_m                                              APN.forward
  §4.2 (III) R^III = R^II + R^I_G                                           APN.forward
  §4.3       h = ReLU → FC on the flattened M×d feature, shared by R^II and R^III      APN.classify
  Eq. (2)    c(R, R_0): mean squared difference (§4.3 "mean squared loss")   transport_cost()
  Eqs. (8-9) ℓ(h(R), y_0) − γ·c(R, R_0),  R = R^II (8) or R^III (9)         ada_objective()
  Eq. (5)    X ← X + η ∇_X{…}, Tmax times, on the input frame features       adversarial_examples()
  Alg. 1     line 5: θ ← θ − α∇ℓ(h(R^III_0)); lines 13-14: the same on X^II, X^III    apn_step()
  §5.1, [31] γ-ensemble: per test video, the most confident model; or softmax averaging  ensemble()

Where the official code differs from the paper, and what we do ("code" = thuml/VideoDG; "ours" = decided here,
where neither the paper nor the code settles it)
 1. Attention block = the code's one-layer Transformer encoder-decoder (module/Pyramidmodule.py:AttModel;
    module/Attmodules.py): AB(Query, Key) encodes Key (self-attention + FFN), then the decoder runs CAUSAL
    self-attention on Query, cross-attention to the encoded Key, FFN, Dropout 0.3. Q/K/V are Linear+ReLU, 4 heads,
    no output projection, residual + raw queries, the code's LayerNorm (unbiased std + 1e-8), attention dropout
    0.3, no positional encoding. One block serves every use (code, Pyramidmodule.py:35); --no-shared-block gives
    the global, local and cross relations their own block. Padding masks are dropped (fixed M, no padding).
 2. Relations (default: the code). The paper samples m CONSECUTIVE frames (§4.2); the code draws, for each scale,
    one random ordered subset of m of the M frames, not necessarily consecutive, anew at EVERY forward, shared by
    the batch, at test too (Pyramidmodule.py:56-62): --relations combinations --relation-draw forward. The other
    setting, ours: --relations consecutive --relation-draw batch draws one window per scale per training batch and
    reuses it in every forward of that batch (R_0, the ascent, the updates), and tests deterministically with R^II_m
    averaged over every window of scale m (the training sampler's expectation). At test under the code's draw,
    every split starts its draws from --seed, so evaluating a model twice gives the same numbers.
 3. Frame encoder: Dropout(0.8) on the input feature, then Linear(D, 256) with N(0, 1e-3) init and no activation
    (code, module/models_adv.py). Head: ReLU → Linear(M·256, C) on the flattened feature (code,
    Pyramidmodule.py:37-40, 72-78; the paper says "a fully-connected layer").
 4. Perturbed input = the frame features (ours: the input of the trainable part, as pixels are in front of the
    code's trainable backbone). CE and MSE are mean-reduced (code, main_val.py:72, 83), so a video's ascent
    gradient carries 1/B: the per-epoch `perturbation` column logs ‖X_adv − X‖/‖X‖. --ascent-step normalized
    (ours, not the paper's) moves every video by --relative-step·‖X_0‖ per step along its own gradient.
 5. Video ADA, --ada-variant (both are on the page, apn_step and adversarial_examples):
    alg1 (default, the paper's Alg. 1): one SGD step on CE(h(R^III(X))) (line 5); R_0 once per batch (line 4);
      Tmax ascent steps per level (lines 7-12); one SGD step on CE(h(R^II(X^II))) and one on CE(h(R^III(X^III)))
      (lines 13-14). Alg. 1 is silent on two points, ours: R_0 is computed after line 5's step with the ascent's
      mode, so c(R(X_0), R_0) = 0 at the start under one relation draw; the ascent runs with dropout off
      (--ascent-train-mode: on).
    code (main_val.py:51-103): the ascent first, R_0 recomputed under no_grad in train mode before every ascent
      step (:67-69; fresh dropout and, with the code's draw, fresh relation subsets), the level-III step then the
      level-II step (:71-91), then ONE SGD step on CE(h(R^III)) over [X, X^III, X^II] (:93-103).
    The code's released script trains WITHOUT ADA (train.sh passes no --add_dg; opts/opts.py:18); --no-ada is that.
 6. The code has no γ-ensemble (its --mode ensemble is never implemented); we train the G members side by side on
    the same batches (own init, dropout, optimizer) and record max-confidence selection, softmax averaging and
    every member (--ensemble picks the rule of the protocol's numbers). Default: ONE member, γ = 0.01 (train.sh's
    --alpha 0.01); the paper's ensemble is --gammas 0.001 0.01 0.1 1 (4× the cost).
 7. Protocol (default: the dg-tsn/dg-trn baselines' protocol of baselines.py). The whole source train list trains
    and the held-out source list (UCF/HMDB val, synth2-a val) selects the epoch. The paper splits the source 70/30
    (§5.1), the code's lists are about 80/20 and it picks the epoch with the best TARGET accuracy (oracle,
    main_val.py: `if test_acc > best_acc`). --val-fraction 0.3 gives the paper's split: 70 % of the train list
    trains, 30 % selects (stratified, --split-seed), and the held-out source list is an in-domain test of the last
    model only. Every target's test list is reported; the oracle epoch is labelled as such.
 8. Optimiser (code): SGD lr 1e-3, momentum 0.9, weight decay 5e-4, ×0.1 every 30 epochs (main_val.py MultiStepLR
    [30, 60, 90, 120]), gradient norm ≤ 20. Epochs: paper 150 (§5.1), code 200 (opts/opts.py:29). Default here
    40 (ours): the same schedule, stopped 10 epochs after its first ×0.1 step. On synth2-a plain APN's loss and
    target accuracy settle within 5 epochs of that step and do not move over epochs 40-60, while a 20-epoch
    schedule with the step at 15 stops short (docs/apn.md has the curve). --epochs 150 is the paper's setting.

Ablation flags
  --no-ada                          APN without video ADA (one model; γ unused)
  --ada-from pyramid|level2|level3|last-hidden   Table 2: ADA* (both levels) / R^II only / R^III only / image ADA's
                                    last hidden layer, here ReLU(R^III) (the paper's numbers for "last hidden
                                    layer" and "R^III only" are identical, 55.61 / 72.47)
  --ada-variant alg1|code           the paper's Alg. 1 / the official code's ADA loop (item 5)
  --relations combinations|consecutive, --relation-draw forward|batch    the code's / the paper's subsets (item 2)
  --val-fraction 0.3                the paper's 70/30 source split (item 7)
  --ascent-train-mode, --ascent-step raw|normalized, --no-shared-block, --gammas, --ada-steps, --eta,
  --ensemble max-confidence|softmax-average
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import data


@dataclass
class Args(data.RunArgs):
    target: list[str] = field(default_factory=lambda: ["synth2-b", "synth2-c"],
                              metadata={"help": "unseen target domain(s), only tested; several allowed"})
    epochs: int = field(default=40, metadata={"help": "training epochs (paper 150, code 200; 40 = the paper's "
                                              "schedule up to 10 epochs after its first ×0.1 step, where plain APN "
                                              "has converged on synth2-a: docs/apn.md)"})
    batch_size: int = field(default=40, metadata={"help": "source videos per batch (paper: 40)"})
    lr: float = field(default=1e-3, metadata={"help": "SGD learning rate (paper, code)"})
    hidden_dim: int = field(default=256, metadata={"help": "width d of the frame encoder and attention blocks"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    frame_dropout: float = field(default=0.8, metadata={"help": "dropout on the input frame features (code)"})
    attention_dropout: float = field(default=0.3, metadata={"help": "dropout of the attention block (code)"})
    shared_block: bool = field(default=True, metadata={"help": "one attention block for every relation (code)"})
    relations: str = field(default="combinations", metadata={"help": "local relations of scale m: any ordered "
                                                            "subset of m frames (code) or m consecutive frames (paper)",
                                                            "choices": ["combinations", "consecutive"]})
    relation_draw: str = field(default="forward", metadata={"help": "forward: a new random subset per scale at "
                                                            "every forward, test included (code); batch: one draw per "
                                                            "training batch for all its forwards, test averages over "
                                                            "every subset (ours)", "choices": ["forward", "batch"]})
    ada: bool = field(default=True, metadata={"help": "video ADA (Alg. 1)"})
    ada_from: str = field(default="pyramid", metadata={"help": "features of the ADA objective (Table 2)",
                                                       "choices": ["pyramid", "level2", "level3", "last-hidden"]})
    gammas: list[str] = field(default_factory=lambda: ["0.01"],
                              metadata={"help": "transport-cost weights γ, one ensemble member each (paper: 0.001 "
                                                "0.01 0.1 1; default: the code's single 0.01, a quarter of the cost)"})
    ada_steps: int = field(default=5, metadata={"help": "ascent steps Tmax per batch (paper: 5)"})
    eta: float = field(default=1.0, metadata={"help": "ascent step η of Eq. 5 (paper: 1)"})
    ascent_step: str = field(default="raw", metadata={"help": "raw: Eq. 5, X += η·∇; normalized: every video moves "
                                                      "by --relative-step·‖X_0‖ along its own gradient",
                                                      "choices": ["raw", "normalized"]})
    relative_step: float = field(default=0.05, metadata={"help": "step of --ascent-step normalized, relative to "
                                                         "the video's norm"})
    ada_variant: str = field(default="alg1", metadata={"help": "alg1: the paper's Alg. 1 (R_0 once per batch, "
                                                       "three SGD steps); code: the official code (R_0 recomputed in "
                                                       "train mode at every ascent step, one joint SGD step)",
                                                       "choices": ["alg1", "code"]})
    ascent_train_mode: bool = field(default=False, metadata={"help": "alg1: dropout on during the ascent (the code "
                                                             "variant always is)"})
    ensemble: str = field(default="max-confidence", metadata={"help": "rule of the protocol's numbers (both are "
                                                              "recorded)", "choices": ["max-confidence",
                                                                                      "softmax-average"]})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (code)"})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay (code)"})
    lr_step: int = field(default=30, metadata={"help": "×0.1 every this many epochs (paper)"})
    clip_grad: float = field(default=20.0, metadata={"help": "gradient-norm clip (code --gd 20)"})
    val_fraction: float = field(default=0.0, metadata={"help": "0: train on the whole source train list and select "
                                                       "on the held-out source list (the dg-tsn/dg-trn protocol); "
                                                       "> 0: the paper's split, this part of the train list selects "
                                                       "(paper: 0.3)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the stratified source split (--val-fraction > 0)"})


ROLES = ("global", "local", "cross")                    # the three uses of the attention block
ADA_LEVELS = {"pyramid": ("II", "III"), "level2": ("II",), "level3": ("III",), "last-hidden": ("hidden",)}
RULE_TAGS = {"max-confidence": "maxconf", "softmax-average": "softavg"}


# ---- method: APN (Yao et al.) ----
# == the attention block (§4.1; the code's AttModel) ==

class LayerNorm(nn.Module):
    """The code's layer norm: gain·(x − mean)/(std + 1e-8) + bias with the unbiased std."""

    def __init__(self, dim: int):
        super().__init__()
        self.gain, self.bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.gain * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-8) + self.bias


class MultiHeadAttention(nn.Module):
    """Q, K, V = ReLU(Linear(·)); scaled dot product per head; no output projection; residual + raw queries."""

    def __init__(self, dim: int, *, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = LayerNorm(dim)

    def forward(self, queries, keys, causal: bool = False):
        (b, lq, dim), lk, h = queries.shape, keys.shape[1], self.heads
        q = F.relu(self.query(queries)).view(b, lq, h, -1).transpose(1, 2)        # (B, h, Lq, d/h)
        k = F.relu(self.key(keys)).view(b, lk, h, -1).transpose(1, 2)             # (B, h, Lk, d/h)
        v = F.relu(self.value(keys)).view(b, lk, h, -1).transpose(1, 2)           # (B, h, Lk, d/h)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])                 # (B, h, Lq, Lk)
        if causal:                                                                # position i sees keys 0..i only
            future = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = self.dropout(scores.softmax(-1))
        out = (weights @ v).transpose(1, 2).reshape(b, lq, dim)                   # (B, Lq, d), heads concatenated
        return self.norm(out + queries)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        self.norm = LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.net(x))


class AttentionBlock(nn.Module):
    """Attention-Block(Query, Key) = the code's AttModel(x=Key, y=Query): (B, Lq, d), (B, Lk, d) -> (B, Lq, d).
    Output position i depends on Query[:i+1] (causal decoder) and on all of Key."""

    def __init__(self, dim: int, *, heads: int, dropout: float):
        super().__init__()
        self.encoder_attention = MultiHeadAttention(dim, heads=heads, dropout=dropout)
        self.encoder_ffn = FeedForward(dim)
        self.decoder_attention = MultiHeadAttention(dim, heads=heads, dropout=dropout)
        self.cross_attention = MultiHeadAttention(dim, heads=heads, dropout=dropout)
        self.decoder_ffn, self.dropout = FeedForward(dim), nn.Dropout(dropout)

    def forward(self, query, key):
        memory = self.encoder_ffn(self.encoder_attention(key, key))               # (B, Lk, d)
        out = self.decoder_attention(query, query, causal=True)                   # (B, Lq, d)
        out = self.cross_attention(out, memory)                                   # (B, Lq, d)
        return self.dropout(self.decoder_ffn(out))


# == relations: which frames form the local features of level I ==

def relation_windows(num_segments: int, kind: str) -> list:
    """Every frame subset of each scale m = M−1 … 2: all ordered subsets (code) or consecutive windows (paper).
    Returns a list of (W_m, m) long tensors; M = 5: W = 5, 10, 10 (combinations) or 2, 3, 4 (consecutive)."""
    out = []
    for m in range(num_segments - 1, 1, -1):
        if kind == "consecutive":
            rows = [list(range(s, s + m)) for s in range(num_segments - m + 1)]
        else:
            rows = [list(c) for c in itertools.combinations(range(num_segments), m)]
        out.append(torch.tensor(rows))
    return out


def sample_windows(windows: list, generator) -> list:
    """One subset per scale, shared by the whole batch of a forward. Each (1, m)."""
    return [w[torch.randint(len(w), (1,), generator=generator)] for w in windows]


def relation_sampler(windows: list, draw: str, generator, training: bool):
    """The relation subsets of the next forward, as a function called once per forward.
    draw "forward" (code): a new random subset per scale at every call, in training and at test.
    draw "batch" (ours): in training, call once per batch and reuse the returned sampler for every forward of that
    batch (R_0, the ascent, the updates); at test, every subset of each scale (the forward averages R^II_m over
    them: the training sampler's expectation, deterministic)."""
    if draw == "forward":
        return lambda: sample_windows(windows, generator)
    fixed = sample_windows(windows, generator) if training else windows
    return lambda: fixed


# == the relational feature pyramid and the classifier (Fig. 2) ==

class APN(nn.Module):
    def __init__(self, in_dim: int, *, hidden_dim: int, num_segments: int, num_classes: int, heads: int,
                 frame_dropout: float, attention_dropout: float, shared_block: bool):
        super().__init__()
        self.frame_dropout = nn.Dropout(frame_dropout)
        self.frame_fc = nn.Linear(in_dim, hidden_dim)
        nn.init.normal_(self.frame_fc.weight, 0.0, 1e-3)                           # code: new_fc ~ N(0, 0.001)
        nn.init.zeros_(self.frame_fc.bias)
        self.blocks = nn.ModuleList([AttentionBlock(hidden_dim, heads=heads, dropout=attention_dropout)
                                     for _ in range(1 if shared_block else len(ROLES))])
        self.head = nn.Linear(num_segments * hidden_dim, num_classes)

    def block(self, role: str) -> AttentionBlock:
        return self.blocks[0] if len(self.blocks) == 1 else self.blocks[ROLES.index(role)]

    def encode(self, x):
        return self.frame_fc(self.frame_dropout(x))                               # (B, M, d), no activation

    def forward(self, x, windows: list) -> dict:
        """x (B, M, D); windows: per scale a (W, m) tensor (W = 1 in training, all windows at test). Returns the
        pyramid {"global": R^I_G, "II": R^II, "III": R^III}, each (B, M, d)."""
        f = self.encode(x)                                                        # F_M: (B, M, d)
        r_global = self.block("global")(f, f)                                     # R^I_G = AB(F_M, F_M)
        b, m_total, d = r_global.shape
        r2 = torch.zeros_like(r_global)
        for win in windows:                                                       # M−2 scales, batched over windows
            w = win.shape[0]
            f_m = f[:, win.to(f.device)].flatten(0, 1)                            # F_m: (B·W, m, d)
            r_local = self.block("local")(f_m, f_m)                               # R^I_m = AB(F_m, F_m): (B·W, m, d)
            query = r_global.repeat_interleave(w, 0)                              # (B·W, M, d)
            r_cross = self.block("cross")(query, r_local)                         # Eq. (6): (B·W, M, d)
            r2 = r2 + r_cross.view(b, w, m_total, d).mean(1)                      # Eq. (7); mean over windows
        return {"global": r_global, "II": r2, "III": r2 + r_global}               # R^III = R^II + R^I_G

    def classify(self, r):
        return self.head(F.relu(r.flatten(1)))                                    # h: (B, M·d) -> (B, C)


# == losses and the ascent (§3, §4.3) ==

def ada_features(pyramid: dict, level: str):
    """(input of h, feature of the transport cost) for an ADA level; "hidden" = image ADA's last hidden layer,
    the head's input ReLU(R^III)."""
    if level == "hidden":
        return pyramid["III"], F.relu(pyramid["III"])
    return pyramid[level], pyramid[level]


def transport_cost(r, r0):
    return F.mse_loss(r, r0)                                                      # Eq. (2) as §4.3's mean squared loss


def ada_objective(model, pyramid: dict, pyramid0: dict, y, gamma: float, level: str):
    """Eq. (8) (level "II") or Eq. (9) (level "III"): ℓ(h(R), y_0) − γ·c(R, R_0), maximised over the input."""
    r, z = ada_features(pyramid, level)
    z0 = ada_features(pyramid0, level)[1]
    return F.cross_entropy(model.classify(r), y) - gamma * transport_cost(z, z0)       # Eqs. (8-9)


def adversarial_examples(model, x0, y, relations, *, gamma: float, levels: tuple, steps: int, eta: float,
                         train_mode: bool, recompute_reference: bool = False, relative_step: float = 0.0):
    """Tmax ascent steps (Eq. 5) from X_0, one chain per level, one forward per chain and step (Alg. 1 lines 6-12).
    R_0 is computed once, before the first step (Alg. 1 line 4), or before every step (the code's loop,
    recompute_reference=True). `relations()` gives each forward its relation subsets (see relation_sampler).
    θ's gradients are left alone. (B, M, D) -> (L, B, M, D), L = len(levels)."""
    was_training = model.training
    model.train(train_mode)
    chains = [x0.clone() for _ in levels]                                         # X^II, X^III ← X (line 6)
    for step in range(steps):
        if step == 0 or recompute_reference:
            with torch.no_grad():
                pyramid0 = model(x0, relations())                                 # R^II_0, R^III_0
        for i, level in enumerate(levels):
            x = chains[i].requires_grad_(True)
            objective = ada_objective(model, model(x, relations()), pyramid0, y, gamma, level)   # Eq. (8) or (9)
            grad, = torch.autograd.grad(objective, x)                             # (B, M, D)
            if relative_step > 0:                                                 # --ascent-step normalized (ours)
                scale = x0.flatten(1).norm(dim=1) / grad.flatten(1).norm(dim=1).clamp_min(1e-30)   # (B,)
                grad = relative_step * scale[:, None, None] * grad
            else:
                grad = eta * grad
            chains[i] = (x + grad).detach()                                       # Eq. (5): ascent
    model.train(was_training)
    return torch.stack(chains)                                                    # (L, B, M, D)


def class_loss(model, x, y, windows: list, level: str = "III"):
    r, _ = ada_features(model(x, windows), level)
    return F.cross_entropy(model.classify(r), y)                                  # ℓ(h(R), y)


def sgd_step(model, optimizer, loss, clip: float) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.item()


def apn_step(model, optimizer, x, y, relations, gamma: float, args) -> dict:
    """One batch for one model: Alg. 1 (--ada-variant alg1) or the official code's loop (code). Returns the batch's
    statistics."""
    levels = ADA_LEVELS[args.ada_from] if args.ada else ()
    code = args.ada_variant == "code"
    stats = {}
    if not levels or not code:                                                    # Alg. 1 line 5; or plain APN
        stats["loss"] = sgd_step(model, optimizer, class_loss(model, x, y, relations()), args.clip_grad)
    if not levels:
        return stats
    x_adv = adversarial_examples(model, x, y, relations, gamma=gamma, levels=levels, steps=args.ada_steps,
                                 eta=args.eta, train_mode=args.ascent_train_mode or code,
                                 recompute_reference=code,
                                 relative_step=args.relative_step if args.ascent_step == "normalized" else 0.0)
    if code:                                 # code: ONE step on [X, X^III, X^II], CE(h(R^III)) for all of them
        batch = torch.cat([x, x_adv.flatten(0, 1)])                               # ((1+L)·B, M, D)
        stats["loss"] = sgd_step(model, optimizer, class_loss(model, batch, y.repeat(1 + len(levels)), relations()),
                                 args.clip_grad)
    else:                                    # Alg. 1 lines 13-14: one step per level, h on that level's feature
        adv = [sgd_step(model, optimizer, class_loss(model, x_l, y, relations(), level), args.clip_grad)
               for x_l, level in zip(x_adv, levels)]
        stats["adv_loss"] = sum(adv) / len(adv)
    delta = (x_adv - x).flatten(2).norm(dim=2) / x.flatten(1).norm(dim=1).clamp_min(1e-12)
    stats["perturbation"] = delta.mean().item()                                   # ‖X_adv − X‖ / ‖X‖
    return stats


def ensemble(logits, rule: str):
    """The γ-ensemble at test ("the ensemble strategy of the original ADA", §5.1; Volpi et al.'s released code trains
    one γ and has no ensemble, so the rule is a reading, not a copy). logits (N, G, C) -> (N, C):
    max-confidence takes each video's logits from the member with the highest max-softmax; softmax-average
    returns log(mean_g softmax_g)."""
    probs = logits.softmax(-1)                                                    # (N, G, C)
    if rule == "max-confidence":
        best = probs.amax(-1).argmax(1)                                           # (N,) most confident member
        return logits[torch.arange(len(logits)), best]                            # (N, C)
    return probs.mean(1).log()                                                    # (N, C)


# ---- method: protocol pieces (source-only split, evaluation of several targets) ----

def stratified_split(split, val_fraction: float, seed: int):
    """The paper's 70/30 source split, per class: round(val_fraction·n_c) videos of class c (shuffled with `seed`)
    select the model, the rest train. Returns (train, val) Splits sharing the packed features."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(split.labels)
    perm = torch.randperm(len(labels), generator=g)
    order = perm[torch.argsort(labels[perm], stable=True)]                      # by class, shuffled inside a class
    counts = torch.bincount(labels)
    first = torch.cumsum(counts, 0) - counts                                      # where each class starts in order
    rank = torch.arange(len(order)) - first[labels[order]]                        # rank of a video inside its class
    is_val = rank < torch.round(val_fraction * counts.double())[labels[order]]

    def subset(idx, tag):
        idx = idx.sort().values.numpy()
        return data.Split(f"{split.name} {tag}", split.features, split.offsets[idx], split.lengths[idx],
                          split.labels[idx], np.asarray(split.videos)[idx].tolist(), split.origin)
    pct = round(100 * val_fraction)
    return subset(order[~is_val], f"{100 - pct}% (training)"), subset(order[is_val], f"{pct}% (model selection)")


def dg_data(args):
    """The DomainPair of the first target (target_train None; source_val = the split that selects the epoch), the
    in-domain test split (the held-out source list under --val-fraction > 0, else None: it selects), and every
    target's test split."""
    targets = args.target
    if len(set(targets)) != len(targets) or args.source in targets:
        data.fail(f"--target {' '.join(targets)}: targets must differ from each other and from --source {args.source}")
    if args.val_list and len(targets) > 1:
        data.fail("--val-list names one target test list: give a single --target with it")
    synthetic = args.source in data.SYNTHETIC_DOMAINS and not (args.source_list or args.val_list)
    if synthetic:
        for t in targets:
            if t not in data.SYNTHETIC_DOMAINS:
                data.fail(f"cannot pair {args.source!r} with {t!r}: both must be synthetic (synth2-a/b/c) or both real")
        make = lambda domain, part: data.make_synthetic_split(domain, part, args.synth_seed, args.synth_dim)
        source_train, source_test = make(args.source, "train"), make(args.source, "val")
        tests = {t: make(t, "val") for t in targets}                              # target TRAIN parts never exist
        class_names = [f"class{c:02d}" for c in range(data.SYNTH_CLASSES)]
        name = f"synthetic {args.source}->{'+'.join(targets)}"
    else:
        pairs = [data.load_pair(dataclasses.replace(args, target=t), with_target_train=False) for t in targets]
        for t, p in zip(targets[1:], pairs[1:]):
            if p.class_names != pairs[0].class_names or p.source_train.origin != pairs[0].source_train.origin:
                data.fail(f"--target {t} uses other classes or another source list than {targets[0]} "
                          f"(another setting): run it separately")
        source_train, source_test, class_names = pairs[0].source_train, pairs[0].source_val, pairs[0].class_names
        tests = {t: p.target_val for t, p in zip(targets, pairs)}
        name = f"{args.source}->{'+'.join(targets)}"
    if args.val_fraction > 0:            # the paper's split: the held-out source list is an in-domain test only
        train, select = stratified_split(source_train, args.val_fraction, args.split_seed)
        if len(select) == 0 or len(train) == 0:
            data.fail(f"--val-fraction {args.val_fraction} leaves an empty training or selection part")
        in_domain = source_test
    else:                                # the dg-tsn/dg-trn protocol: everything trains, the held-out list selects
        train, select, in_domain = source_train, source_test, None
    pair = data.DomainPair(name, class_names, train, select, None, tests[targets[0]], synthetic)
    return pair, in_domain, tests


@torch.no_grad()
def member_logits(models, x, relations):
    return torch.stack([m.classify(m(x, relations())["III"]) for m in models], 1)   # (B, G, C)


def evaluate(run, models, windows, splits: dict, member_tags: list) -> tuple:
    """Top-1 of both ensemble rules and of each member on each split (eval mode, no_grad, centred frames). Every split
    starts the test relation draws from --seed, so a model's numbers do not depend on what was evaluated before.
    Returns (stats, {split: logits (N, C) of the protocol's rule})."""
    args, stats, protocol = run.args, {}, {}
    for name, split in splits.items():
        relations = relation_sampler(windows, args.relation_draw, torch.Generator().manual_seed(args.seed),
                                     training=False)
        logits = data.predict_split(lambda x: member_logits(models, x, relations).flatten(1), split,
                                    args.num_segments, run.device).view(len(split), len(models), -1)
        rules = {tag: ensemble(logits, rule) for rule, tag in RULE_TAGS.items()}
        if len(models) > 1:
            rules.update({tag: logits[:, g] for g, tag in enumerate(member_tags)})
        for tag, rule_logits in rules.items():
            report = data.accuracy_report(rule_logits, split.labels, run.data.num_classes)
            stats[f"{name}_{tag}_top1"] = report["top1"]
            if tag == RULE_TAGS[args.ensemble]:
                stats[f"{name}_top1"], stats[f"{name}_class_mean"] = report["top1"], report["class_mean"]
                protocol[name] = rule_logits
    return stats, protocol


def replay(*logits):
    """A `predict` for run.end_epoch that hands back logits evaluate() computed, in order: end_epoch predicts the
    selection split, then the first target, video by video in split order. Each split is then predicted once per
    epoch, and the protocol's numbers are the recorded ones even with random test relations."""
    rows, used = torch.cat(logits), [0]

    def predict(x):
        start, used[0] = used[0], used[0] + len(x)
        assert used[0] <= len(rows), "end_epoch asked for more videos than evaluate() predicted"
        return rows[start:used[0]]
    return predict


def select(history: list, key: str, selection_key: str) -> dict:
    """data.select_epochs' three numbers for any recorded column: last, best on the source selection part, oracle."""
    pick = lambda row, rule: {"rule": rule, "epoch": row["epoch"], "top1": row[key]}
    chosen = max(history, key=lambda r: (r[selection_key], r["epoch"]))      # ties: the latest, as data.py
    oracle = max(history, key=lambda r: (r[key], -r["epoch"]))
    return {"last": pick(history[-1], "last epoch"), "source_selected": pick(chosen, "best source-selection accuracy"),
            "oracle": pick(oracle, "best target test accuracy (oracle, for comparison with papers)")}


# ---- method: schedule and the epoch loop ----

def step_lr(lr0: float, epoch: int, every: int) -> float:
    return lr0 * 0.1 ** ((epoch - 1) // every)                                    # paper: ×0.1 every 30 epochs


def train_one_epoch(run, models, optimizers, gammas, windows, args, epoch: int) -> dict:
    split = run.data.source_train                                                 # source only: nothing else exists
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = step_lr(args.lr, epoch, args.lr_step)
    batches = torch.randperm(len(split), generator=run.generator).split(args.batch_size)
    totals = {}
    for idx in run.progress(batches):
        x = run.frames(split, idx, mode="random")                                 # (B, M, D), TSN random frames
        y = torch.as_tensor(split.labels[idx.numpy()]).to(run.device)
        relations = relation_sampler(windows, args.relation_draw, run.generator, training=True)
        for model, opt, gamma in zip(models, optimizers, gammas):                 # the G ensemble members
            model.train()
            for key, value in apn_step(model, opt, x, y, relations, gamma, args).items():
                totals[key] = totals.get(key, 0.0) + value / (len(batches) * len(models))
    return {**totals, "lr": optimizers[0].param_groups[0]["lr"]}


def resolve(args) -> list:
    """Invalid values and combinations, right after parsing (one error line each). Returns the γ values."""
    try:
        gammas = [float(g) for g in args.gammas]
    except ValueError:
        data.fail(f"--gammas must be numbers (got {' '.join(args.gammas)})")
    if any(not math.isfinite(g) or g < 0 for g in gammas) or len(set(gammas)) != len(gammas):
        data.fail(f"--gammas must be distinct, finite and >= 0 (got {' '.join(args.gammas)})")
    if args.num_segments < 3:
        data.fail(f"--num-segments must be >= 3: level I needs a local scale 2 <= m <= M−1 (got {args.num_segments})")
    if args.hidden_dim < 1 or args.heads < 1 or args.hidden_dim % args.heads:
        data.fail(f"--hidden-dim ({args.hidden_dim}) must be a positive multiple of --heads ({args.heads})")
    if args.batch_size < 1 or args.ada_steps < 0 or args.lr <= 0 or args.lr_step < 1 or args.clip_grad <= 0:
        data.fail("--batch-size >= 1, --ada-steps >= 0, --lr > 0, --lr-step >= 1 and --clip-grad > 0 are required")
    if args.ascent_step == "normalized" and args.relative_step <= 0:
        data.fail(f"--relative-step must be > 0 with --ascent-step normalized (got {args.relative_step})")
    if not 0 <= args.val_fraction < 1:
        data.fail(f"--val-fraction must be in [0, 1) (got {args.val_fraction})")
    if not (0 <= args.frame_dropout < 1 and 0 <= args.attention_dropout < 1):
        data.fail("--frame-dropout and --attention-dropout must be in [0, 1)")
    return gammas if args.ada else [0.0]                                          # no ADA: one model, γ unused


def main(argv=None) -> dict:
    args = data.parse_args(Args, argv, __doc__)
    gammas = resolve(args)
    variant = (f"ada-{args.ada_from}" + ("-code" if args.ada_variant == "code" else "")) if args.ada else "no-ada"

    # ---- run plumbing (identical in every script; see data.py) ----
    pair, in_domain, tests = dg_data(args)
    run = data.Run(args, "apn", with_target_train=False, data=pair, variant=variant)   # target_train is None
    assert run.data.target_train is None
    make = lambda: APN(pair.source_train.dim, hidden_dim=args.hidden_dim, num_segments=args.num_segments,
                       num_classes=pair.num_classes, heads=args.heads, frame_dropout=args.frame_dropout,
                       attention_dropout=args.attention_dropout, shared_block=args.shared_block)
    models = nn.ModuleList([make() for _ in gammas]).to(run.device)               # own init per member
    optimizers = [torch.optim.SGD(m.parameters(), lr=args.lr, momentum=args.momentum,
                                  weight_decay=args.weight_decay) for m in models]
    windows = relation_windows(args.num_segments, args.relations)                 # every subset of every scale
    member_tags = [f"gamma{g:g}" for g in gammas]

    # ---- method: APN (train_one_epoch above) ----
    state = {"models": models, **{f"optimizer_{i}": opt for i, opt in enumerate(optimizers)}}
    first = args.target[0]
    if args.eval_only:                                     # --eval-only --checkpoint PATH: test, no training
        run.load_trained({"models": models})
        scores, logits = evaluate(run, models, windows, {"select": pair.source_val, **tests}, member_tags)
        run.end_epoch(scores, predict=replay(logits["select"], logits[first]))
    for epoch in run.epochs(state) if not args.eval_only else []:
        stats = train_one_epoch(run, models, optimizers, gammas, windows, args, epoch)
        models.eval()
        scores, logits = evaluate(run, models, windows, {"select": pair.source_val, **tests}, member_tags)
        run.end_epoch({**stats, **scores}, predict=replay(logits["select"], logits[first]))

    if not run.history:
        data.fail(f"nothing to report: no epoch ran (--epochs {args.epochs}?)")
    # every target under every rule (selection by the same rule on the selection split); under --val-fraction > 0
    # also the final models on the held-out source list: in-domain accuracy, never used to choose anything
    rules = list(RULE_TAGS.values()) + (member_tags if len(models) > 1 else [])
    per_target = {t: {tag: select(run.history, f"{t}_{tag}_top1", f"select_{tag}_top1") for tag in rules}
                  for t in tests}
    models.eval()
    source_test = {}
    if in_domain is not None:
        scores, _ = evaluate(run, models, windows, {"source_test": in_domain}, member_tags)
        source_test = {k: v for k, v in scores.items() if k.endswith("top1")}
    protocol = RULE_TAGS[args.ensemble]
    every_target = " | every target (last / source-selected): " + ", ".join(
        f"{t} {100 * r[protocol]['last']['top1']:.2f} / {100 * r[protocol]['source_selected']['top1']:.2f}"
        for t, r in per_target.items())
    return run.finish(summary=every_target, extra={
        "targets": per_target, "ensemble_rule": args.ensemble, "gammas": gammas,
        "source_split": {"protocol": "held-out source list selects" if in_domain is None else
                         f"{round(100 * args.val_fraction)}% of the train list selects (split seed {args.split_seed})",
                         "train": len(pair.source_train), "select": len(pair.source_val),
                         "held_out_test": len(in_domain) if in_domain is not None else 0},
        "source_test_last": source_test,
        "parameters_per_model": sum(p.numel() for p in models[0].parameters())})

if __name__ == "__main__":
    main()
