"""apn.py: the attention block (a loop reference, the causal mask), the pyramid's levels against their equations,
relation windows, the ascent (Eq. 5 exactly, the objective rises, chains independent), the γ-ensemble rules, the
stratified source split, that no target tensor reaches training, one step of every ablation, an in-process smoke
run, --help and bad input."""
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import apn
import data
from helpers import assert_close

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(hidden_dim=8, num_segments=5, num_classes=3, heads=2, frame_dropout=0.0, attention_dropout=0.0,
            shared_block=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny: extra intra-op threads only add synchronisation (10-40x slower on a busy
    2-core machine), so this file runs on one thread and restores the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def tiny_model(seed=0, in_dim=6, **kw):
    torch.manual_seed(seed)
    model = apn.APN(in_dim, **{**TINY, **kw}).double()
    for p in model.parameters():                   # O(1) weights so every path carries signal (init is N(0, 1e-3))
        torch.nn.init.normal_(p, 0.0, 0.5)
    return model.eval()


def tiny_args(**kw):
    args = data.parse_args(apn.Args, ["--ada-steps", "2", "--eta", "0.5"])
    for key, value in kw.items():
        setattr(args, key, value)
    return args


# ---- 1. the attention block ---------------------------------------------------------------------------------

def mha_loop(mha, queries, keys, causal):
    """The code's multi-head attention written as plain loops over batch, head and positions (float64)."""
    b, lq, dim = queries.shape
    h, dh = mha.heads, dim // mha.heads
    q, k, v = F.relu(mha.query(queries)), F.relu(mha.key(keys)), F.relu(mha.value(keys))
    out = torch.zeros(b, lq, dim, dtype=torch.float64)
    for n in range(b):
        for head in range(h):
            cols = slice(head * dh, (head + 1) * dh)
            for i in range(lq):
                allowed = range(i + 1) if causal else range(keys.shape[1])
                s = torch.stack([q[n, i, cols] @ k[n, j, cols] / math.sqrt(dh) for j in allowed])
                w = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
                out[n, i, cols] = sum(w[a] * v[n, j, cols] for a, j in enumerate(allowed))
    x = out + queries
    std = torch.sqrt(((x - x.mean(-1, keepdim=True)) ** 2).sum(-1, keepdim=True) / (dim - 1))     # unbiased
    return mha.norm.gain * (x - x.mean(-1, keepdim=True)) / (std + 1e-8) + mha.norm.bias


def test_layer_norm_by_hand():
    norm = apn.LayerNorm(4).double()
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    std = math.sqrt(5 / 3)                          # unbiased std of 1..4: Σ(x − 2.5)² = 5, / (4 − 1)
    assert_close(norm(x), [[-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std]], atol=1e-7, what="layer norm")


@pytest.mark.parametrize("causal,lq,lk", [(True, 4, 4), (False, 5, 3), (False, 1, 2)])
def test_multi_head_attention_matches_loops(causal, lq, lk):
    torch.manual_seed(1)
    mha = apn.MultiHeadAttention(6, heads=3, dropout=0.0).double()
    for p in mha.parameters():
        torch.nn.init.normal_(p, 0.0, 0.6)
    q, k = torch.randn(2, lq, 6, dtype=torch.float64), torch.randn(2, lk, 6, dtype=torch.float64)
    assert_close(mha(q, k, causal=causal), mha_loop(mha, q, k, causal), atol=1e-10, what="MHA vs loops")


def test_causal_mask_position_i_sees_only_the_past():
    mha = tiny_model().block("global").decoder_attention
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    later = x.clone()
    later[:, 3:] += 5.0                             # change positions 3, 4 only
    assert_close(mha(later, later, causal=True)[:, :3], mha(x, x, causal=True)[:, :3], atol=1e-12,
                 what="causal: positions 0..2 must ignore 3..4")
    assert not torch.allclose(mha(later, later)[:, :3], mha(x, x)[:, :3])      # without the mask they do not


def test_attention_block_shapes_and_dependencies():
    block = tiny_model().block("cross")
    query, key = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    out = block(query, key)
    assert out.shape == (2, 5, 8)                   # the query's length: R^II_m has R^I_G's M rows (Eq. 6)
    q2 = query.clone()
    q2[:, 4] += 3.0
    assert_close(block(q2, key)[:, :4], out[:, :4], atol=1e-12, what="decoder is causal in the query")
    k2 = key.clone()
    k2[:, 2] += 3.0                                 # the last key reaches even the first query position
    assert (block(query, k2)[:, 0] - out[:, 0]).abs().max() > 1e-6


# ---- 2. relations and the pyramid ---------------------------------------------------------------------------

def test_relation_windows():
    comb = apn.relation_windows(5, "combinations")
    assert [len(w) for w in comb] == [math.comb(5, 4), math.comb(5, 3), math.comb(5, 2)]       # 5, 10, 10
    for w in comb:
        assert (w[:, 1:] > w[:, :-1]).all() and len({tuple(r) for r in w.tolist()}) == len(w)
    assert comb[2].tolist()[:4] == [[0, 1], [0, 2], [0, 3], [0, 4]]                  # not only neighbours
    cons = apn.relation_windows(5, "consecutive")
    assert [tuple(w.shape) for w in cons] == [(2, 4), (3, 3), (4, 2)]        # scales M−1..2, M−m+1 windows
    assert cons[1].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert [len(w) for w in apn.relation_windows(3, "consecutive")] == [2]   # M = 3: one local scale
    draw = apn.sample_windows(cons, torch.Generator().manual_seed(0))
    assert [tuple(w.shape) for w in draw] == [(1, 4), (1, 3), (1, 2)]
    assert all(any(torch.equal(d[0], r) for r in w) for d, w in zip(draw, cons))


def test_relation_sampler_draws_per_forward_or_per_batch():
    windows = apn.relation_windows(5, "combinations")
    same = lambda a, b: all(torch.equal(u, v) for u, v in zip(a, b))
    # code: a new draw at every call, training and test alike, from the given generator
    g, twin = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for training in (True, False):
        relations = apn.relation_sampler(windows, "forward", g, training)
        draws = [relations() for _ in range(6)]
        assert all(tuple(w.shape) == (1, m) for d in draws for w, m in zip(d, (4, 3, 2)))
        assert all(same(d, apn.sample_windows(windows, twin)) for d in draws)     # exactly the generator's draws
        assert not all(same(draws[0], d) for d in draws[1:])
    # ours: training draws once when the batch starts, every forward reuses it; test gets every subset
    relations = apn.relation_sampler(windows, "batch", torch.Generator().manual_seed(7), training=True)
    assert same(relations(), relations()) and [len(w) for w in relations()] == [1, 1, 1]
    assert same(relations(), apn.sample_windows(windows, torch.Generator().manual_seed(7)))
    assert apn.relation_sampler(windows, "batch", g, training=False)() is windows


@pytest.mark.parametrize("batch,kind,train", [(1, "consecutive", True), (3, "consecutive", False),
                                              (2, "combinations", False)])
def test_pyramid_levels_follow_eqs_6_7(batch, kind, train):
    model = tiny_model(shared_block=False)
    x = torch.randn(batch, 5, 6, dtype=torch.float64)
    windows = apn.relation_windows(5, kind)
    if train:
        windows = apn.sample_windows(windows, torch.Generator().manual_seed(3))
    p = model(x, windows)
    for level in ("global", "II", "III"):
        assert p[level].shape == (batch, 5, 8)      # every level is M × d
    f = model.encode(x)
    r_global = model.block("global")(f, f)
    # Eq. (6)-(7) window by window: R^II = Σ_m mean_w AB(R^I_G, AB(F_w, F_w))
    r2 = sum(torch.stack([model.block("cross")(r_global, model.block("local")(f[:, w], f[:, w])) for w in win])
             .mean(0) for win in windows)
    assert_close(p["global"], r_global, atol=1e-12, what="R^I_G")
    assert_close(p["II"], r2, atol=1e-10, what="R^II")
    assert_close(p["III"], r2 + r_global, atol=1e-10, what="R^III = R^II + R^I_G")


def test_shared_and_unshared_blocks():
    assert len(tiny_model().blocks) == 1 and len(tiny_model(shared_block=False).blocks) == 3
    model = tiny_model(shared_block=False)
    assert model.block("global") is not model.block("cross")


# ---- 3. video ADA ----------------------------------------------------------------------------------------------

def ascent_case(level_set=("II", "III"), gamma=0.5):
    model = tiny_model(seed=4)
    x0 = torch.randn(4, 5, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    windows = apn.sample_windows(apn.relation_windows(5, "consecutive"), torch.Generator().manual_seed(1))
    return model, x0, y, windows


def fixed(windows):
    return lambda: windows                          # the same relation subsets for every forward


def objective_at(model, x, x0, y, windows, gamma, level):
    with torch.no_grad():
        return apn.ada_objective(model, model(x, windows), model(x0, windows), y, gamma, level).item()


@pytest.mark.parametrize("level", ["II", "III", "hidden"])
def test_ascent_steps_increase_the_maximized_objective(level):
    model, x0, y, windows = ascent_case()
    start = objective_at(model, x0, x0, y, windows, 0.5, level)
    with torch.no_grad():                           # at X_0 the transport cost is exactly 0: objective = CE
        ce = F.cross_entropy(model.classify(apn.ada_features(model(x0, windows), level)[0]), y).item()
    assert start == pytest.approx(ce, abs=1e-12)
    values = [start]
    for steps in (1, 2, 3):
        x = apn.adversarial_examples(model, x0, y, fixed(windows), gamma=0.5, levels=(level,), steps=steps, eta=0.2,
                                     train_mode=False)[0]
        values.append(objective_at(model, x, x0, y, windows, 0.5, level))
    assert all(b > a + 1e-6 for a, b in zip(values, values[1:])), values
    assert not model.training                       # the mode is restored


def test_one_ascent_step_is_eq_5_and_the_level_chains_are_independent():
    model, x0, y, windows = ascent_case()
    both = apn.adversarial_examples(model, x0, y, fixed(windows), gamma=0.5, levels=("II", "III"), steps=2, eta=0.3,
                                    train_mode=False)
    assert both.shape == (2, 4, 5, 6)
    for i, level in enumerate(("II", "III")):
        x = x0.clone().requires_grad_(True)
        with torch.no_grad():
            p0 = model(x0, windows)
        grad, = torch.autograd.grad(apn.ada_objective(model, model(x, windows), p0, y, 0.5, level), x)
        one = apn.adversarial_examples(model, x0, y, fixed(windows), gamma=0.5, levels=(level,), steps=1, eta=0.3,
                                       train_mode=False)[0]
        assert_close(one, x0 + 0.3 * grad, atol=1e-12, what=f"Eq. (5) level {level}")
        alone = apn.adversarial_examples(model, x0, y, fixed(windows), gamma=0.5, levels=(level,), steps=2, eta=0.3,
                                         train_mode=False)[0]
        assert_close(both[i], alone, atol=1e-10, what=f"batched chain {level} == its own chain")
    assert sum(p.grad is not None for p in model.parameters()) == 0          # the ascent leaves θ's grads alone


def test_r0_once_alg1_or_before_every_step_code_with_a_draw_per_forward():
    """Two steps, two levels, a scripted sequence of relation draws: R_0 (once, or before every step) and each chain's
    forward take the draws in loop order, and every step is Eq. (5) from the previous point."""
    model, x0, y, _ = ascent_case()
    every = apn.relation_windows(5, "combinations")
    draws = [apn.sample_windows(every, torch.Generator().manual_seed(s)) for s in range(6)]
    with torch.no_grad():
        r0 = [model(x0, d) for d in draws]          # the pyramid at X_0 under each draw

    def step(x, ref, d, level):
        x = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(apn.ada_objective(model, model(x, d), ref, y, 0.5, level), x)
        return x.detach() + 0.3 * grad

    # draw order: code  R_0 d0, II d1, III d2 | R_0 d3, II d4, III d5;  Alg. 1  R_0 d0, II d1, III d2 | II d3, III d4
    plans = {True: ((0, 1, 3, 4), (0, 2, 3, 5)), False: ((0, 1, 0, 3), (0, 2, 0, 4))}
    for recompute, plan in plans.items():
        script = iter(draws)
        got = apn.adversarial_examples(model, x0, y, lambda: next(script), gamma=0.5, levels=("II", "III"), steps=2,
                                       eta=0.3, train_mode=False, recompute_reference=recompute)
        for i, (level, (a, b, c, d)) in enumerate(zip(("II", "III"), plan)):
            want = step(step(x0, r0[a], draws[b], level), r0[c], draws[d], level)
            assert_close(got[i], want, atol=1e-10, what=f"recompute={recompute} level {level}")
        assert len(list(script)) == (0 if recompute else 1)                   # R_0 once: one draw fewer


class CountingSGD(torch.optim.SGD):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


@pytest.mark.parametrize("variant", ["alg1", "code"])
def test_alg1_updates_three_times_code_once_on_the_joint_batch(variant):
    model = tiny_model(seed=5)
    x, y = torch.randn(4, 5, 6, dtype=torch.float64), torch.tensor([2, 0, 1, 1])
    windows = apn.sample_windows(apn.relation_windows(5, "combinations"), torch.Generator().manual_seed(2))
    args = tiny_args(ada_variant=variant)
    with torch.no_grad():
        clean = F.cross_entropy(model.classify(model(x, windows)["III"]), y).item()
    if variant == "code":                           # the loss of the one step: CE(h(R^III)) over [X, X^II, X^III]
        x_adv = apn.adversarial_examples(model, x, y, fixed(windows), gamma=0.1, levels=("II", "III"), steps=2,
                                         eta=0.5, train_mode=True, recompute_reference=True)
        with torch.no_grad():
            joint = F.cross_entropy(model.classify(model(torch.cat([x, *x_adv]), windows)["III"]), y.repeat(3)).item()
    opt = CountingSGD(model.parameters(), lr=0.05)
    stats = apn.apn_step(model, opt, x, y, fixed(windows), 0.1, args)
    assert opt.steps == (3 if variant == "alg1" else 1)
    if variant == "alg1":
        assert stats["loss"] == pytest.approx(clean, abs=1e-12) and "adv_loss" in stats          # line 5 first
    else:
        assert stats["loss"] == pytest.approx(joint, abs=1e-12) and "adv_loss" not in stats
    assert 0 < stats["perturbation"] < 10


def test_normalized_step_moves_each_video_by_the_relative_step():
    model, x0, y, windows = ascent_case()
    x = apn.adversarial_examples(model, x0, y, fixed(windows), gamma=0.5, levels=("II", "III"), steps=1, eta=1.0,
                                 train_mode=False, relative_step=0.1)
    moved = (x - x0).flatten(2).norm(dim=2)                                   # (L, B)
    assert_close(moved, 0.1 * x0.flatten(1).norm(dim=1).expand(2, -1), atol=1e-10, what="‖ΔX‖ = 0.1‖X_0‖")
    for i, level in enumerate(("II", "III")):                                 # and it still climbs
        assert objective_at(model, x[i], x0, y, windows, 0.5, level) > objective_at(model, x0, x0, y, windows, 0.5,
                                                                                    level)


def test_transport_cost_is_mean_squared_difference():
    r0 = torch.zeros(2, 3, 4)
    r = torch.zeros(2, 3, 4)
    r[0, 0, 0], r[1, 2, 3] = 2.0, -1.0
    assert apn.transport_cost(r, r0).item() == pytest.approx((4.0 + 1.0) / 24)


# ---- 4. the γ-ensemble -------------------------------------------------------------------------------------------

def test_ensemble_picks_the_most_confident_member():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 1.0]],     # video 0: member 1 (conf ≈ 1)
                           [[5.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]],     # video 1: member 0
                           [[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 3.0]]])    # video 2: member 2
    picked = apn.ensemble(logits, "max-confidence")
    assert_close(picked, logits[[0, 1, 2], [1, 0, 2]], atol=0, what="max-confidence")
    assert picked.argmax(1).tolist() == [1, 0, 2]
    avg = apn.ensemble(logits, "softmax-average")
    e = math.exp
    want = math.log((e(2) / (e(2) + 2) + 1 / (2 + e(9)) + 1 / (2 + e(1))) / 3)     # video 0, class 0, by hand
    assert avg[0, 0].item() == pytest.approx(want, abs=1e-6)
    assert_close(avg.exp().sum(1), torch.ones(3), atol=1e-6, what="averaged softmax sums to 1")


