"""Tests of ta3n.py: hand-computed equations, the official tuple table and presets, every ablation flag for one
step, Triton vs PyTorch training, an in-process smoke run and the CLI's errors.

Tolerances: fp32 equation checks 1e-6 (a handful of terms); the Triton interpreter vs the PyTorch reference after
two SGD steps 1e-5 absolute on parameters of size ~1e-2..1 (both compute in fp32; only summation order differs).
"""
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import data
import ta3n
from kernels import relation_attention
from helpers import assert_close

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN2 = math.log(2)
GRL = {"frame": 0.5, "relation": 0.75, "video": 0.75}
TINY_WIDTHS = {"frame_dim": 24, "relation_dim": 12}       # keeps the interpreter fast


def args_for(*flags):
    return ta3n.resolve(data.parse_args(ta3n.Args, ["--synth-dim", "16", *flags]))



# ---- equations by hand ----

@pytest.mark.parametrize("lambd", [0.0, 0.5, 0.75, 1.0])
def test_grl_forward_identity_backward_reversed(lambd):
    x = torch.randn(3, 7, requires_grad=True)
    y = ta3n.grad_reverse(x, lambd)
    assert torch.equal(y, x)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    assert_close(x.grad, -lambd * upstream, 1e-7, what="GRL backward")


def test_domain_attention_uniform_and_one_hot():
    w = ta3n.domain_attention(torch.tensor([[0.0, 0.0], [3.0, 3.0], [40.0, -40.0], [-40.0, 40.0]]))
    assert_close(w, [1 - LN2, 1 - LN2, 1.0, 1.0], 1e-6, what="w = 1 - H(d)")
    assert abs((1 + w[0]).item() - 1.3069) < 1e-4                                # the weight (1 + w) ≈ 1.307


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("bias, weight", [((0.0, 0.0), 2 - LN2), ((40.0, -40.0), 2.0)])
def test_kernel_attention_weights_on_crafted_discriminators(backend, bias, weight):
    """The op the model trains with: a discriminator whose last layer is 0 with bias b predicts softmax(b) for
    every video, so w = 1 - H(softmax(b)) and h = (1 + w) Σ_n R_n exactly (Eq. 7-8)."""
    torch.manual_seed(0)
    frames = torch.rand(3, 5, 8)
    tuples = ta3n.relation_tuples(5)
    rel = [(torch.randn(6, t.shape[1] * 8) * 0.3, torch.randn(6) * 0.1) for t in tuples]
    disc = [(torch.randn(4, 6), torch.randn(4), torch.zeros(2, 4), torch.tensor(bias)) for _ in tuples]
    h, w, R, d = relation_attention(frames, tuples, rel, disc, 0.75, use_attention=True, backend=backend)
    assert_close(w, torch.full((3, 4), weight - 1), 1e-6, what="w")
    assert_close(h, weight * R.sum(1), 1e-5, what="h = (1 + w) ΣR")
    assert_close(d, torch.tensor(bias).expand(3, 4, 2), 1e-6, what="d")


def test_entropy_and_attentive_entropy_loss_by_hand():
    # video 1: ŷ uniform over 3 classes, d̂ uniform; video 2: ŷ = (1/4, 3/4), d̂ = (1/10, 9/10)
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(3), -1e9]], dtype=torch.float64,  # video 2, class 3: p = 0
                          requires_grad=True)
    d = torch.tensor([[0.0, 0.0], [0.0, math.log(9)]], dtype=torch.float64, requires_grad=True)
    h_y = [math.log(3), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    h_d = [LN2, -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))]
    assert_close(ta3n.entropy(logits), h_y, 1e-9, what="H(y)")
    expected = ((1 + h_d[0]) * h_y[0] + (1 + h_d[1]) * h_y[1]) / 2                # Eq. (9), mean over S∪T
    loss = ta3n.attentive_entropy_loss(logits, d)
    assert abs(loss.item() - expected) < 1e-9
    # not detached (official): the discriminator output gets ∂L/∂d = ½ H(y_i) ∂H(d_i)/∂d; uniform d: 0 gradient
    loss.backward()
    p = 0.1
    dh_dd1 = p * (1 - p) * math.log((1 - p) / p) * torch.tensor([1.0, -1.0], dtype=torch.float64)      # ∂H/∂(d_0, d_1) at p0 = 0.1
    assert_close(d.grad, torch.stack([torch.zeros(2, dtype=torch.float64), 0.5 * h_y[1] * dh_dd1]), 1e-9, what="∂L_ae/∂d")
    d.grad = None
    ta3n.attentive_entropy_loss(logits, d, detach=True).backward()
    assert d.grad is None or not d.grad.any()


