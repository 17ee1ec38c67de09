"""Tests of ma2l_td.py: the level geometry (reference §1.2 table), dilated taps, AttPool weights, the batched slot
discriminators against a loop of separate modules, hand-computed losses, every ablation flag for one step, an
in-process smoke run and the CLI's errors.

Tolerances: fp32 equation checks 1e-6 (a handful of terms); batched vs looped discriminators 1e-5 (fp32 matmuls
of width ≤ 32 in a different summation order).
"""
import json
import math
import os
import subprocess
import sys

import pytest
import numpy as np
import torch

import data
import ma2l_td
from helpers import assert_close

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN2 = math.log(2)
TINY = ["--synth-dim", "16", "--levels", "3", "--bottleneck-dim", "8", "--disc-hidden", "8"]


def args_for(*flags):
    return ma2l_td.resolve(data.parse_args(ma2l_td.Args, [*TINY, *flags]))



# ---- geometry ----

@pytest.mark.parametrize("q, levels, dilations, slots, n_all, n_code", [
    (3, 5, [1, 3, 7, 15], [53, 51, 45, 31, 1], 181, 128),
    (3, 4, [1, 3, 7], [23, 21, 15, 1], 60, 37),
    (3, 3, [1, 3], [9, 7, 1], 17, 8),
    (2, 4, [1, 2, 3], [7, 6, 4, 1], 18, 11),
    (2, 3, [1, 2], [4, 3, 1], 8, 4),
    (4, 3, [1, 4], [16, 13, 1], 30, 14),
    (4, 4, [1, 4, 13], [55, 52, 40, 1], 148, 93),
])
def test_level_geometry_is_the_reference_table(q, levels, dilations, slots, n_all, n_code):
    assert ma2l_td.level_geometry(levels, q) == (dilations, slots)
    assert sum(slots) == n_all and sum(slots[1:]) == n_code
    # the aggregators really produce these lengths
    x = torch.zeros(2, slots[0], 3)
    for d, k in zip(dilations, slots[1:]):
        x = ma2l_td.DilatedAggregation(3, q, d, residual_conv=True)(x)
        assert x.shape == (2, k, 3)


def test_num_segments_is_derived_and_checked():
    assert ma2l_td.resolve(data.parse_args(ma2l_td.Args, [])).num_segments == 53
    assert args_for("--kernel-size", "2").num_segments == 4
    with pytest.raises(SystemExit, match="need 9 frames"):
        args_for("--num-segments", "5")


def test_dilated_taps_pick_j_plus_s_d():
    x = torch.arange(20.0).view(1, 10, 2)                                        # frame j holds (2j, 2j+1)
    taps = ma2l_td.dilated_taps(x, 3, 2)                                          # (1, 6, 3, 2)
    assert taps.shape == (1, 6, 3, 2)
    for j in range(6):
        for s in range(3):
            assert taps[0, j, s].tolist() == x[0, j + 2 * s].tolist()


@pytest.mark.parametrize("q, levels", [(2, 4), (3, 5), (4, 4)])
def test_dilation_never_reuses_a_lower_level_vector_and_is_minimal(q, levels):
    """f^{m+1}_j reads q level-m taps, each built from q level-(m−1) taps: the q² level-(m−1) indices are distinct
    with d_m = (q−1)·d_{m−1} + 1, and some repeat with d_m − 1 (the rule is the smallest such d)."""
    dilations, slots = ma2l_td.level_geometry(levels, q)

    def lower_indices(d_prev, d):
        idx = torch.arange(slots[0]).view(1, -1)
        inner = ma2l_td.dilated_taps(idx, q, d_prev)[0]                           # (k', q): level m built from m−1
        return ma2l_td.dilated_taps(inner[None], q, d)[0].flatten(1)             # (k'', q²)
    for d_prev, d in zip(dilations, dilations[1:]):
        for row in lower_indices(d_prev, d).tolist():
            assert len(set(row)) == q * q
        assert any(len(set(row)) < q * q for row in lower_indices(d_prev, d - 1).tolist())


# ---- AttPool (Eqs. 11-12) and the aggregation ----

def test_attpool_weights_sum_to_one_and_follow_the_domain_losses():
    ell = torch.tensor([[1.0, 2.0, 3.0, 6.0, 0.5]])                              # (B=1, k=5), q=2, d=2 -> k'=3
    w = ma2l_td.attpool_weights(ell, q=2, dilation=2, eps=0.0)
    assert_close(w, [[[1 / 4, 3 / 4], [2 / 8, 6 / 8], [3 / 3.5, 0.5 / 3.5]]], 1e-6, what="w = ℓ / Σ ℓ")
    torch.manual_seed(0)
    for shape in [(1, 9), (4, 53), (3, 23)]:
        ell = torch.rand(shape) * 3
        w = ma2l_td.attpool_weights(ell, q=3, dilation=1)
        assert_close(w.sum(-1), torch.ones(w.shape[:2]), 1e-6, what="Σ_s w")
        taps = ma2l_td.dilated_taps(ell, 3, 1)
        assert torch.equal(w.argmax(-1), taps.argmax(-1))                         # larger ℓ, larger weight