# ---- 5. protocol: the source split and the target guard ----------------------------------------------------------

def test_stratified_split_70_30():
    split = data.make_synthetic_split("synth2-a", "train", 0, 4)
    train, val = apn.stratified_split(split, 0.3, seed=0)
    counts = np.bincount(split.labels, minlength=12)
    assert (np.bincount(val.labels, minlength=12) == np.round(0.3 * counts)).all()
    assert len(train) + len(val) == len(split) and not set(train.videos) & set(val.videos)
    assert (train.offsets == split.offsets[[int(v.split("-")[-1]) for v in train.videos]]).all()
    again, _ = apn.stratified_split(split, 0.3, seed=0)
    other, _ = apn.stratified_split(split, 0.3, seed=1)
    assert again.videos == train.videos and other.videos != train.videos


class GuardedFeatures:
    """Stands in for a target split's features: every read is recorded with whether autograd was on and whether
    it came through data.predict_split (the no_grad evaluation)."""

    def __init__(self, array):
        self.array, self.shape, self.reads = array, array.shape, []

    def __getitem__(self, rows):
        import traceback
        callers = [f.name for f in traceback.extract_stack()]
        self.reads.append((torch.is_grad_enabled(), "predict_split" in callers, "train_one_epoch" in callers))
        return self.array[rows]