def test_domain_loss_is_the_row_mean_of_both_domains():
    # source row label 0, target row label 1; logits (ln 3, 0): p0 = 3/4 -> CE ln(4/3) and ln 4
    d_s = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]])                       # (1 video, 2 scales, 2)
    d_t = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]])
    expected = (math.log(4 / 3) + LN2 + math.log(4) + LN2) / 4                    # Eq. (6): 1/(K−1) Σ_n, mean over S∪T
    assert abs(ta3n.domain_loss(d_s, d_t).item() - expected) < 1e-6


def test_gaussian_mmd_by_hand():
    a, b = torch.tensor([[0.0]]), torch.tensor([[1.0]])                          # median d² = 1 -> σ² = 1
    assert abs(ta3n.gaussian_mmd2(a, b) - (2 - 2 * math.exp(-0.5))) < 1e-9
    x = torch.randn(40, 3)
    assert abs(ta3n.gaussian_mmd2(x, x.clone())) < 1e-12
    assert ta3n.gaussian_mmd2(x, x + 3) > ta3n.gaussian_mmd2(x, x + 0.3) > 0


def test_official_multi_kernel_mmd_by_hand():
    e = math.exp
    # one point each at 0 and 1: mean squared distance b = 1, bandwidths b·2^(i−2) = 1/4, 1/2, 1, 2, 4;
    # k(x, x) = 5 (five Gaussians summed), k(0, 1) = Σ exp(−1/b_i)
    a, b = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    k01 = e(-4) + e(-2) + e(-1) + e(-0.5) + e(-0.25)
    assert abs(ta3n.multi_kernel_mmd2(a, b) - (5 + 5 - 2 * k01)) < 1e-12
    # the official 2-kernel form (logits level): bandwidths b/2, b
    assert abs(ta3n.multi_kernel_mmd2(a, b, kernels=2) - (2 + 2 - 2 * (e(-2) + e(-1)))) < 1e-12
    # unequal sizes, 2-d: source {(0,0), (0,0)}, target {(2,0)}: squared distances 0, 4, 4 -> b = 16/6 = 8/3;
    # bandwidths 2/3·2^i; source-source and target-target kernels 5, source-target Σ exp(−4/b_i)
    a, b = torch.zeros(2, 2), torch.tensor([[2.0, 0.0]])
    k_st = sum(e(-4 / (2 / 3 * 2 ** i)) for i in range(5))
    assert abs(ta3n.multi_kernel_mmd2(a, b) - (5 + 5 - 2 * k_st)) < 1e-12