def test_aggregation_is_attpool_plus_residual_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 4)
    w = torch.softmax(torch.randn(2, 5, 2), -1)                                   # q=2, d=2 -> k'=5
    plain = ma2l_td.DilatedAggregation(4, 2, 2, residual_conv=False)
    expected = w[..., :1] * x[:, 0:5] + w[..., 1:] * x[:, 2:7]                    # Eq. (12) by hand
    assert_close(plain(x, w), expected, 1e-6, what="Σ_s w_s f_{j+s·d}")
    assert_close(plain(x), (x[:, 0:5] + x[:, 2:7]) / 2, 1e-6, what="uniform 1/q")
    with_conv = ma2l_td.DilatedAggregation(4, 2, 2, residual_conv=True)
    h = with_conv.conv(x.transpose(1, 2)).transpose(1, 2)                         # (2, 5, 4)
    assert_close(with_conv(x, w), expected + h, 1e-6, what="Eq. (10): AttPool + H")


# ---- batched slot discriminators ----

def looped_copies(batched, shared):
    """Separate nn.Sequential discriminators holding the batched module's weights."""
    n = batched.weights[0].shape[0]
    mods = []
    for i in range(n):
        layers = []
        for j, (w, b) in enumerate(zip(batched.weights, batched.biases)):
            lin = torch.nn.Linear(w.shape[2], w.shape[1])
            lin.weight.data.copy_(w[i].detach())
            lin.bias.data.copy_(b[i, 0].detach())
            layers += [lin] + ([torch.nn.ReLU(), torch.nn.Dropout(0.2)] if j < 2 else [])
        mods.append(torch.nn.Sequential(*layers))
    return mods


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("b, k, c, h", [(1, 1, 4, 8), (3, 7, 5, 6), (2, 53, 8, 16)])
def test_batched_discriminators_equal_a_loop_of_separate_ones(shared, b, k, c, h):
    torch.manual_seed(k)
    batched = ma2l_td.SlotDiscriminators(k, c, h, dropout=0.2, shared=shared).eval()
    mods = [m.eval() for m in looped_copies(batched, shared)]
    assert len(mods) == (1 if shared else k)
    x = torch.randn(b, k, c, requires_grad=True)
    x_loop = x.detach().clone().requires_grad_(True)
    out = batched(x)
    loop = torch.stack([mods[0 if shared else j](x_loop[:, j]).squeeze(-1) for j in range(k)], 1)   # (B, k)
    assert_close(out, loop, 1e-5, what="logits")
    upstream = torch.randn_like(out)
    out.backward(upstream)
    loop.backward(upstream)
    assert_close(x.grad, x_loop.grad, 1e-5, what="dL/dx")
    for i, mod in enumerate(mods):
        assert_close(batched.weights[0].grad[i], mod[0].weight.grad, 1e-5, what=f"dL/dW1 of slot {i}")


def test_slot_discriminator_init_matches_nn_linear_bounds():
    d = ma2l_td.SlotDiscriminators(5, 16, 64, 0.2)
    for w, b, fan_in in zip(d.weights, d.biases, (16, 64, 64)):
        assert w.abs().max() <= 1 / math.sqrt(fan_in) and b.abs().max() <= 1 / math.sqrt(fan_in)
        assert w.std() > 0.4 / math.sqrt(fan_in)                                  # uniform(−a, a): std a/√3


# ---- losses and schedules by hand ----

@pytest.mark.parametrize("lambd", [0.0, 0.05, 0.1])
def test_grl_forward_identity_backward_reversed(lambd):
    x = torch.randn(3, 7, requires_grad=True)
    y = ma2l_td.grad_reverse(x, lambd)
    assert torch.equal(y, x)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    assert_close(x.grad, -lambd * upstream, 1e-7, what="GRL backward")


def test_grl_ramp():
    assert ma2l_td.grl_coefficient(1, 30, 0.1) == 0.0
    assert abs(ma2l_td.grl_coefficient(16, 30, 0.1) - (0.2 / (1 + math.exp(-5)) - 0.1)) < 1e-12
    assert 0.0999 < ma2l_td.grl_coefficient(300, 300, 0.1) < 0.1