def test_no_target_tensor_reaches_training(tmp_path, monkeypatch):
    made, guards, runs = [], {}, []
    real_make, real_run = data.make_synthetic_split, data.Run

    def make(domain, part, seed=0, dim=128):
        made.append((domain, part))
        split = real_make(domain, part, seed, dim)
        if domain != "synth2-a":
            split.features = guards.setdefault(domain, GuardedFeatures(split.features.numpy()))
        return split

    class SpyRun(real_run):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            runs.append(self)

    monkeypatch.setattr(data, "make_synthetic_split", make)
    monkeypatch.setattr(data, "Run", SpyRun)
    m = apn.main(["--synth-dim", "8", "--hidden-dim", "8", "--epochs", "1", "--gammas", "1", "--ada-steps", "1",
                  "--batch-size", "256", "--val-fraction", "0.3", "--out", str(tmp_path)])
    assert runs[0].data.target_train is None
    # the paper's split: 30 % of the train list selects, the held-out list is an in-domain test of the last model
    counts = np.bincount(data.make_synthetic_split("synth2-a", "train", 0, 8).labels)
    assert m["source_split"]["select"] == int(np.round(0.3 * counts).sum()) == len(runs[0].data.source_val)
    assert m["source_split"]["train"] + m["source_split"]["select"] == 1438
    assert m["source_split"]["held_out_test"] == 571
    assert 0 <= m["source_test_last"]["source_test_top1"] <= 1
    assert not any(part == "train" and domain != "synth2-a" for domain, part in made)   # never even generated
    for domain in ("synth2-b", "synth2-c"):
        reads = guards[domain].reads
        assert reads and all(grad is False and via_eval and not in_train for grad, via_eval, in_train in reads)