@pytest.mark.parametrize("n, dim", [(3, 1), (7, 4), (16, 9)])
def test_multi_kernel_mmd_equals_the_official_version_2_formula_for_equal_sizes(n, dim):
    """Official loss.py:46-83, written out with loops: K = Σ_i exp(−D/b_i) over the pooled sample, then
    mean(K_ss + K_tt − K_st − K_ts) (ver 2), which needs equal sizes."""
    g = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, dim, generator=g, dtype=torch.float64), torch.randn(n, dim, generator=g,
                                                                           dtype=torch.float64) + 0.7
    z = torch.cat([x, y])
    d = [[float(((z[i] - z[j]) ** 2).sum()) for j in range(2 * n)] for i in range(2 * n)]
    b = sum(map(sum, d)) / ((2 * n) ** 2 - 2 * n) / 2 ** 2
    k = [[sum(math.exp(-d[i][j] / (b * 2 ** m)) for m in range(5)) for j in range(2 * n)] for i in range(2 * n)]
    want = sum(k[i][j] + k[n + i][n + j] - k[i][n + j] - k[n + i][j] for i in range(n) for j in range(n)) / n ** 2
    assert abs(ta3n.multi_kernel_mmd2(x, y) - want) < 1e-10
    assert abs(ta3n.multi_kernel_mmd2(x, x.clone())) < 1e-12
    assert ta3n.multi_kernel_mmd2(x, x + 3) > ta3n.multi_kernel_mmd2(x, x + 0.3) > 0


@pytest.mark.parametrize("mmd", ["official", "median"])
def test_domain_discrepancy_uses_the_chosen_mmd_on_eval_features(mmd):
    args = args_for("--mmd", mmd)
    torch.manual_seed(0)
    model, _ = ta3n.build(args, 16, 12, **TINY_WIDTHS)
    split = lambda n, shift: data.Split("tiny", torch.rand(n * 6, 16) + shift, np.arange(n) * 6, np.full(n, 6),
                                        np.zeros(n, dtype=np.int64), list(range(n)), "generated")
    source, target = split(9, 0.0), split(5, 0.4)
    run = types.SimpleNamespace(args=args, device=torch.device("cpu"),
                                data=types.SimpleNamespace(source_val=source, target_val=target))
    out = ta3n.domain_discrepancy(model, run, GRL)
    model.eval()
    with torch.no_grad():
        h = [model(data.gather_frames(s, torch.arange(len(s)), torch.as_tensor(
            data.sample_indices(s.lengths, 5, "center"))), GRL, domains=False)["feature"] for s in (source, target)]
    want = (ta3n.multi_kernel_mmd2 if mmd == "official" else ta3n.gaussian_mmd2)(*h)
    assert abs(out["mmd2"] - want) < 1e-6 and out["mmd_kernel"].startswith("official" if mmd == "official" else "gauss")
    disc = model.video_discriminator
    assert abs(out["domain_loss"] - ta3n.domain_loss(disc(h[0]), disc(h[1])).item()) < 1e-6


def test_lr_schedule_matches_the_official_log():
    # official lr, set after every step (main.py:619-621, 800-802): 0.0242 after the first step, 0.0207 at the
    # start of epoch 2, 0.00487 after the last step (a run of the official code logs lr 0.03000, 0.02071, ...)
    lr = lambda epoch, step: ta3n.annealed_lr(0.03, ta3n.official_progress(epoch, step, 12, 30))
    # (the reference's values are rounded to 3 significant digits; epoch 10 and 20 start at 0.0100 and 0.0065)
    assert [round(lr(1, 0), 4), round(lr(1, 11), 4), round(lr(9, 11), 4), round(lr(19, 11), 4)] == \
        [0.0242, 0.0207, 0.0100, 0.0065]
    assert round(lr(30, 11), 5) == 0.00487


def test_negative_beta_is_the_official_dann_ramp_once_per_epoch():
    # 2/(1 + exp(−10p)) − 1 = tanh(5p); p = epoch/epochs at the epoch's first step (main.py:350-352)
    assert ta3n.dann_ramp(0.0) == 0.0 and abs(ta3n.dann_ramp(0.5) - math.tanh(2.5)) < 1e-12
    args = args_for("--epochs", "3", "--beta-video", "-1", "--beta-frame", "-0.2")
    betas = [ta3n.scheduled_betas(args, epoch) for epoch in (1, 2, 3)]
    assert [round(b["video"], 3) for b in betas] == [0.931, 0.997, 1.0]          # the official run's values
    for epoch, b in zip((1, 2, 3), betas):
        assert abs(b["video"] - math.tanh(5 * epoch / 3)) < 1e-12 and b["frame"] == b["video"]
        assert b["relation"] == 0.75                                             # non-negative: unchanged


