"""tcon.py: co-attention and ground-truth attention on a hand-made pair, the column softmax, target-aligned
features, in-batch pairing, the warm-up switch, the losses and the GRL by hand, TRN tokens, one training step of
every ablation on both backbones, an in-process smoke run, --help and bad input."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import data
import tcon
from helpers import assert_close

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R2 = math.sqrt(2.0)



# ---- 1. co-attention on a hand-made pair (K = 3, 2-d tokens) -----------------------------------------
# source tokens (1,0), (0,1), (1,1); target tokens (1,0), (1,0), (0,1). Cosines by hand:
#   source: <s1,s2> = 0, <s1,s3> = <s2,s3> = 1/√2  ->  a^ss = (1/(2√2), 1/(2√2), 1/√2)        Eq. (1)
#   target: <t1,t2> = 1, <t1,t3> = <t2,t3> = 0     ->  a^tt = (1/2, 1/2, 0)                    Eq. (2)
#   A^st rows: s1 (1, 1, 0); s2 (0, 0, 1); s3 (1/√2, 1/√2, 1/√2)
#   A^co = a^ss_j a^tt_j' A^st_jj' -> rows (1/(4√2), 1/(4√2), 0); (0, 0, 0); (1/4, 1/4, 0)        Eq. (3)
#   row sums (1/(2√2), 0, 1/2), total (1+√2)/(2√2) -> a^s = (√2−1, 0, 2−√2)                     Eq. (4)
#   column sums (1/(4√2)+1/4) × (1, 1, 0)      -> a^t = (1/2, 1/2, 0)                          Eq. (5)
F_S = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
F_T = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
ONE = torch.tensor([0])


def test_co_attention_of_a_hand_made_pair():
    a_co, a_st, a_ss, a_tt = tcon.co_attention(F_S, F_T, ONE, ONE)
    assert_close(a_ss, [[1 / (2 * R2), 1 / (2 * R2), 1 / R2]], atol=1e-12, what="a^ss (Eq. 1)")
    assert_close(a_tt, [[0.5, 0.5, 0.0]], atol=1e-12, what="a^tt (Eq. 2)")
    assert_close(a_st, [[[1, 1, 0], [0, 0, 1], [1 / R2, 1 / R2, 1 / R2]]], atol=1e-12, what="A^st")
    want = [[[1 / (4 * R2), 1 / (4 * R2), 0], [0, 0, 0], [0.25, 0.25, 0]]]
    assert_close(a_co, want, atol=1e-12, what="A^co (Eq. 3)")
    a_s, a_t = tcon.ground_truth_attention(a_co, ONE, ONE, a_ss, a_tt)
    assert_close(a_s, [[R2 - 1, 0.0, 2 - R2]], atol=1e-12, what="a^s (Eq. 4)")
    assert_close(a_t, [[0.5, 0.5, 0.0]], atol=1e-12, what="a^t (Eq. 5)")


def test_dot_similarity_is_the_scaled_inner_product():
    # <s3, t1> = 1, <s3, s3> = 2; divided by √d = √2
    assert_close(tcon.similarity(F_S, F_T, "dot")[0, 2], [1 / R2, 1 / R2, 1 / R2], atol=1e-12, what="dot")
    # self-attention with dot: s1 -> (0 + 1)/2/√2, s3 -> (1 + 1)/2/√2
    assert_close(tcon.self_attention(F_S, "dot"), [[1 / (2 * R2), 1 / (2 * R2), 1 / R2]], atol=1e-12, what="dot a^ss")


def test_ground_truth_attention_averages_pairs_and_falls_back_for_unpaired_sources():
    # source 0 is paired with targets 0 and 1; source 1 with nobody
    a_co = torch.tensor([[[1.0, 0.0], [0.0, 0.0]],           # pair (0, 0): row sums (1, 0), column sums (1, 0)
                         [[0.0, 1.0], [0.0, 3.0]]], dtype=torch.float64)   # pair (0, 1): rows (1, 3), cols (0, 4)
    src, tgt = torch.tensor([0, 0]), torch.tensor([0, 1])
    a_ss = torch.tensor([[0.5, 0.5], [0.2, 0.6]], dtype=torch.float64)
    a_tt = torch.zeros(2, 2, dtype=torch.float64)
    a_s, a_t = tcon.ground_truth_attention(a_co, src, tgt, a_ss, a_tt)
    assert_close(a_s, [[0.4, 0.6], [0.25, 0.75]], atol=1e-12, what="a^s: mean (1, 1.5) -> (0.4, 0.6); fallback")
    assert_close(a_t, [[1.0, 0.0], [0.0, 1.0]], atol=1e-12, what="a^t")
    zero = tcon.l1_normalise(torch.zeros(1, 4))
    assert_close(zero, [[0.25] * 4], atol=0, what="all-zero attention -> uniform")


# ---- 2. Eq. (9): column softmax and target-aligned features ------------------------------------------

@pytest.mark.parametrize("pairs, k", [(1, 2), (3, 5), (7, 8), (2, 10)])
def test_column_softmax_columns_sum_to_one(pairs, k):
    g = torch.Generator().manual_seed(k)
    a_co = torch.rand(pairs, k, k, generator=g, dtype=torch.float64) * 0.1
    w = tcon.alignment_weights(a_co, tau=0.1)
    assert (w >= 0).all()
    assert_close(w.sum(1), torch.ones(pairs, k, dtype=torch.float64), atol=1e-12, what="columns sum to 1")
    # the rescale makes it independent of the overall level of A^co
    assert_close(tcon.alignment_weights(a_co * 7 + 3, tau=0.1), w, atol=1e-12, what="scale/shift invariance")


def test_column_softmax_by_hand():
    a_co = torch.tensor([[[0.0, 0.02], [0.02, 0.01]]], dtype=torch.float64)   # range [0, 0.02] -> [[0, 1], [1, .5]]
    w = tcon.alignment_weights(a_co, tau=0.1)
    e10 = math.exp(10.0)
    assert_close(w[0, :, 0], [1 / (1 + e10), e10 / (1 + e10)], atol=1e-12, what="column 0: softmax((0, 1)/0.1)")
    assert_close(w[0, :, 1], [1 / (1 + math.exp(-5)), 1 / (1 + math.exp(5))], atol=1e-12, what="column 1")
    flat = tcon.alignment_weights(torch.full((1, 3, 3), 0.4), tau=0.1)
    assert_close(flat, torch.full((1, 3, 3), 1 / 3), atol=1e-7, what="constant A^co -> uniform columns")


def test_hard_alignment_takes_each_columns_best_source_token():
    a_co = torch.tensor([[[0.1, 0.5, 0.2], [0.3, 0.4, 0.9], [0.2, 0.6, 0.1]],
                         [[0.0, 0.0, 0.7], [0.2, 0.1, 0.0], [0.1, 0.3, 0.0]]], dtype=torch.float64)
    w = tcon.alignment_weights(a_co, tau=0.1, kind="hard")
    want = torch.zeros(2, 3, 3, dtype=torch.float64)
    want[0, [1, 2, 1], [0, 1, 2]] = 1.0                       # column maxima: rows 1, 2, 1
    want[1, [1, 2, 0], [0, 1, 2]] = 1.0                       # rows 1, 2, 0
    assert torch.equal(w, want)
    f_s = torch.randn(2, 3, 4, dtype=torch.float64)
    assert_close(tcon.target_aligned(w, f_s)[0], f_s[0, [1, 2, 1]], atol=0, what="f̂ = the chosen source tokens")
    # the τ → 0 limit of the soft weights
    assert_close(tcon.alignment_weights(a_co, tau=1e-3), w, atol=1e-12, what="soft at tiny τ")


def test_target_aligned_features_equal_source_for_one_hot_alignment():
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    eye = torch.eye(5, dtype=torch.float64).expand(4, 5, 5)
    assert_close(tcon.target_aligned(eye, f_s), f_s.detach(), atol=0, what="identity alignment")
    perm = torch.tensor([2, 0, 4, 1, 3])
    one_hot = torch.zeros(4, 5, 5, dtype=torch.float64)
    one_hot[:, perm, torch.arange(5)] = 1.0                   # target position j' takes source segment perm[j']
    assert_close(tcon.target_aligned(one_hot, f_s), f_s.detach()[:, perm], atol=0, what="permutation")
    # the source values keep their gradient: d Σ(f̂·u) / d f^s = W u
    u = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    (tcon.target_aligned(one_hot, f_s) * u).sum().backward()
    assert_close(f_s.grad, one_hot @ u, atol=1e-12, what="gradient into the source tokens")
    # a sharply diagonal A^co gives (almost) the identity, so f̂ ≈ f^s
    w = tcon.alignment_weights(torch.eye(5, dtype=torch.float64).expand(4, 5, 5), tau=0.01)
    assert_close(tcon.target_aligned(w, f_s.detach()), f_s.detach(), atol=1e-10, what="diagonal co-attention")


# ---- 3. pairing, warm-up ---------------------------------------------------------------------------

def test_pairing_picks_same_label_sources_by_prediction_similarity():
    labels_s = torch.tensor([0, 1, 1, 2, 1, 0])
    probs_s = torch.tensor([[.9, .05, .05], [.1, .8, .1], [.3, .6, .1], [.1, .1, .8], [.05, .9, .05], [.6, .3, .1]])
    probs_t = torch.tensor([[.2, .7, .1],                     # predicted class 1: sources 1, 2, 4
                            [.8, .1, .1],                     # class 0: sources 0, 5
                            [.1, .1, .8]])                    # class 2: only source 3
    src, tgt = tcon.pair_by_prediction(probs_s, labels_s, probs_t, k=2, by="target")
    assert (labels_s[src] == probs_t.argmax(1)[tgt]).all()
    pairs = sorted(zip(tgt.tolist(), src.tolist()))
    # target 0: scores vs 1, 2, 4 = .59, .49, .645 -> 4, 1; target 1: vs 0, 5 = .73, .52; target 2: only 3
    assert pairs == [(0, 1), (0, 4), (1, 0), (1, 5), (2, 3)]


def test_source_picked_pairs_take_the_most_similar_target_of_the_source_label():
    labels_s = torch.tensor([0, 1, 1, 2, 1, 0, 1])
    probs_s = torch.tensor([[.9, .05, .05], [.1, .8, .1], [.3, .6, .1], [.1, .1, .8], [.05, .9, .05], [.6, .3, .1],
                            [.05, .5, .45]])
    probs_t = torch.tensor([[.2, .7, .1], [.8, .1, .1], [.1, .1, .8], [.1, .6, .3]])   # predicted 1, 0, 2, 1
    src, tgt = tcon.pair_by_prediction(probs_s, labels_s, probs_t, k=1, by="source")
    assert (labels_s[src] == probs_t.argmax(1)[tgt]).all()
    # class-1 sources choose between targets 0 and 3: source 1 .59 vs .52, source 2 .49 vs .42,
    # source 4 .645 vs .56 -> target 0; source 6 .405 vs .44 -> target 3
    assert sorted(zip(src.tolist(), tgt.tolist())) == [(0, 1), (1, 0), (2, 0), (3, 2), (4, 0), (5, 1), (6, 3)]
    src2, tgt2 = tcon.pair_by_prediction(probs_s, labels_s, probs_t, k=2, by="source")
    # k = 2: class-1 sources take both class-1 targets, the others still only their single same-class target
    assert sorted(zip(src2.tolist(), tgt2.tolist())) == [(0, 1), (1, 0), (1, 3), (2, 0), (2, 3), (3, 2), (4, 0),
                                                         (4, 3), (5, 1), (6, 0), (6, 3)]


def test_pairing_falls_back_to_the_best_partner_when_no_label_matches():
    labels_s = torch.tensor([0, 0, 1])
    probs_s = torch.tensor([[.6, .3, .1], [.9, .05, .05], [.2, .7, .1]])
    probs_t = torch.tensor([[.1, .3, .6]])                    # class 2: not in the batch
    src, tgt = tcon.pair_by_prediction(probs_s, labels_s, probs_t, k=2, by="target")
    assert tgt.tolist() == [0] and src.tolist() == [2]       # scores .18, .125, .29 -> source 2 only
    src, tgt = tcon.pair_by_prediction(probs_s, labels_s, probs_t, k=2, by="source")
    assert sorted(src.tolist()) == [0, 1, 2] and tgt.tolist() == [0, 0, 0]   # each source keeps its best target


def test_source_picked_pairs_keep_the_source_label_mix_when_target_predictions_collapse():
    # every target predicted as class 0: target-picked pairs hold class-0 sources only (the feedback of choice 4),
    # source-picked pairs hold every source exactly once (k = 1)
    labels_s = torch.tensor([0, 1, 2, 1, 0])
    probs_s = torch.eye(3)[labels_s] * 0.7 + 0.1
    probs_t = torch.tensor([[.8, .1, .1], [.6, .3, .1], [.5, .1, .4]])
    src, _ = tcon.pair_by_prediction(probs_s, labels_s, probs_t, k=2, by="target")
    assert set(labels_s[src].tolist()) == {0}
    src, _ = tcon.pair_by_prediction(probs_s, labels_s, probs_t, k=1, by="source")
    assert sorted(src.tolist()) == [0, 1, 2, 3, 4]


def test_warmup_switches_when_attention_beats_uniform_by_the_ratio():
    w = tcon.AttentionWarmup(ratio=0.5, max_fraction=1.0)
    assert not w.update(0.4, 0.4, 0, 1000)                    # G_a at init = uniform attention: ratio 1
    # EMA_a = 0.4·0.9^n (G_a's loss drops to 0), EMA_u stays 0.4: ratio 0.9^n < 0.5 first at n = 7 (0.478)
    for step in range(1, 7):
        assert not w.update(0.0, 0.4, step, 1000), step
    assert w.update(0.0, 0.4, 7, 1000) and (w.switch_step, w.reason) == (8, "ratio")
    assert w.update(1.0, 0.1, 8, 1000), "the switch is one-way"
    state = w.state_dict()
    w2 = tcon.AttentionWarmup(ratio=0.5, max_fraction=1.0)
    w2.load_state_dict(state)
    assert (w2.on, w2.switch_step, w2.reason, w2.ema, w2.ema_uniform) == (True, 8, "ratio", state["ema"],
                                                                          state["ema_uniform"])
    # scale-free: the same sequence × 1e-3 switches at the same step (an absolute threshold would not)
    small = tcon.AttentionWarmup(ratio=0.5, max_fraction=1.0)
    steps = [small.update(a * 1e-3, 0.4e-3, i, 1000) for i, a in enumerate([0.4] + [0.0] * 7)]
    assert steps.index(True) == 7
    # the cap: G_a that never beats uniform switches after max_fraction of all steps (2 of 10)
    capped = tcon.AttentionWarmup(ratio=0.5, max_fraction=0.2)
    assert not capped.update(1.0, 1.0, 0, 10) and capped.update(1.0, 1.0, 1, 10)
    assert (capped.switch_step, capped.reason) == (2, "cap")


# ---- 4. losses, GRL, schedules, TRN tokens ---------------------------------------------------------

def test_losses_by_hand():
    # Eq. (7): K = 2, â = (1/2, 1/2), a = (1, 0): K·â = (1, 1), K·a = (2, 0) -> MSE = 1
    assert_close(tcon.attention_loss(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])), 1.0, atol=1e-7,
                 what="C_a")
    # Eq. (8): target 0 confident (softmax(10, 0) = 0.99995), target 1 not (uniform): loss_t = CE_0 / 2
    logits_s, y_s = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    logits_t = torch.tensor([[10.0, 0.0], [0.0, 0.0]])
    loss, frac = tcon.classification_loss(logits_s, y_s, logits_t, threshold=0.9)
    want = math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-10)) / 2
    assert_close(loss, want, atol=1e-6, what="C_y")
    assert frac == 0.5
    assert_close(tcon.classification_loss(logits_s, y_s)[0], math.log(1 + math.exp(-2)), atol=1e-6, what="source")
    # Eqs. (10-11) with a discriminator that always outputs 0: BCE = ln 2 per term
    zero = lambda x: torch.zeros(len(x), 1)
    assert_close(tcon.video_domain_loss(zero, torch.ones(3, 5, 4), torch.ones(6, 5, 4), 1.0), 2 * math.log(2),
                 atol=1e-7, what="C_dv")
    assert_close(tcon.segment_domain_loss(zero, torch.ones(3, 5, 4), torch.ones(6, 5, 4), 1.0), 2 * math.log(2),
                 atol=1e-7, what="C_ds")


def test_balanced_pseudo_labels_keep_at_most_ceil_bt_over_c_per_class():
    # B_t = 5, C = 2: at most ⌈5/2⌉ = 3 per predicted class. Targets 0-3 confident class 0 (confidence rising with
    # the logit), target 4 confident class 1: balanced keeps 1, 2, 3 (the 3 most confident of class 0) and 4
    logits_t = torch.tensor([[4.0, 0.0], [5.0, 0.0], [6.0, 0.0], [7.0, 0.0], [0.0, 9.0]])
    logits_s, y_s = torch.tensor([[0.0, 0.0]]), torch.tensor([0])
    loss, frac = tcon.classification_loss(logits_s, y_s, logits_t, threshold=0.9)
    assert frac == 1.0
    loss_b, frac_b = tcon.classification_loss(logits_s, y_s, logits_t, threshold=0.9, balanced=True)
    assert abs(frac_b - 0.8) < 1e-6
    want = math.log(2) + sum(math.log1p(math.exp(-z)) for z in (5.0, 6.0, 7.0, 9.0)) / 5
    assert_close(loss_b, want, atol=1e-6, what="balanced C_y")
    # a class under the cap keeps all its confident targets
    _, frac_small = tcon.classification_loss(logits_s, y_s, logits_t[2:], threshold=0.9, balanced=True)
    assert frac_small == 1.0                                  # 3 targets, cap ⌈3/2⌉ = 2: class 0 has 2, class 1 has 1


def test_segment_discriminator_labels_source_one_and_aligned_zero():
    # a discriminator returning +20 on the first feature: confident "1" for inputs with x0 = 1, "0" for x0 = −1
    disc = lambda x: 20 * x[:, :1]
    f_s, f_hat = torch.ones(2, 3, 4), -torch.ones(2, 3, 4)
    assert tcon.segment_domain_loss(disc, f_s, f_hat, 1.0) < 1e-6       # source = 1, aligned = 0: both right
    assert tcon.segment_domain_loss(disc, f_hat, f_s, 1.0) > 30          # swapped: both wrong
    assert tcon.video_domain_loss(disc, f_s, f_hat, 1.0) < 1e-6          # target = 1, aligned = 0


def test_grl_is_identity_forward_and_minus_lambda_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = tcon.grad_reverse(x, 0.3)
    assert torch.equal(y, x)
    upstream = torch.randn(3, 4)
    y.backward(upstream)
    assert_close(x.grad, -0.3 * upstream, atol=1e-7, what="GRL backward")
    assert tcon.dann_ramp(0.0) == 0.0 and abs(tcon.dann_ramp(1.0) - 2 / (1 + math.exp(-10)) + 1) < 1e-12
    assert tcon.step_lr(3e-4, 30, 30) == 3e-4 and abs(tcon.step_lr(3e-4, 31, 30) - 3e-5) < 1e-15
    # λ_d: the ramp scaled to its final value (0.1 · (2/(1+e^-5) − 1) = 0.0986614 at p = 0.5), or constant
    assert abs(tcon.adversarial_weight(0.5, 0.1, True) - 0.1 * (2 / (1 + math.exp(-5)) - 1)) < 1e-12
    assert tcon.adversarial_weight(0.0, 0.1, True) == 0.0 and tcon.adversarial_weight(0.0, 0.1, False) == 0.1
    # lr annealing: lr0 at p = 0, lr0 / 11^0.75 = lr0 · 0.165560 at p = 1
    assert tcon.annealed_lr(3e-4, 0.0) == 3e-4
    assert abs(tcon.annealed_lr(3e-4, 1.0) - 3e-4 * 0.1655600) < 1e-10


def test_relation_tuples_and_trn_tokens():
    got = [t.tolist() for t in tcon.relation_tuples(5)]
    assert got == [[[0, 1, 2, 3, 4]], [[0, 1, 2, 3], [0, 1, 3, 4], [1, 2, 3, 4]],
                   [[0, 1, 2], [0, 2, 4], [1, 2, 4]], [[0, 1], [1, 2], [2, 3]]]
    assert [len(t) for t in tcon.relation_tuples(3)] == [1, 3]
    g_f = tcon.FeatureExtractor(6, num_segments=5, backbone="trn")
    x = torch.randn(2, 5, 6)
    tokens = g_f(x)
    assert tokens.shape == (2, 10, tcon.RELATION_DIM) and (tokens >= 0).all()
    # token 5 is the second 3-frame tuple (0, 2, 4), fused by the 3-frame layer (scale index 2)
    frames = torch.relu(g_f.frame(x))
    want = torch.relu(g_f.fuse[2](frames[:, [0, 2, 4]].flatten(1)))
    assert_close(tokens[:, 5], want, atol=1e-6, what="relation token (0, 2, 4)")


# ---- 5. one training step of every variant ---------------------------------------------------------

VARIANTS = [[], ["--no-segment-discriminator"], ["--no-aligned"], ["--no-co-attention"],
            ["--no-attentive-classifier"], ["--similarity", "dot"], ["--pairing", "target"], ["--alignment", "hard"],
            ["--pseudo-labels", "balanced"]]


@pytest.mark.parametrize("backbone", ["tsn", "trn"])
@pytest.mark.parametrize("flags", VARIANTS, ids=lambda f: " ".join(f) or "full")
def test_each_variant_trains_one_step(backbone, flags):
    torch.manual_seed(0)
    args = data.parse_args(tcon.Args, ["--backbone", backbone] + flags)
    model = tcon.build_model(args, 8, 4)
    x_s, y_s, x_t = torch.randn(6, 5, 8), torch.tensor([0, 1, 2, 3, 0, 1]), torch.randn(4, 5, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for attention_on in (False, True):
        loss, stats, (src, tgt) = tcon.tcon_step(model, args, x_s, y_s, x_t, 0.5, attention_on, attention_on)
        assert torch.isfinite(loss) and all(math.isfinite(v) for v in stats.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    picker = tgt if "target" in flags else src                # every picking video has a partner
    assert sorted(set(picker.tolist())) == list(range(4 if "target" in flags else 6))
    assert (stats["loss_ds"] == 0) == ("--no-segment-discriminator" in flags or "--no-aligned" in flags)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("video_discriminator") for k in changed)
    assert any(k.startswith("segment_discriminator") for k in changed) == (stats["loss_ds"] > 0)
    assert any(k.startswith("attention") for k in changed) == ("--no-attentive-classifier" not in flags)
    model.eval()
    with torch.no_grad():
        logits = tcon.predict(model, x_t, use_attention=True)
    assert logits.shape == (4, 4) and torch.isfinite(logits).all()


# ---- 6. whole runs ---------------------------------------------------------------------------------

def test_smoke_run_writes_outputs_and_learns(tmp_path):
    out = str(tmp_path / "run")
    m = tcon.main(["--synth-dim", "16", "--epochs", "2", "--out", out])
    for name in ("metrics.json", "epochs.csv", "checkpoint.pt"):
        assert os.path.isfile(os.path.join(out, name)), name
    stored = json.load(open(os.path.join(out, "metrics.json")))
    assert stored["complete"] and stored["synthetic"] and stored["script"] == "tcon"
    assert stored["args"]["epochs"] == 2 and stored["args"]["backbone"] == "tsn" and stored["args"]["tau"] == 0.1
    for key in ("last", "source_selected", "oracle"):
        assert 0 <= m["final"][key]["top1"] <= 1 and math.isfinite(m["final"][key]["top1"])
    for row in m["epochs"]:
        for key in ("loss_y", "loss_a", "loss_dv", "loss_ds", "source_val_top1", "target_top1", "lambda_d"):
            assert math.isfinite(row[key]), key
        assert "pair_label_agreement" not in row and 0 <= row["lambda_d"] < 1
    # 2 epochs × 12 steps: the 20 % cap switches to G_a by step 5 at the latest
    assert stored["attention_switch_step"] is not None and stored["attention_switch_step"] <= 5
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    assert ckpt["state"]["warmup"]["on"] and "model" in ckpt["state"]
    # fixed seed: the classifier learns the source (chance = 1/12 ≈ 0.083; 0.26 after 2 epochs at 16-d) and is
    # above chance on the target (0.11; the target needs more than 2 epochs at 16-d)
    assert max(r["source_val_top1"] for r in m["epochs"]) > 0.2
    assert m["final"]["oracle"]["top1"] > 0.1
    assert stored["args"]["alignment"] == "hard" and stored["args"]["pseudo_labels"] == "off"
    assert stored["attention_switch_reason"] in ("ratio", "cap")


def test_schedule_flags_reach_the_training_loop(tmp_path):
    # 1 epoch = 12 steps (1438 source videos / 128): constant λ_d = 0.2 on every step, and the lr of the last step
    # is the annealed lr0 / (1 + 10 · 11/12)^0.75; pseudo-labels from p = 0 on, but never before the warm-up ends
    m = tcon.main(["--synth-dim", "16", "--epochs", "1", "--lr-schedule", "anneal", "--no-lambda-ramp",
                   "--lambda-d", "0.2", "--pseudo-labels", "threshold", "--pseudo-threshold", "0.05",
                   "--warmup-max-fraction", "0.5", "--out", str(tmp_path)])
    row = m["epochs"][0]
    assert_close(row["lambda_d"], 0.2, atol=1e-12, what="constant λ_d")
    assert_close(row["lr"], 3e-4 / (1 + 10 * 11 / 12) ** 0.75, atol=1e-15, what="annealed lr")
    # the cap switches after step 6 of 12 (before it the 16-d G_a cannot halve C_a): steps 7-12 pseudo-label
    # every target (threshold 0.05 < 1/12), steps 1-6 none -> mean fraction 0.5
    assert m["attention_switch_step"] == 6 and m["attention_switch_reason"] == "cap"
    assert_close(row["pseudo_frac"], 0.5, atol=1e-6, what="pseudo-labels only after the warm-up")


def test_source_only_run(tmp_path):
    m = tcon.main(["--synth-dim", "16", "--epochs", "1", "--source-only", "--out", str(tmp_path)])
    assert set(m["epochs"][0]) >= {"loss_y", "source_val_top1"} and "loss_dv" not in m["epochs"][0]
    assert m["attention_switch_step"] is None


def test_help_lists_shared_and_method_flags():
    out = subprocess.run([sys.executable, "tcon.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--source", "--target", "--data-root", "--epochs", "--batch-size", "--lr", "--seed", "--device",
                 "--out", "--resume", "--backbone", "--tau", "--no-segment-discriminator", "--no-aligned",
                 "--no-co-attention", "--no-attentive-classifier", "--source-only"):
        assert flag in out.stdout, flag


@pytest.mark.parametrize("argv, words", [
    (["--tau", "0"], "--tau"),
    (["--backbone", "trn", "--num-segments", "2"], "--num-segments"),
    (["--source-only", "--no-aligned"], "--source-only"),
    (["--pseudo-start", "2"], "--pseudo-start"),
    (["--source", "ucf", "--target", "hmdb", "--data-root", "/nonexistent/vidda"], "data root not found"),
])
def test_bad_input_is_one_error_line(argv, words):
    out = subprocess.run([sys.executable, "tcon.py", *argv], cwd=REPO, capture_output=True, text=True)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error:") and words in lines[0] and "Traceback" not in out.stderr