def test_entropy_and_slot_losses_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(3), -1e9]])          # uniform; (1/4, 3/4, 0)
    h2 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert_close(ma2l_td.target_entropy_loss(logits), (math.log(3) + h2) / 2, 1e-6, what="Eq. (2)")
    z = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    ell = ma2l_td.slot_domain_losses(z, torch.tensor([0.0, 1.0]))
    assert_close(ell, [[LN2, math.log(1 + math.exp(2))], [LN2, math.log(1 + math.exp(-2))]], 1e-6, what="Eq. (3)")


def test_level_attention_and_adversarial_loss_by_hand():
    domain = torch.tensor([0.0, 1.0])
    level_logits = {0: torch.tensor([0.0, 0.0]), 2: torch.tensor([math.log(3), math.log(3)])}   # σ = 1/2, 3/4
    omega = ma2l_td.level_attention(level_logits, domain, "paper", [0, 2])
    l_src, l_tgt = [LN2, math.log(4)], [LN2, math.log(4 / 3)]                     # BCE vs d = 0, d = 1
    assert_close(omega, [[l / sum(l_src) for l in l_src], [l / sum(l_tgt) for l in l_tgt]], 1e-6, what="Eq. (6)-(7)")
    h34 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    code = ma2l_td.level_attention(level_logits, domain, "code", [0, 2])
    assert_close(code, [[LN2 / (LN2 + h34), h34 / (LN2 + h34)]] * 2, 1e-6, what="official entropy weights")
    assert_close(ma2l_td.level_attention(level_logits, domain, "none", [0, 2]), [[0.5, 0.5]] * 2, 0, what="equal")
    slot_losses = {0: torch.tensor([[1.0, 3.0], [2.0, 2.0]]), 2: torch.tensor([[4.0], [6.0]])}
    w = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    mean = ((0.25 * 2 + 0.75 * 4) + (0.5 * 2 + 0.5 * 6)) / 2
    total = ((0.25 * 4 + 0.75 * 4) + (0.5 * 4 + 0.5 * 6)) / 2
    assert_close(ma2l_td.adversarial_loss(slot_losses, w, [0, 2], "mean"), mean, 1e-6, what="Eq. (8), mean over j")
    assert_close(ma2l_td.adversarial_loss(slot_losses, w, [0, 2], "sum"), total, 1e-6, what="Eq. (8), Σ_j")


def test_gradient_routes():
    """GRL: the encoder gets −λ∇L_adv, discriminators and aggregators +∇; the level discriminators learn only from
    their own loss (paper) or never (code); the AttPool weights carry no gradient."""
    torch.manual_seed(0)
    args = args_for("--dropout", "0", "--disc-dropout", "0")
    model, _ = ma2l_td.build(args, 16, 12)
    x, domain = torch.randn(4, 9, 16), torch.tensor([0.0, 0.0, 1.0, 1.0])
    f = model.encode(x)
    out = model.adapt(f, domain, 0.5)
    omega = ma2l_td.level_attention(out["level_logits"], domain, "paper", model.aligned)
    assert all(w is None or not w.requires_grad for w in out["attpool"].values())
    loss = ma2l_td.adversarial_loss(out["slot_losses"], omega, model.aligned)
    g_enc_rev = torch.autograd.grad(loss, f, retain_graph=True)[0]
    f2 = f.detach().requires_grad_(True)
    plain = ma2l_td.adversarial_loss(model.adapt(f2, domain, -1.0)["slot_losses"], omega, model.aligned)   # GRL(−1) = +∇
    g_plain = torch.autograd.grad(plain, f2)[0]
    assert_close(g_enc_rev, -0.5 * g_plain, 1e-6, what="−λ ∇L_adv at f^1")
    level = ma2l_td.level_discriminator_loss(out["level_logits"], domain)
    assert torch.autograd.grad(level, f, allow_unused=True)[0] is None            # 𝒟^m sees detached F^m
    code, _ = ma2l_td.build(args_for("--level-attn", "code"), 16, 12)
    assert not any(p.requires_grad for p in code.level_discriminators.parameters())


# ---- every flag trains ----

@pytest.mark.parametrize("flags", [
    [], ["--attn-pool", "uniform"], ["--no-residual-conv"], ["--level-attn", "code"], ["--level-attn", "none"],
    ["--no-frame-level-discriminators"], ["--slot-discriminators", "shared"], ["--aligned-levels", "frame-video"],
    ["--slot-reduction", "sum"], ["--no-adaptation"], ["--train-clips", "2"], ["--kernel-size", "2"],
    ["--levels", "2"], ["--no-frame-level-discriminators", "--aligned-levels", "frame-video"],
])
def test_every_ablation_builds_and_trains_one_step(flags):
    torch.manual_seed(0)
    args = args_for(*flags)
    model, opt = ma2l_td.build(args, 16, 12)
    x_s = torch.randn(3 * args.train_clips, args.num_segments, 16)
    x_t = None if not args.adaptation else torch.randn(2 * args.train_clips, args.num_segments, 16)
    before = [p.detach().clone() for p in model.parameters()]
    stats = ma2l_td.train_step(model, opt, args, x_s, torch.tensor([0, 1, 2] * args.train_clips), x_t, 0.1)
    assert all(math.isfinite(float(v)) for v in stats.values())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    if args.adaptation:
        omegas = [float(v) for k, v in stats.items() if k.startswith("omega_")]
        assert len(omegas) == len(model.aligned) and abs(sum(omegas) - 1) < 1e-5
    if "--no-frame-level-discriminators" in flags:
        assert 0 not in model.aligned
    if "--aligned-levels" in flags:
        assert model.aligned[-1] == args.levels - 1 and len(model.aligned) <= 2