@pytest.mark.parametrize("lambda_as", ["grl", "loss-weight"])
def test_scheduled_betas_reach_the_grls_or_the_loss_weights(lambda_as, monkeypatch):
    args = args_for("--beta-video", "-1", "--beta-relation", "-1", "--lambda-as", lambda_as)
    betas = ta3n.scheduled_betas(args, 2)                                        # p = 2/30
    assert abs(betas["video"] - math.tanh(1 / 3)) < 1e-12
    seen, grad_reverse, relation_attention = {}, ta3n.grad_reverse, ta3n.relation_attention

    def recording_grad_reverse(x, lambd):                                        # keyed by width: frame or video
        seen[x.shape[-1]] = lambd
        return grad_reverse(x, lambd)

    def recording_relation_attention(*a, **k):                                   # a[4] is the GRL scale
        seen["relation"] = a[4]
        return relation_attention(*a, **k)

    monkeypatch.setattr(ta3n, "grad_reverse", recording_grad_reverse)
    monkeypatch.setattr(ta3n, "relation_attention", recording_relation_attention)
    torch.manual_seed(0)
    model, opt = ta3n.build(args, 16, 12, **TINY_WIDTHS)
    x_s, x_t, y_s = torch.rand(4, 5, 16), torch.rand(3, 5, 16) + 0.5, torch.tensor([0, 1, 2, 3])
    stats = ta3n.train_step(model, opt, args, x_s, y_s, x_t, betas)
    frame_dim, video_dim = TINY_WIDTHS["frame_dim"], TINY_WIDTHS["relation_dim"]
    if lambda_as == "grl":
        assert seen == {frame_dim: 0.5, "relation": betas["relation"], video_dim: betas["video"]}
        weights = {"frame": 1.0, "relation": 1.0, "video": 1.0}
    else:
        assert seen == {frame_dim: 1.0, "relation": 1.0, video_dim: 1.0}
        weights = {"frame": 0.5, "relation": betas["relation"], "video": betas["video"]}
    want = stats["loss_y"] + sum(w * stats[f"loss_{k}"] for k, w in weights.items()) + 0.003 * stats["loss_ae"]
    assert abs(stats["loss"].item() - want.item()) < 1e-6


# ---- structure, presets, flag combinations ----

def test_tuple_table_is_the_official_one_and_all_gives_every_combination():
    model, _ = ta3n.build(args_for(), 16, 12)
    official = [[(0, 1, 2, 3, 4)], [(0, 1, 2, 3), (0, 1, 3, 4), (1, 2, 3, 4)], [(0, 1, 2), (0, 2, 4), (1, 2, 4)],
                [(0, 1), (1, 2), (2, 3)]]
    assert [[tuple(r) for r in t.tolist()] for t in model.tuples()] == official
    model, _ = ta3n.build(args_for("--relations", "all"), 16, 12)
    assert [len(t) for t in model.tuples()] == [1, 5, 10, 10]
    assert [m.in_features for m in model.relation_fuse] == [5 * 512, 4 * 512, 3 * 512, 2 * 512]


def test_official_sizes_and_inits():
    model, opt = ta3n.build(args_for(), 2048, 12)
    assert (model.spatial.in_features, model.spatial.out_features, model.classifier.in_features) == (2048, 512, 256)
    assert [m.in_features for m in model.frame_discriminator[::2]] == [512, 512]
    assert [m.in_features for m in model.video_discriminator[::2]] == [256, 256]
    assert len(model.relation_discriminators) == 4
    for layer in (model.spatial, model.classifier, model.frame_discriminator[0], model.video_discriminator[2]):
        assert abs(layer.weight.std().item() - 0.001) < 2e-4 and not layer.bias.any()
    assert model.relation_discriminators[0][0].weight.std().item() > 0.01          # PyTorch default init
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.03, 0.9, True, 1e-4)