def test_replay_hands_back_the_logits_in_order():
    a, b = torch.randn(5, 3), torch.randn(4, 3)
    predict = apn.replay(a, b)
    for rows, want in ((3, a[:3]), (2, a[3:]), (4, b)):                     # end_epoch: selection split, then target
        assert_close(predict(torch.zeros(rows, 5, 2)), want, atol=0, what="replayed logits")
    with pytest.raises(AssertionError):
        predict(torch.zeros(1, 5, 2))


def test_evaluation_with_random_test_relations_is_repeatable():
    split = data.make_synthetic_split("synth2-b", "val", 0, 6)
    torch.manual_seed(0)
    models = torch.nn.ModuleList([apn.APN(6, **{**TINY, "num_classes": 12}) for _ in range(2)]).eval()
    windows = apn.relation_windows(5, "combinations")

    def logits(seed, draw="forward"):
        args = tiny_args(seed=seed, relation_draw=draw, num_segments=5)
        run = SimpleNamespace(args=args, device=torch.device("cpu"), data=SimpleNamespace(num_classes=12))
        stats, protocol = apn.evaluate(run, models, windows, {"t": split}, ["gamma1", "gamma2"])
        assert set(stats) >= {"t_top1", "t_maxconf_top1", "t_softavg_top1", "t_gamma1_top1", "t_gamma2_top1"}
        return protocol["t"]

    assert torch.equal(logits(1), logits(1))                          # every split starts its draws from --seed
    assert not torch.allclose(logits(1), logits(2))                   # ... and they are random draws
    assert torch.equal(logits(1, "batch"), logits(2, "batch"))        # every subset at test: no draw at all