# ---- runs ----

def test_smoke_run_in_process(tmp_path, capsys):
    out = str(tmp_path / "run")
    m = ma2l_td.main([*TINY, "--bottleneck-dim", "32", "--epochs", "2", "--batch-size", "64", "--lr", "1e-2",
                      "--entropy-weight", "0.1",
                      "--out", out])
    for name in ("metrics.json", "epochs.csv", "checkpoint.pt"):
        assert os.path.isfile(os.path.join(out, name)), name
    stored = json.load(open(os.path.join(out, "metrics.json")))
    assert stored["complete"] and stored["synthetic"] and stored["args"]["num_segments"] == 9
    assert stored["args"]["attn_pool"] == "paper" and stored["args"]["levels"] == 3
    assert stored["geometry"]["slots"] == [9, 7, 1] and stored["geometry"]["slot_discriminators"] == 17
    for row in m["epochs"]:
        for key in ("loss", "loss_s", "loss_t", "loss_adv", "loss_level", "omega_1", "omega_2", "omega_3", "lambda"):
            assert math.isfinite(row[key]), key
    for key in ("last", "source_selected", "oracle"):
        assert 0 <= m["final"][key]["top1"] <= 1
    # chance is 1/12: a fixed seed clears it in two short epochs (measured 0.69 source, 0.18 target; this mean-pooled
    # classifier on 9 frames is far from the task's ceiling, see README)
    assert m["epochs"][-1]["source_val_top1"] > 0.5 and m["final"]["last"]["top1"] > 0.13
    assert "SYNTHETIC" in capsys.readouterr().out


def test_help_lists_shared_and_method_flags():
    out = subprocess.run([sys.executable, "ma2l_td.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--source", "--target", "--data-root", "--epochs", "--batch-size", "--lr", "--seed", "--device",
                 "--out", "--resume", "--num-segments", "--levels", "--kernel-size", "--attn-pool", "--level-attn",
                 "--frame-level-discriminators", "--slot-discriminators", "--aligned-levels", "--no-adaptation"):
        assert flag in out.stdout, flag


def test_bad_input_is_one_error_line():
    argv = ["--levels", "3", "--num-segments", "5", "--synth-dim", "16"]
    out = subprocess.run([sys.executable, "ma2l_td.py", *argv], cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "need 9 frames" in lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--levels", "1"], "--levels must be >= 2"),
    (["--kernel-size", "1"], "--kernel-size must be >= 2"),
    (["--train-clips", "0"], "must be >= 1"),
    (["--source", "ucf", "--target", "hmdb", "--data-root", "/nonexistent/vidda"], "data root not found"),
])
def test_bad_input_in_process(argv, message, tmp_path):
    with pytest.raises(SystemExit) as e:
        ma2l_td.main([*argv, "--synth-dim", "16", "--out", str(tmp_path)])
    assert str(e.value).startswith("error:") and message in str(e.value)


def test_short_videos_are_spread_by_default(tmp_path):
    args = ma2l_td.resolve(data.parse_args(ma2l_td.Args, ["--out", str(tmp_path)]))       # K = 53
    run = data.Run(args, script="ma2l_td")
    assert run.short_videos == "spread" and args.num_segments == 53
    short = int(np.argmin(run.data.source_train.lengths))                 # a synth-a video far shorter than 53
    n = int(run.data.source_train.lengths[short])
    assert n < 53
    frames = run.frames(run.data.source_train, torch.tensor([short]))     # (1, 53, D)
    last = run.data.source_train.features[run.data.source_train.offsets[short] + n - 1]
    repeats = int((frames[0] == torch.as_tensor(np.asarray(last))).all(-1).sum())
    assert repeats <= 3                                                   # padding would repeat it 53 − n + 1 times
    pad = data.Run(ma2l_td.resolve(data.parse_args(ma2l_td.Args, ["--short-videos", "pad", "--out", str(tmp_path)])),
                   script="ma2l_td")
    frames = pad.frames(pad.data.source_train, torch.tensor([short]))
    assert int((frames[0] == torch.as_tensor(np.asarray(last))).all(-1).sum()) == 53 - n + 1