def test_presets_and_overrides():
    a = args_for()
    assert (a.discriminators, a.attention, a.entropy_loss, a.beta_relation, a.gamma, a.kernel) == \
        (["frame", "relation", "video"], "domain", "attentive", 0.75, 0.003, "torch")
    a = args_for("--source", "hmdb", "--target", "ucf")
    assert (a.beta_relation, a.gamma) == (1.0, 0.3)
    a = args_for("--source", "hmdb", "--target", "ucf", "--gamma", "0.01")
    assert (a.beta_relation, a.gamma) == (1.0, 0.01)
    a = args_for("--variant", "ta2n")
    assert (a.discriminators, a.attention, a.entropy_loss) == (["frame", "relation", "video"], "none", "none")
    a = args_for("--variant", "source-only", "--discriminators", "video,frame")
    assert a.discriminators == ["frame", "video"] and a.attention == "none"
    assert args_for("--discriminators", "none", "--variant", "source-only").discriminators == []


def test_attention_none_drops_the_attentive_entropy_unless_asked(monkeypatch):
    """Official main.py:559 adds γ·L_ae only when attention is on; an explicit --entropy-loss attentive adds it."""
    a = args_for("--attention", "none")
    assert (a.attention, a.entropy_loss) == ("none", "none")
    assert args_for("--attention", "general").entropy_loss == "attentive"
    assert args_for("--discriminators", "frame,relation", "--attention", "none").entropy_loss == "none"  # no error
    b = args_for("--attention", "none", "--entropy-loss", "attentive")
    assert (b.attention, b.entropy_loss) == ("none", "attentive")
    x_s, x_t, y_s = torch.rand(4, 5, 16), torch.rand(3, 5, 16) + 0.5, torch.tensor([0, 1, 2, 3])
    for args in (a, b):
        torch.manual_seed(0)
        model, opt = ta3n.build(args, 16, 12, **TINY_WIDTHS)
        stats = ta3n.train_step(model, opt, args, x_s, y_s, x_t)
        domains = stats["loss_frame"] + stats["loss_relation"] + stats["loss_video"]
        extra = 0.003 * stats["loss_ae"] if args is b else 0
        assert ("loss_ae" in stats) == (args is b)
        assert abs(stats["loss"].item() - (stats["loss_y"] + domains + extra).item()) < 1e-6


@pytest.mark.parametrize("flags, message", [
    (["--discriminators", "frame,video"], "needs the relation discriminator"),
    (["--discriminators", "frame,relation"], "needs the video discriminator"),
    (["--discriminators", "frame,relation", "--attention", "none", "--entropy-loss", "attentive"], "needs the video"),
    (["--temporal", "pooling", "--discriminators", "video", "--entropy-loss", "none"], "add frame"),
    (["--temporal", "pooling"], "needs --temporal relation"),
    (["--discriminators", "frame,videos"], "unknown discriminator 'videos'"),
])
def test_invalid_combinations_fail_with_a_message(flags, message):
    with pytest.raises(SystemExit) as e:
        args_for(*flags)
    assert str(e.value).startswith("error:") and message in str(e.value)


# ---- training ----

ABLATIONS = [
    [], ["--variant", "ta2n"], ["--variant", "source-only"], ["--attention", "general"],
    ["--entropy-loss", "none"], ["--relations", "all"], ["--lambda-as", "loss-weight"], ["--detach-attention"],
    ["--discriminators", "relation", "--entropy-loss", "none"], ["--discriminators", "frame", "--attention", "none",
                                                                 "--entropy-loss", "none"],
    ["--temporal", "pooling", "--discriminators", "frame,video"],
    ["--temporal", "pooling", "--discriminators", "frame,video", "--attention", "general"],
    ["--temporal", "pooling", "--variant", "source-only"], ["--no-nesterov", "--lr-schedule", "dann"],
    ["--attention", "none"], ["--attention", "none", "--entropy-loss", "attentive"], ["--beta-frame", "-1"],
]


