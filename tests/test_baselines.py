"""baselines.py: exact values of the losses (MMD/JMMD against a direct double loop, MCD's discrepancy, GRL,
CDAN's map and weights), the TRN-M tuple table, AdaBN's per-domain statistics, the three MCD steps, one
training step of every method, in-process smoke runs, --help and bad input."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import baselines
import data
from helpers import assert_close

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--synth-dim", "16"]
SMOKE = ["--synth-dim", "32", "--epochs", "4", "--lr", "0.5"]        # clears chance in 4 short epochs
ONE_STEP = ["--synth-dim", "16", "--epochs", "1", "--batch-size", "1500"]   # one batch holds every video



# ---- direct O(n²) definitions (float64), written independently of baselines.py ----------------------

def kernel_loop(points_s, points_t, kernel_num, kernel_mul=2.0):
    """Multi-bandwidth Gaussian kernel as a dict {(i, j): k} over the 2n stacked points, by double loops."""
    pts = [p for p in points_s] + [p for p in points_t]
    m = len(pts)
    d2 = {(i, j): float(((pts[i] - pts[j]) ** 2).sum()) for i in range(m) for j in range(m)}
    sigma2 = sum(d2.values()) / (m * m - m)
    bws = [sigma2 * kernel_mul ** (q - kernel_num // 2) for q in range(kernel_num)]
    return {key: sum(math.exp(-v / bw) for bw in bws) for key, v in d2.items()}


def jmmd_loop(layers_s, layers_t, kernel_nums):
    n = min(len(layers_s[0]), len(layers_t[0]))
    kernels = [kernel_loop(s[:n], t[:n], num) for s, t, num in zip(layers_s, layers_t, kernel_nums)]
    k = lambda i, j: math.prod(kern[(i, j)] for kern in kernels)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += k(i, j) + k(n + i, n + j) - k(i, n + j) - k(n + i, j)
    return total / (n * n)


# ---- 1. losses: exact small-case values ------------------------------------------------------------

def test_mmd_by_hand_one_point_each():
    # points 0 and 1: squared distance 1, σ² = (1 + 1) / (4 − 2) = 1, bandwidths 1/4, 1/2, 1, 2, 4
    k_st = sum(math.exp(-1 / bw) for bw in (0.25, 0.5, 1, 2, 4))
    got = baselines.joint_mmd([torch.zeros(1, 1, dtype=torch.float64)], [torch.ones(1, 1, dtype=torch.float64)],
                              kernel_nums=[5])
    assert_close(got, 5 + 5 - 2 * k_st, atol=1e-12, what="MMD of {0} vs {1}")
    same = torch.randn(4, 3, dtype=torch.float64)
    assert_close(baselines.joint_mmd([same], [same.clone()], kernel_nums=[5]), 0.0, atol=1e-12, what="MMD(x, x)")


@pytest.mark.parametrize("n_s, n_t, dim, kernel_num", [(6, 6, 3, 5), (7, 4, 5, 5), (3, 8, 2, 2), (5, 5, 1, 1)])
def test_mmd_matches_double_loop(n_s, n_t, dim, kernel_num):
    g = torch.Generator().manual_seed(n_s * 10 + n_t)
    x_s = torch.randn(n_s, dim, generator=g, dtype=torch.float64)
    x_t = torch.randn(n_t, dim, generator=g, dtype=torch.float64) + 0.7
    got = baselines.joint_mmd([x_s], [x_t], kernel_nums=[kernel_num])
    assert_close(got, jmmd_loop([x_s], [x_t], [kernel_num]), atol=1e-10, what="MMD")
    n = min(n_s, n_t)                                                       # trimmed to the first min(B_s, B_t)
    assert_close(got, baselines.joint_mmd([x_s[:n]], [x_t[:n]], kernel_nums=[kernel_num]), atol=0, what="trim")


@pytest.mark.parametrize("n_s, n_t", [(5, 5), (9, 6), (4, 7)])
def test_jmmd_matches_double_loop(n_s, n_t):
    g = torch.Generator().manual_seed(n_s + 100 * n_t)
    logits_s, logits_t = torch.randn(n_s, 4, generator=g, dtype=torch.float64), torch.randn(n_t, 4, generator=g,
                                                                                            dtype=torch.float64)
    feat_s = torch.rand(n_s, 6, generator=g, dtype=torch.float64)
    feat_t = torch.rand(n_t, 6, generator=g, dtype=torch.float64) * 1.5
    got = baselines.joint_mmd([logits_s, feat_s], [logits_t, feat_t], kernel_nums=[2, 5])
    assert_close(got, jmmd_loop([logits_s, feat_s], [logits_t, feat_t], [2, 5]), atol=1e-10, what="JMMD")
    # the joint kernel is the product: with a constant second layer the JMMD reduces to the first layer's MMD
    ones_s, ones_t = torch.ones(n_s, 2, dtype=torch.float64), torch.ones(n_t, 2, dtype=torch.float64)
    joint = baselines.joint_mmd([logits_s, ones_s], [logits_t, ones_t], kernel_nums=[2, 1])
    assert_close(joint, baselines.joint_mmd([logits_s], [logits_t], kernel_nums=[2]) * math.exp(0), atol=1e-12,
                 what="JMMD with a constant layer")


def test_mmd_gradient_treats_the_bandwidth_as_a_constant():
    """loss.py computes σ² from `.data`: the gradient must equal that of a double loop with σ² frozen."""
    g = torch.Generator().manual_seed(3)
    x_s = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x_t = torch.randn(5, 3, generator=g, dtype=torch.float64) + 1
    baselines.joint_mmd([x_s], [x_t], kernel_nums=[5]).backward()
    pts = torch.cat([x_s.detach(), x_t[:4]])
    sigma2 = float(((pts[:, None] - pts[None]) ** 2).sum()) / (8 * 8 - 8)
    leaf = x_s.detach().clone().requires_grad_(True)
    z = list(leaf) + list(x_t[:4])
    k = lambda a, b: sum(torch.exp(-((a - b) ** 2).sum() / (sigma2 * 2.0 ** (q - 2))) for q in range(5))
    total = sum(k(z[i], z[j]) + k(z[4 + i], z[4 + j]) - k(z[i], z[4 + j]) - k(z[4 + i], z[j])
                for i in range(4) for j in range(4)) / 16
    total.backward()
    assert_close(x_s.grad, leaf.grad, atol=1e-10, what="dMMD/dx_s")


def test_mcd_discrepancy_by_hand():
    # softmax([0, 0]) = (.5, .5) vs softmax([ln 3, 0]) = (.75, .25): |diff| = (.25, .25); second row identical
    l1 = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    l2 = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])
    assert_close(baselines.classifier_discrepancy(l1, l2), 0.125, atol=1e-7, what="d(p1, p2)")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    want = sum(abs(F.softmax(a[i], 0)[k] - F.softmax(b[i], 0)[k]) for i in range(5) for k in range(7)) / 35
    assert_close(baselines.classifier_discrepancy(a, b), want, atol=1e-6, what="d(p1, p2) random")


@pytest.mark.parametrize("coeff", [0.0, 0.5, 0.75, 2.0])
def test_grl_identity_forward_and_minus_lambda_backward(coeff):
    x = torch.randn(3, 4, requires_grad=True)
    y = baselines.grad_reverse(x, coeff)
    assert torch.equal(y, x)
    upstream = torch.randn(3, 4)
    y.backward(upstream)
    assert_close(x.grad, -coeff * upstream, atol=0, what="GRL backward")


def test_domain_loss_labels_source_zero_target_one():
    d_s = torch.tensor([[5.0, -5.0], [0.0, 0.0]])
    d_t = torch.tensor([[0.0, 0.0]])
    want = (F.cross_entropy(d_s[:1], torch.tensor([0])) + math.log(2) + math.log(2)) / 3
    assert_close(baselines.domain_loss(d_s, d_t), want, atol=1e-6, what="domain CE")


def test_cdan_multilinear_map_and_entropy_weights():
    f = torch.randn(3, 4, requires_grad=True)
    g = torch.randn(3, 5, requires_grad=True)
    t = baselines.multilinear_map(f, g)
    assert t.shape == (3, 20)
    p = F.softmax(g, 1)
    assert_close(t.view(3, 5, 4), p[:, :, None] * f[:, None, :], atol=1e-7, what="f ⊗ softmax(g)")
    t.sum().backward()
    assert g.grad is None and f.grad is not None                           # softmax is detached (CDAN code)
    # uniform predictions: H = ln C, w = 1 + 1/C for every sample -> each domain's plain mean CE, halved
    d_s, d_t = torch.randn(4, 2), torch.randn(3, 2)
    flat_s, flat_t = torch.zeros(4, 6), torch.zeros(3, 6)
    assert_close(baselines.entropy(flat_s), torch.full((4,), math.log(6)), atol=1e-6, what="H(uniform)")
    per_domain = (baselines.domain_loss(d_s, d_t[:0]) + baselines.domain_loss(d_s[:0], d_t)) / 2
    assert_close(baselines.conditional_domain_loss(d_s, d_t, flat_s, flat_t), per_domain, atol=1e-6,
                 what="CDAN+E with equal weights")
    assert_close(baselines.conditional_domain_loss(d_s[:3], d_t, flat_s[:3], flat_t),     # equal batch sizes:
                 baselines.domain_loss(d_s[:3], d_t), atol=1e-6, what="CDAN+E, B_s = B_t")  # the plain CE
    # confident target rows get larger weights: w = 1 + exp(-H), normalised within each domain
    conf_t = torch.tensor([[20.0, 0, 0, 0, 0, 0], [0.0] * 6, [0.0] * 6])
    w_t = 1 + torch.exp(-baselines.entropy(conf_t))
    w_t = w_t / w_t.sum()
    ce_s = F.cross_entropy(d_s, torch.zeros(4).long(), reduction="none")
    ce_t = F.cross_entropy(d_t, torch.ones(3).long(), reduction="none")
    want = (ce_s.mean() + (w_t * ce_t).sum()) / 2
    assert_close(baselines.conditional_domain_loss(d_s, d_t, flat_s, conf_t), want, atol=1e-6, what="CDAN+E")


def test_lr_and_grl_schedules():
    # official: lr after step 0 of epoch 1 (p = 1/30) and at the end of epoch 1 with 12 steps (p = 23/360)
    assert_close(baselines.annealed_lr(0.03, 1 / 30), 0.03 / (4 / 3) ** 0.75, atol=1e-12, what="lr")
    assert abs(baselines.annealed_lr(0.03, 23 / 360) - 0.02071) < 1e-5     # the official log prints 0.02071
    assert baselines.grl_ramp(0.0) == 0.0 and abs(baselines.grl_ramp(1.0) - (2 / (1 + math.exp(-10)) - 1)) < 1e-12


# ---- 2. backbone: TRN-M tuples, relation module, AdaBN ------------------------------------------------

def test_relation_tuples_match_the_official_table():
    got = [t.tolist() for t in baselines.relation_tuples(5)]
    assert got == [[[0, 1, 2, 3, 4]], [[0, 1, 2, 3], [0, 1, 3, 4], [1, 2, 3, 4]],
                   [[0, 1, 2], [0, 2, 4], [1, 2, 4]], [[0, 1], [1, 2], [2, 3]]]
    # K = 4: scale 3 has 4 combinations -> indices 0, ceil(4/3) = 2, ceil(8/3) = 3; scale 2 has 6 -> 0, 2, 4
    assert [t.tolist() for t in baselines.relation_tuples(4)] == [[[0, 1, 2, 3]], [[0, 1, 2], [0, 2, 3], [1, 2, 3]],
                                                                  [[0, 1], [0, 3], [1, 3]]]
    assert [t.tolist() for t in baselines.relation_tuples(2)] == [[[0, 1]]]
    for k in (3, 6, 8):
        for t in baselines.relation_tuples(k):
            assert (t[:, 1:] > t[:, :-1]).all() and len(t) <= 3              # strictly increasing in time


@pytest.mark.parametrize("batch, frames", [(1, 5), (3, 4), (2, 7)])
def test_temporal_relation_equals_a_loop_over_tuples(batch, frames):
    torch.manual_seed(0)
    trn = baselines.TemporalRelation(frames, in_dim=6, out_dim=3).double()
    x = torch.randn(batch, frames, 6, dtype=torch.float64)
    want = torch.zeros(batch, 3, dtype=torch.float64)
    for tuples, fuse in zip(baselines.relation_tuples(frames), trn.fuse):
        for t in tuples.tolist():
            want += F.relu(fuse(torch.cat([x[:, i] for i in t], 1)))
    assert_close(trn(x), want, atol=1e-12, what="TRN-M")
    assert baselines.TemporalPooling()(x).shape == (batch, 6)


def test_adabn_keeps_statistics_per_domain_and_tests_with_the_target_ones():
    torch.manual_seed(0)
    spatial = baselines.SpatialModule(4, out_dim=3, adabn=True)
    spatial.dropout.p = 0.0
    g = torch.Generator().manual_seed(1)
    x_s = torch.randn(16, 5, 4, generator=g)
    x_t = torch.randn(16, 5, 4, generator=g) * 3 + 2
    spatial.train()
    for _ in range(200):                                                    # momentum 0.1: running stats converge
        spatial(x_s, domain=0)
        with torch.no_grad():
            spatial(x_t, domain=1)
    z_t = spatial.fc(x_t).detach().flatten(0, 1)
    assert_close(spatial.bn[1].running_mean, z_t.mean(0), atol=1e-5, what="target running mean")
    assert_close(spatial.bn[1].running_var, z_t.var(0), atol=1e-4, rtol=1e-4, what="target running var")
    with torch.no_grad():
        spatial.bn_weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        spatial.bn_bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    spatial.eval()
    probe = torch.randn(2, 5, 4, generator=g)
    z = spatial.fc(probe).detach()
    for domain in (0, 1):
        bn = spatial.bn[domain]
        want = F.relu((z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * spatial.bn_weight + spatial.bn_bias)
        assert_close(spatial(probe, domain=domain), want, atol=1e-5, what=f"eval BN, domain {domain}")
    assert (spatial(probe, domain=0) - spatial(probe, domain=1)).abs().max() > 0.1   # the domain matters
    # the test-time path of main() (VideoModel(x) with its default domain) uses the target statistics
    net = baselines.VideoModel(4, 3, 5, temporal="pooling", adabn=True)
    net.spatial = spatial                                                   # the 3-wide module above
    net.eval()
    assert torch.equal(net(probe)[0], spatial(probe, domain=1))


def test_adabn_step_updates_target_statistics_without_target_gradients():
    torch.manual_seed(0)
    model = baselines.build_model(data.parse_args(baselines.Args, ["--method", "adabn", "--temporal", "pooling"]),
                                  8, 3, "pooling")
    x_s, y_s, x_t = torch.randn(6, 5, 8), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(4, 5, 8) + 5
    loss, _ = baselines.adabn_step(model, x_s, y_s, x_t)
    bn_s, bn_t = model["net"].spatial.bn
    assert bn_s.num_batches_tracked == 1 and bn_t.num_batches_tracked == 1
    z_t = model["net"].spatial.fc(x_t).detach().flatten(0, 1)
    assert_close(bn_t.running_mean, 0.1 * z_t.mean(0), atol=1e-6, what="one momentum-0.1 update")
    loss.backward()
    assert model["net"].spatial.bn_weight.grad is not None


# ---- 3. MCD's three steps -----------------------------------------------------------------------

def test_mcd_steps_update_only_their_players():
    args = data.parse_args(baselines.Args, ["--method", "mcd", "--temporal", "relation"])
    torch.manual_seed(0)
    model = baselines.build_model(args, 8, 4, "relation")
    net = model["net"]
    opt_g, opt_f = baselines.make_optimizers(model, args)
    params_g, params_f = baselines.mcd_params(net)
    assert len(params_g) + len(params_f) == len(list(model.parameters()))
    x_s, y_s, x_t = torch.randn(6, 5, 8), torch.tensor([0, 1, 2, 3, 0, 1]), torch.randn(5, 5, 8)
    # step A: source CE of both classifiers (dropout off so the values can be recomputed)
    model.eval()
    v = net(x_s)[2]
    want_a = F.cross_entropy(net.classifier(v), y_s) + F.cross_entropy(net.classifier_2(v), y_s)
    assert_close(baselines.mcd_step_a(net, x_s, y_s), want_a, atol=1e-6, what="step A")
    # step B: CE − d on target, with no gradient into G
    loss_b, disc = baselines.mcd_step_b(net, x_s, y_s, x_t)
    v_t = net(x_t)[2]
    assert_close(disc, baselines.classifier_discrepancy(net.classifier(v_t), net.classifier_2(v_t)), atol=1e-7)
    assert_close(loss_b, want_a - disc, atol=1e-6, what="step B")
    before_g = [p.detach().clone() for p in params_g]
    baselines.sgd_step(model, loss_b, [opt_f], params_f, 20.0)
    assert all(p.grad is None for p in params_g)
    assert all(torch.equal(p, q) for p, q in zip(params_g, before_g))
    # step C: only G moves
    before_f = [p.detach().clone() for p in params_f]
    baselines.sgd_step(model, baselines.mcd_step_c(net, x_t), [opt_g], params_g, 20.0)
    assert all(torch.equal(p, q) for p, q in zip(params_f, before_f))
    assert any(not torch.equal(p, q) for p, q in zip(params_g, before_g))


# ---- 4. every method trains one step; smoke runs ----------------------------------------------------

CASES = [("source-only", "relation"), ("target-only", "pooling"), ("dann", "relation"), ("dann", "pooling"),
         ("jan", "relation"), ("adabn", "pooling"), ("mcd", "relation"), ("cdan", "pooling"),
         ("cdan-e", "relation"), ("tsn", "auto"), ("trn", "auto")]


@pytest.mark.parametrize("method, temporal", CASES)
def test_each_method_trains_one_step(tmp_path, monkeypatch, method, temporal):
    flags = ["--method", "cdan", "--cdan-entropy"] if method == "cdan-e" else ["--method", method]
    argv = flags + ["--temporal", temporal, "--seed", "5", "--out", str(tmp_path)] + ONE_STEP
    loaded = []
    real_load_pair = data.load_pair
    monkeypatch.setattr(data, "load_pair", lambda args, with_target_train=True:
                        loaded.append(with_target_train) or real_load_pair(args, with_target_train))
    m = baselines.main(argv)
    # DG baselines and source-only never load target training data; the DA methods and target-only do
    assert loaded == [method not in ("source-only", "tsn", "trn")]
    assert len(m["epochs"]) == 1 and m["method"] == ("cdan" if method == "cdan-e" else method)
    row = m["epochs"][0]
    assert all(math.isfinite(v) for k, v in row.items() if isinstance(v, float))
    assert m["train_sampling"] == ("random" if method in ("tsn", "trn") else "center")
    # every parameter of every module the method owns has moved from its seeded initial value
    args = data.parse_args(baselines.Args, argv)
    data.seed_everything(5)
    init = baselines.build_model(args, 16, 12, m["temporal"])
    trained = torch.load(os.path.join(tmp_path, "checkpoint.pt"), weights_only=False)["state"]["model"]
    for name, p0 in init.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert trained[name] == 1, name
        else:
            assert not torch.equal(trained[name], p0), f"{name} did not change"


def test_smoke_run_outputs_and_accuracy(tmp_path, capsys):
    out = tmp_path / "dann"
    m = baselines.main(["--method", "dann", "--temporal", "relation", "--seed", "1", "--out", str(out),
                        "--synth-dim", "32", "--epochs", "3", "--lr", "0.1", "--batch-size", "32"])
    for f in ("metrics.json", "epochs.csv", "checkpoint.pt"):
        assert os.path.isfile(out / f), f
    stored = json.load(open(out / "metrics.json"))
    assert stored["complete"] and stored["method"] == "dann" and stored["temporal"] == "relation"
    assert stored["args"]["method"] == "dann" and stored["args"]["epochs"] == 3 and stored["synthetic"]
    for key in ("last", "source_selected", "oracle"):
        assert 0 <= m["final"][key]["top1"] <= 1 and np.array(m["final"][key]["confusion"]).sum() == 360
    assert m["final"]["last"]["top1"] > 0.4                                  # chance is 1/12
    rows = m["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(0 < r["loss_sd"] < 1 and 0 < r["loss_td"] < 1 for r in rows)  # near ln 2: the adversarial game
    # the official lr rule: 45 steps per epoch (ceil(1438/32) = 45, ceil(840/18) = 47; the shorter domain ends the
    # epoch), after the last step of epoch 1 p = (44 + 1 · 45) / (3 · 45)
    assert_close(rows[0]["lr"], 0.1 / (1 + 10 * 89 / 135) ** 0.75, atol=1e-9, what="lr after epoch 1")
    assert "SYNTHETIC" in capsys.readouterr().out


def test_smoke_run_source_only_pooling_and_default_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = baselines.main(["--method", "source-only", "--temporal", "pooling"] + SMOKE)
    folder = tmp_path / "runs" / "baselines_source-only_pooling_synth2-a_synth2-b_s1"
    assert os.path.isfile(folder / "metrics.json") and m["args"]["out"].endswith("s1")
    assert m["final"]["last"]["top1"] > 0.2 and m["parameters"] == 32 * 512 + 512 + 512 * 12 + 12


def test_mcd_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    """Both MCD optimizers (and the lr they carry) go into the checkpoint."""
    common = ["--method", "mcd", "--temporal", "pooling", "--synth-dim", "16", "--epochs", "3", "--batch-size",
              "1024", "--mcd-steps", "1"]
    full = baselines.main(common + ["--out", str(tmp_path / "a")])
    real = baselines.train_one_epoch

    def killed_in_epoch_3(run, model, optimizers, args, epoch, sampling):
        if epoch == 3:
            raise KeyboardInterrupt("killed")
        return real(run, model, optimizers, args, epoch, sampling)
    monkeypatch.setattr(baselines, "train_one_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        baselines.main(common + ["--out", str(tmp_path / "b")])
    monkeypatch.setattr(baselines, "train_one_epoch", real)
    resumed = baselines.main(common + ["--out", str(tmp_path / "b"), "--resume"])
    assert resumed["epochs"] == full["epochs"] and resumed["final"] == full["final"]


# ---- 5. command line --------------------------------------------------------------------------------

def test_help_lists_shared_and_method_flags():
    out = subprocess.run([sys.executable, "baselines.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--source", "--target", "--data-root", "--device", "--epochs", "--batch-size", "--lr", "--seed",
                 "--out", "--resume", "--method", "--temporal", "--jan-weight", "--mcd-steps", "--cdan-entropy",
                 "--train-sampling"):
        assert flag in out.stdout, flag


BAD_COMBINATIONS = [
    (["--method", "tsn", "--temporal", "relation"], "use --method trn"),
    (["--method", "dann", "--cdan-entropy"], "--cdan-entropy applies"),
    (["--method", "dann", "--jan-weight", "2"], "--jan-weight applies to --method jan"),
    (["--method", "jan", "--mcd-steps", "2"], "--mcd-steps applies to --method mcd"),
    (["--method", "mcd", "--beta-video", "1"], "--beta-video applies to --method dann"),
]


@pytest.mark.parametrize("argv, message", BAD_COMBINATIONS)
def test_bad_combination_is_one_error_line(argv, message):
    out = subprocess.run([sys.executable, "baselines.py", *argv, *TINY], cwd=REPO, capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


# ---- EPIC-100 two heads (--label verb+noun): every softmax and entropy within a head ----

def test_two_heads_discrepancy_cdan_map_and_entropy_by_hand():
    heads = (2, 3)
    l1 = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]])
    l2 = torch.tensor([[math.log(3.0), 0.0, 0.0, 0.0, 0.0]])                    # verb head (0.75, 0.25), noun uniform
    # Eq. (8) per head: verb mean |0.5 − 0.75|, |0.5 − 0.25| = 0.25; noun 0; mean over heads 0.125
    assert_close(baselines.classifier_discrepancy(l1, l2, heads), 0.125, atol=1e-7, what="d two heads")
    features = torch.tensor([[2.0, -1.0]])
    t = baselines.multilinear_map(features, l2, heads)                            # (1, 5·2)
    want = torch.tensor([0.75, 0.25, 1 / 3, 1 / 3, 1 / 3])[:, None] * features    # softmax within each head
    assert_close(t, want.flatten()[None], atol=1e-6, what="f ⊗ softmax per head")
    h = baselines.entropy(l2, heads)
    want_h = 0.5 * (-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + math.log(3))
    assert_close(h, [want_h], atol=1e-6, what="mean of the heads' entropies")
    assert_close(baselines.entropy(l1), [math.log(5)], atol=1e-6, what="one head: over all outputs")