# ---- 6. every ablation trains one step ---------------------------------------------------------------------------

@pytest.mark.parametrize("change", [dict(ada=False), dict(ada_from="level2"), dict(ada_from="level3"),
                                    dict(ada_from="last-hidden"), dict(ada_variant="code"),
                                    dict(ascent_train_mode=True), dict(relations="consecutive"),
                                    dict(relation_draw="batch"), dict(shared_block=False)])
def test_each_ablation_trains_one_step(change):
    args = tiny_args(**change)
    model = apn.APN(6, **{**TINY, "shared_block": args.shared_block, "frame_dropout": 0.5,
                          "attention_dropout": 0.3}).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(7, 5, 6), torch.randint(0, 3, (7,))
    relations = apn.relation_sampler(apn.relation_windows(5, args.relations), args.relation_draw,
                                     torch.Generator().manual_seed(0), training=True)
    stats = apn.apn_step(model, opt, x, y, relations, 0.1, args)
    assert all(math.isfinite(v) for v in stats.values())
    assert ("perturbation" in stats) == args.ada
    assert ("adv_loss" in stats) == (args.ada and args.ada_variant == "alg1")
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model.training


# ---- 7. whole runs -----------------------------------------------------------------------------------------------

def test_smoke_run(tmp_path, capsys):
    out = str(tmp_path / "run")
    m = apn.main(["--synth-dim", "16", "--hidden-dim", "16", "--epochs", "2", "--gammas", "0.1", "1",
                  "--ada-steps", "1", "--batch-size", "64", "--lr", "0.01", "--frame-dropout", "0.5", "--seed", "2",
                  "--out", out])
    for name in ("metrics.json", "epochs.csv", "checkpoint.pt"):
        assert os.path.isfile(os.path.join(out, name))
    stored = json.load(open(os.path.join(out, "metrics.json")))
    assert stored["args"]["target"] == ["synth2-b", "synth2-c"] and stored["args"]["gammas"] == ["0.1", "1"]
    assert stored["complete"] and stored["synthetic"]
    # the dg-tsn/dg-trn protocol: the whole source train list trains, the held-out source list (synth2-a val) selects
    assert stored["source_split"]["train"] == 1438 and stored["source_split"]["select"] == 571
    assert stored["source_test_last"] == {}
    for key in ("last", "source_selected", "oracle"):
        assert 0 <= m["final"][key]["top1"] <= 1
    for t in ("synth2-b", "synth2-c"):
        for rule in ("maxconf", "softavg", "gamma0.1", "gamma1"):
            for key in ("last", "source_selected", "oracle"):
                assert 0 <= m["targets"][t][rule][key]["top1"] <= 1
    # the first target through data.Run and through the extra bookkeeping are the same numbers
    # (random test relations: end_epoch is handed evaluate()'s logits, so the numbers are the same ones)
    assert m["targets"]["synth2-b"]["maxconf"]["last"]["top1"] == m["final"]["last"]["top1"]
    for row in m["epochs"]:
        assert row["synth2-b_top1"] == row["target_top1"] and row["select_top1"] == row["source_val_top1"]
    row = m["epochs"][-1]
    assert all(math.isfinite(v) for k, v in row.items() if isinstance(v, float))
    assert 0 < row["perturbation"] < 1
    # clearly above chance (1/12) on both unseen domains
    assert m["final"]["last"]["top1"] > 0.35 and row["synth2-c_top1"] > 0.2          # chance: 1/12
    chosen = max(m["epochs"], key=lambda r: (r["select_top1"], r["epoch"]))        # ties: the latest (data.py)
    assert m["final"]["source_selected"]["epoch"] == chosen["epoch"]
    assert "SYNTHETIC" in capsys.readouterr().out