@pytest.mark.parametrize("flags", ABLATIONS, ids=lambda f: " ".join(f) or "default")
def test_every_ablation_builds_and_trains_one_step(flags):
    args = args_for(*flags)
    torch.manual_seed(0)
    model, opt = ta3n.build(args, 16, 12, **TINY_WIDTHS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_s, x_t, y_s = torch.randn(6, 5, 16).abs(), torch.randn(4, 5, 16).abs() + 0.5, torch.randint(0, 12, (6,))
    stats = ta3n.train_step(model, opt, args, x_s, y_s, x_t if args.discriminators else None)
    expected = {"loss", "loss_y", *[f"loss_{k}" for k in args.discriminators]}
    expected |= {"loss_ae"} if args.entropy_loss == "attentive" else set()
    assert expected <= set(stats) and all(torch.isfinite(v) for v in stats.values())
    assert not torch.equal(before["spatial.weight"], model.spatial.weight)
    if model.video_discriminator is not None:
        assert not torch.equal(before["video_discriminator.0.weight"], model.video_discriminator[0].weight)
    if args.attention == "domain":
        assert 1 - LN2 - 1e-6 <= stats["attention"].item() <= 1 + 1e-6


@pytest.mark.parametrize("detach", [False, True])
def test_class_loss_reaches_relation_discriminators_only_without_detach(detach):
    """Official models.py:351-357, 643-645 do not detach w: L_y alone gives the relation discriminators gradients."""
    args = args_for(*(["--detach-attention"] if detach else []))
    model, _ = ta3n.build(args, 16, 12, **TINY_WIDTHS)
    model.eval()
    out = model(torch.rand(4, 5, 16), GRL)
    ta3n.class_loss(out["logits"], torch.arange(4)).backward()
    grads = [p.grad for p in model.relation_discriminators.parameters()]
    assert all(g is None or not g.any() for g in grads) if detach else any(g is not None and g.any() for g in grads)


def test_pooling_domain_attention_weights_frames_with_the_frame_discriminator():
    args = args_for("--temporal", "pooling", "--discriminators", "frame,video")
    model, _ = ta3n.build(args, 16, 12, **TINY_WIDTHS)
    model.eval()
    x = torch.rand(3, 5, 16)
    out = model(x, GRL, domains=False)
    f = torch.relu(model.spatial(x))
    w = ta3n.domain_attention(model.frame_discriminator(f))                       # (3, 5)
    assert_close(out["attention"], w, 1e-6, what="w")
    assert_close(out["feature"], ((1 + w).unsqueeze(-1) * f).mean(1), 1e-6, what="h = mean (1 + w) f")


@pytest.mark.parametrize("flags, frame_calls, relation_at_eval", [
    ([], 0, True),                                                 # TemRelation + domain attention: relation only
    (["--attention", "general"], 0, False),                       # no discriminator is read at evaluation
    (["--variant", "ta2n"], 0, False),
    (["--temporal", "pooling", "--discriminators", "frame,video"], 1, False),   # frame attention needs G_sd
])
def test_evaluation_runs_only_the_discriminators_attention_reads(flags, frame_calls, relation_at_eval):
    args = args_for(*flags)
    torch.manual_seed(0)
    model, _ = ta3n.build(args, 16, 12, **TINY_WIDTHS)
    model.eval()
    calls = []
    model.frame_discriminator.register_forward_hook(lambda *_: calls.append(1))
    x = torch.rand(6, 5, 16)
    with torch.no_grad():
        full = model(x, GRL)                                               # training-mode heads, eval dropout
        assert len(calls) == 1 and full["frame"] is not None and full["video"] is not None
        calls.clear()
        fast = model(x, GRL, domains=False)
    assert len(calls) == frame_calls and (fast["frame"] is not None) == bool(frame_calls)
    assert fast["video"] is None and (fast["relation"] is not None) == relation_at_eval
    assert torch.equal(fast["logits"], full["logits"]) and torch.equal(fast["feature"], full["feature"])
    if args.attention != "none":
        assert torch.equal(fast["attention"], full["attention"])


def test_triton_and_torch_paths_train_identically():
    """Two SGD steps of the default TA3N on a tiny case: the Triton op (interpreter on CPU) vs the reference."""
    x_s, x_t, y_s = torch.rand(5, 5, 16), torch.rand(3, 5, 16) + 0.2, torch.tensor([0, 3, 5, 5, 11])
    results = []
    for backend in ("torch", "triton"):
        args = args_for("--kernel", backend, "--lr", "0.5")
        torch.manual_seed(1)
        model, opt = ta3n.build(args, 16, 12, **TINY_WIDTHS)
        losses = [ta3n.train_step(model, opt, args, x_s, y_s, x_t)["loss"] for _ in range(2)]
        results.append((torch.stack(losses), model.state_dict()))
    (loss_a, state_a), (loss_b, state_b) = results
    assert_close(loss_b, loss_a, 1e-5, what="losses")
    for key in state_a:
        assert_close(state_b[key], state_a[key], 1e-5, what=key)
    assert abs(loss_a[1] - loss_a[0]) > 1e-3                                     # the first step changed the model


def test_smoke_run_in_process(tmp_path, capsys):
    out = str(tmp_path / "run")
    m = ta3n.main(["--synth-dim", "16", "--epochs", "2", "--batch-size", "32", "--out", out])
    for name in ("metrics.json", "epochs.csv", "checkpoint.pt"):
        assert os.path.isfile(os.path.join(out, name)), name
    stored = json.load(open(os.path.join(out, "metrics.json")))
    assert stored["complete"] and stored["synthetic"] and stored["args"]["attention"] == "domain"
    assert stored["args"]["discriminators"] == ["frame", "relation", "video"] and stored["args"]["kernel"] == "torch"
    for row in m["epochs"]:
        for key in ("loss", "loss_y", "loss_frame", "loss_relation", "loss_video", "loss_ae", "attention"):
            assert math.isfinite(row[key]), key
    for key in ("last", "source_selected", "oracle"):
        assert 0 <= m["final"][key]["top1"] <= 1
    # chance is 1/12: a fixed seed clears it by a wide margin in two short epochs
    assert m["epochs"][-1]["source_val_top1"] > 0.5 and m["final"]["last"]["top1"] > 0.2
    analysis = stored["analysis"]
    assert math.isfinite(analysis["mmd2"]) and analysis["mmd2"] >= 0 and 0 < analysis["domain_loss"] < 5
    assert analysis["mmd_kernel"].startswith("official mmd_rbf") and stored["args"]["mmd"] == "official"
    assert "SYNTHETIC" in capsys.readouterr().out


def test_ramped_beta_run_in_process(tmp_path):
    m = ta3n.main(["--synth-dim", "16", "--epochs", "2", "--beta-video", "-1", "--mmd", "median",
                   "--out", str(tmp_path)])
    assert [row["beta_video"] for row in m["epochs"]] == pytest.approx([math.tanh(2.5), math.tanh(5.0)], abs=1e-12)
    assert "beta_frame" not in m["epochs"][0] and m["args"]["beta_video"] == -1
    assert m["analysis"]["mmd_kernel"].startswith("gaussian") and math.isfinite(m["analysis"]["mmd2"])


def test_source_only_pooling_run_in_process(tmp_path):
    m = ta3n.main(["--synth-dim", "16", "--epochs", "1", "--batch-size", "1500", "--variant", "source-only",
                   "--temporal", "pooling", "--out", str(tmp_path)])
    assert set(m["epochs"][0]) >= {"loss", "loss_y"} and "loss_frame" not in m["epochs"][0]
    assert m["analysis"]["domain_loss"] is None and math.isfinite(m["analysis"]["mmd2"])


# ---- command line ----

def test_help_lists_shared_and_method_flags():
    out = subprocess.run([sys.executable, "ta3n.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--source", "--target", "--data-root", "--epochs", "--batch-size", "--lr", "--seed", "--device",
                 "--out", "--resume", "--variant", "--temporal", "--discriminators", "--attention", "--entropy-loss",
                 "--relations", "--kernel", "--lambda-as", "--detach-attention", "--gamma", "--beta-relation"):
        assert flag in out.stdout, flag


def test_bad_input_is_one_error_line():
    argv = ["--attention", "domain", "--discriminators", "frame,video", "--synth-dim", "16"]
    out = subprocess.run([sys.executable, "ta3n.py", *argv], cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "needs the relation discriminator" in lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--kernel", "triton", "--device", "cpu"], "--kernel triton needs a CUDA device"),
    (["--source", "ucf", "--target", "hmdb", "--data-root", "/nonexistent/vidda"], "data root not found"),
])
def test_bad_input_in_process(argv, message, monkeypatch, tmp_path):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)                         # resolve() reads it per call
    with pytest.raises(SystemExit) as e:
        ta3n.main([*argv, "--synth-dim", "16", "--out", str(tmp_path)])
    assert str(e.value).startswith("error:") and message in str(e.value)


# ---- EPIC-100 two heads (--label verb+noun) ----

def test_two_heads_class_loss_and_attentive_entropy_by_hand():
    """Heads (2, 3): L_y = 0.5·(CE_verb + CE_noun); Eq. (9) weights the mean of the two heads' entropies."""
    logits = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])     # both heads uniform
    domain = torch.tensor([[0.0, 0.0], [10.0, -10.0]])                              # H(d̂) = ln 2, ≈ 0
    labels = torch.tensor([[1, 2], [0, 0]])
    assert_close(ta3n.class_loss(logits, labels, (2, 3)), 0.5 * (LN2 + math.log(3)), atol=1e-6, what="L_y")
    h_y = 0.5 * (LN2 + math.log(3))                                                 # per row, both rows
    h_d = [LN2, 0.0]
    want = sum((1 + h) * h_y for h in h_d) / 2
    assert_close(ta3n.attentive_entropy_loss(logits, domain, heads=(2, 3)), want, atol=1e-6, what="L_ae two heads")
    # one head: unchanged (entropy over all 5 outputs)
    want_one = sum((1 + h) * math.log(5) for h in h_d) / 2
    assert_close(ta3n.attentive_entropy_loss(torch.zeros(2, 5), domain), want_one, atol=1e-6, what="L_ae one head")


def test_build_with_heads_trains_one_step_on_verb_noun_labels():
    args = args_for("--batch-size", "4")
    model, opt = ta3n.build(args, 16, 5, heads=(2, 3), **TINY_WIDTHS)
    assert model.heads == (2, 3) and model.classifier.out_features == 5
    g = torch.Generator().manual_seed(0)
    x_s, x_t = torch.randn(4, 5, 16, generator=g), torch.randn(3, 5, 16, generator=g)
    y_s = torch.tensor([[0, 2], [1, 0], [1, 1], [0, 2]])
    before = model.classifier.weight.detach().clone()
    stats = ta3n.train_step(model, opt, args, x_s, y_s, x_t)
    assert math.isfinite(float(stats["loss_y"])) and float(stats["loss_y"]) == pytest.approx(
        0.5 * (LN2 + math.log(3)), abs=0.02)            # N(0, 0.001) init: near-uniform heads (one head: ln 5)
    assert not torch.equal(model.classifier.weight, before)