def test_eval_only_reproduces_every_target_and_the_summary_names_them(tmp_path, capsys):
    """--eval-only on best_source.pt gives the trained run's numbers on every target (same test relation draws),
    and both summary lines name each target."""
    common = ["--synth-dim", "16", "--hidden-dim", "16", "--gammas", "0.1", "1", "--seed", "3"]
    trained = apn.main([*common, "--epochs", "1", "--ada-steps", "1", "--batch-size", "64", "--lr", "0.01",
                        "--out", str(tmp_path / "run")])
    first = capsys.readouterr().out.strip().splitlines()[-1]
    tested = apn.main([*common, "--eval-only", "--checkpoint", str(tmp_path / "run" / "best_source.pt"),
                       "--out", str(tmp_path / "eval")])
    second = capsys.readouterr().out.strip().splitlines()[-1]
    for t in ("synth2-b", "synth2-c"):
        for rule in ("maxconf", "softavg", "gamma0.1", "gamma1"):
            assert tested["targets"][t][rule]["last"]["top1"] == trained["targets"][t][rule]["last"]["top1"]
        value = f"{100 * trained['targets'][t]['maxconf']['last']['top1']:.2f}"
        assert f"{t} {value} / {value}" in first and f"{t} {value} / {value}" in second
    assert tested["evaluated_checkpoint"].endswith("best_source.pt") and len(tested["epochs"]) == 1


def run_cli(*argv):
    return subprocess.run([sys.executable, os.path.join(REPO, "apn.py"), *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_help_lists_shared_and_method_flags():
    r = run_cli("--help")
    assert r.returncode == 0
    for flag in ("--source", "--target", "--data-root", "--epochs", "--batch-size", "--lr", "--seed", "--device",
                 "--out", "--resume", "--gammas", "--ada-from", "--no-ada", "--relations", "--relation-draw",
                 "--ada-variant", "--ensemble", "--val-fraction"):
        assert flag in r.stdout, flag


@pytest.mark.parametrize("argv,message", [(["--gammas", "0.1", "x"], "--gammas"),
                                          (["--target", "synth2-a"], "must differ"),
                                          (["--target", "hmdb"], "both must be synthetic"),
                                          (["--num-segments", "2"], "--num-segments")])
def test_bad_input_is_one_error_line(argv, message):
    r = run_cli(*argv, "--epochs", "1", "--synth-dim", "8")
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in r.stderr
