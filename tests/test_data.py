"""data.py: the official layout, the packed cache, sampling, pairing, the synthetic benchmark, evaluation,
bad input and the run plumbing (output folder, resume). Tiny data is written by the tests themselves."""
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import data
from helpers import assert_close

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- helpers: write a dataset exactly as the official extractor does ------------------------------

def write_video(folder, frames, legacy=False):
    """One `img_%05d.t7` per frame (1-based), each a torch.save'd 1-D float32 tensor (video2feature.py)."""
    os.makedirs(folder, exist_ok=True)
    for t, x in enumerate(frames):
        torch.save(x.clone(), os.path.join(folder, "img_%05d.t7" % (t + 1)),
                   _use_new_zipfile_serialization=not legacy)


def make_layout(root, n_videos=6, dim=7, num_classes=3, dataset="hmdb51", part="train", seed=0,
                list_prefix=None, legacy=False):
    """A list file + features under root/<dataset>/RGB-Feature; returns (list path, {video: (T, D) tensor})."""
    g = torch.Generator().manual_seed(seed)
    videos, lines = {}, []
    for v in range(n_videos):
        n = 2 + v % 5
        x = torch.rand(n, dim, generator=g)
        name = f"v_{part}_{v:03d}"
        write_video(os.path.join(root, dataset, "RGB-Feature", name), x, legacy)
        videos[name] = x
        prefix = list_prefix or os.path.join(root, dataset, "RGB-Feature")
        lines.append(f"{prefix}/{name} {n} {v % num_classes}")
    path = os.path.join(root, dataset, f"list_{dataset}_{part}_hmdb_ucf-feature.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, videos


def load(path, root, num_classes=3, **kw):
    return data.load_split(path, num_classes, str(root), os.path.join(str(root), ".cache"), "test", **kw)


# ---- 1. the official layout, round trip -------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_official_layout_round_trip(tmp_path, legacy):
    path, videos = make_layout(tmp_path, legacy=legacy)
    split = load(path, tmp_path)
    assert len(split) == len(videos) and split.dim == 7
    for v, (name, x) in enumerate(videos.items()):
        got = np.asarray(split.features[split.offsets[v]:split.offsets[v] + split.lengths[v]])
        assert np.array_equal(got, x.numpy()), name              # bit-identical
        assert split.labels[v] == v % 3


def test_foreign_absolute_paths_are_rerooted(tmp_path):
    path, videos = make_layout(tmp_path, list_prefix="/home/someone/data/hmdb51/RGB-Feature")
    split = load(path, tmp_path)
    assert all(v.startswith(str(tmp_path)) for v in split.videos)
    x = next(iter(videos.values()))
    assert np.array_equal(np.asarray(split.features[:len(x)]), x.numpy())


def test_cache_is_reused_and_rebuilt_when_a_frame_or_the_list_changes(tmp_path):
    path, videos = make_layout(tmp_path)
    first = load(path, tmp_path)
    assert "packed cache" in first.origin
    cache_files = sorted(os.listdir(tmp_path / ".cache"))
    mtime = os.stat(tmp_path / ".cache" / cache_files[1]).st_mtime_ns
    again = load(path, tmp_path)                                   # reused: the array file is not rewritten
    assert os.stat(tmp_path / ".cache" / cache_files[1]).st_mtime_ns == mtime
    assert np.array_equal(np.asarray(again.features), np.asarray(first.features))

    name = next(iter(videos))                                     # rewrite one frame file
    new = torch.full((7,), 3.5)
    os.utime(tmp_path / "hmdb51" / "RGB-Feature" / name / "img_00001.t7", ns=(1, 1))  # any mtime change counts
    torch.save(new, tmp_path / "hmdb51" / "RGB-Feature" / name / "img_00001.t7")
    rebuilt = load(path, tmp_path)
    assert np.array_equal(np.asarray(rebuilt.features[0]), new.numpy())

    with open(path) as f:                                         # drop a video from the list
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[1:]) + "\n")
    assert len(load(path, tmp_path)) == len(videos) - 1


def test_named_datasets_resolve_to_official_list_names(tmp_path):
    args = data.RunArgs(source="ucf", target="hmdb", data_root=str(tmp_path))
    for domain, folder in (("ucf", "ucf101"), ("hmdb", "hmdb51")):
        for part in ("train", "val"):
            make_layout(tmp_path, dataset=folder, part=part, n_videos=4, num_classes=12)
            os.replace(tmp_path / folder / f"list_{folder}_{part}_hmdb_ucf-feature.txt",
                       tmp_path / folder / f"list_{folder}_{part}_hmdb_ucf-feature.txt")
    pair = data.load_pair(args)
    assert pair.num_classes == 12 and pair.class_names[0] == "climb" and pair.class_names[-1] == "walk"
    assert data.official_list("R", "hmdb", "val", "full") == os.path.join("R", "hmdb51",
                                                                            "list_hmdb51_val_hmdb_ucf-feature.txt")
    assert data.official_list("R", "ucf", "train", "full") == os.path.join("R", "ucf101",
                                                                             "list_ucf101_train_hmdb_ucf-feature.txt")
    assert len(data.OFFICIAL_CLASSES["hmdb_ucf_small"]) == 5 and len(data.OFFICIAL_CLASSES["ucf_olympic"]) == 6
    assert len(data.OFFICIAL_CLASSES["kinetics_gameplay"]) == 30


# ---- 2. sampling and pairing -------------------------------------------------------------------------

@pytest.mark.parametrize("n, expected_one_based", [(33, [4, 10, 17, 24, 30]), (100, [11, 31, 51, 71, 91]),
                                                   (4, [1, 2, 3, 4, 4]), (2, [1, 2, 2, 2, 2]), (5, [1, 2, 3, 4, 5])])
def test_center_sampling_equals_the_official_rule(n, expected_one_based):
    idx = data.sample_indices([n], 5)
    assert (idx[0] + 1).tolist() == expected_one_based


def test_random_sampling_stays_in_its_segment_and_clips_reduce_to_center():
    lengths = torch.tensor([5, 17, 33, 100, 3])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = data.sample_indices(lengths, 5, "random", generator=g)
        for v, n in enumerate(lengths.tolist()):
            if n >= 5:
                for k in range(5):
                    assert (k * n) // 5 <= idx[v, k] < -(-(k + 1) * n // 5)   # frames that overlap segment k
            else:
                assert idx[v].tolist() == [min(k, n - 1) for k in range(5)]
    assert torch.equal(data.sample_indices(lengths, 5, "clips", num_clips=1)[:, 0], data.sample_indices(lengths, 5))
    clips = data.sample_indices(lengths, 5, "clips", num_clips=3)
    assert clips.shape == (5, 3, 5) and (clips < lengths[:, None, None]).all()
    assert clips[3].tolist() == [[3, 23, 43, 63, 83], [10, 30, 50, 70, 90], [16, 36, 56, 76, 96]]


def test_pairing_sizes_follow_the_official_script():
    assert data.target_batch_size(128, 1438, 840) == 74
    assert data.target_batch_size(128, 840, 1438) == 219
    g = torch.Generator().manual_seed(0)
    steps = data.paired_batches(1438, 840, 128, 74, g)
    assert len(steps) == 12                                # min(ceil(1438/128)=12, ceil(840/74)=12)
    assert [len(s) for s, _ in steps[:11]] == [128] * 11 and len(steps[0][1]) == 74
    src = torch.cat([s for s, _ in steps])
    assert len(src.unique()) == len(src)                   # no repeats inside an epoch
    short = data.paired_batches(100, 10, 10, 5, g)
    assert len(short) == 2                                 # ends with the shorter domain
    cyc = data.paired_batches(100, 10, 10, 5, g, cycle=True)
    assert len(cyc) == 10 and all(len(t) == 5 for _, t in cyc)


# ---- the synthetic benchmark -------------------------------------------------------------------------

def test_synthetic_is_deterministic_per_seed_and_differs_across_seeds():
    a = data.make_synthetic_split("synth2-b", "val", seed=0, dim=16)
    b = data.make_synthetic_split("synth2-b", "val", seed=0, dim=16)
    c = data.make_synthetic_split("synth2-b", "val", seed=1, dim=16)
    assert torch.equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
    assert not torch.equal(a.features[:100], c.features[:100])
    sizes = {(d, p): len(data.make_synthetic_split(d, p, dim=8)) for d in data.SYNTHETIC_DOMAINS for p in ("train", "val")}
    assert sizes[("synth2-a", "train")] == 1438 and sizes[("synth2-a", "val")] == 571
    assert sizes[("synth2-b", "train")] == 840 and sizes[("synth2-b", "val")] == 360
    assert "synthetic" in a.name


def test_synthetic_order_twins_are_classes_0_and_1_only():
    """Classes 0/1 use the same sub-actions in opposite order; every other class has a sub-action set of its own."""
    recipes = data._synthetic_world(0, 8)["recipes"]
    assert list(recipes[0]) == list(recipes[1])[::-1] and len(set(recipes[0])) == 3
    assert len({frozenset(r) for r in recipes[2:]} | {frozenset(recipes[0])}) == data.SYNTH_CLASSES - 1
    for seed in (0, 1, 7):
        twins = data.synthetic_order_twins(seed)
        assert twins == [0, 1] and len(twins) <= 4            # the bound: at most 4 of 12 classes


def test_synthetic_features_look_like_pooled_relu_features():
    """Non-negative, with exact zeros (post-ReLU), from one renderer shared by every domain."""
    for domain in data.SYNTHETIC_DOMAINS:
        f = data.make_synthetic_split(domain, "val", 0, 32).features
        assert f.min() == 0 and torch.isfinite(f).all()
        assert 0.05 < (f == 0).float().mean() < 0.8
    # the shift is in the scene, not in the renderer: one scene rendered with every domain's world is one output
    world = data._synthetic_world(0, 16)
    rng = np.random.default_rng(0)
    pose, app, back = rng.normal(size=(4, data.SYNTH_POSE)), rng.normal(size=(2, data.SYNTH_APPEARANCE)), \
        rng.normal(size=(4, data.SYNTH_BACKGROUND))
    video = np.array([0, 0, 1, 1])
    out = data._render(world, pose, app, back, video)
    gain = 1 + 0.5 * np.tanh(app @ world["w_appearance"])
    hidden = np.maximum(0, pose @ world["w_pose"] * gain[video] + back @ world["w_background"] + world["b_hidden"])
    assert_close(torch.from_numpy(out), torch.from_numpy(data.RENDER_GAIN * np.maximum(
        0, hidden @ world["w_out"] + world["b_out"])), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("source,target", [("synth2-a", "synth2-b"), ("synth2-a", "synth2-c"), ("synth2-b", "synth2-c")])
def test_synthetic_shift_properties(source, target):
    """The issue's measured properties, at the default width and data seed: feature scales within tens of percent,
    domains separable frame by frame."""
    make = lambda d, part: data.make_synthetic_split(d, part, 0, 128)
    pair = data.DomainPair("x", [], make(source, "train"), make(source, "val"), make(target, "train"),
                           make(target, "val"), True)
    r = data.shift_report(pair)
    assert 0.8 <= r["norm_ratio"] <= 1.25 and 0.8 <= r["std_ratio"] <= 1.25
    assert r["domain_classifier"] >= 0.9


def _ordered_probe(split_train, split_test_list, pooled=False):
    """Logistic regression on the 5 centred frames (concatenated in order, or mean-pooled), standardised."""
    def frames(split):
        idx = data.sample_indices(split.lengths, 5)
        x = data.gather_frames(split, torch.arange(len(split)), idx).double()
        return x.mean(1) if pooled else x.flatten(1)
    x, y = frames(split_train), torch.as_tensor(split_train.labels)
    mean, sd = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1] + 1, data.SYNTH_CLASSES, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=150, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy((x - mean) / sd @ w[:-1] + w[-1], y) + 1e-3 * w[:-1].pow(2).sum()
        loss.backward()
        return loss
    optimizer.step(closure)
    with torch.no_grad():
        return [float((((frames(s) - mean) / sd @ w[:-1] + w[-1]).argmax(1) == torch.as_tensor(s.labels))
                      .double().mean()) for s in split_test_list]


def test_synthetic_shift_hurts_an_order_aware_linear_probe_on_every_pair():
    """A data property (no method file involved): a linear model on the ordered frames of one domain loses at least
    12 points on every other domain against the same model trained on that domain; a mean-pooled linear model
    stays within 15 points of the ordered one (order matters but does not dominate). The benchmark's own
    TemRelation/TemPooling numbers are in README (benchmark/compare.py)."""
    make = lambda d, part: data.make_synthetic_split(d, part, 0, 128)
    domains = data.SYNTHETIC_DOMAINS
    vals = [make(d, "val") for d in domains]
    accuracy = {d: _ordered_probe(make(d, "train"), vals) for d in domains}       # row: trained on d
    for i, d in enumerate(domains):
        pooled = _ordered_probe(make(d, "train"), [vals[i]], pooled=True)[0]
        assert 0 < accuracy[d][i] - pooled <= 0.15
        for j, t in enumerate(domains):
            if t != d:
                assert accuracy[t][i] <= accuracy[d][i] - 0.12, (t, d, accuracy[t][i], accuracy[d][i])


def test_retired_v1_domains_say_so_in_one_line():
    p = subprocess.run([sys.executable, os.path.join(REPO, "data.py"), "info", "--source", "synth-a", "--target",
                        "synth-b"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "retired v1 synthetic benchmark" in p.stderr
    assert "Traceback" not in p.stderr


# ---- 3. evaluation -------------------------------------------------------------------------------------

def test_accuracy_report_by_hand():
    logits = torch.tensor([[2.0, 0, 0], [0, 3, 0], [0, 3, 0], [1, 0, 0], [0, 0, 1]])
    labels = [0, 1, 0, 0, 2]
    r = data.accuracy_report(logits, labels, 3)
    assert r["top1"] == pytest.approx(4 / 5)
    assert r["class_mean"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert r["confusion"] == [[2, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_select_epochs_last_source_selected_oracle():
    rows = [{"epoch": e, "source_val_top1": s, "target_top1": t, "target_class_mean": t, "target_confusion": []}
            for e, s, t in [(1, 0.5, 0.4), (2, 0.9, 0.5), (3, 0.7, 0.8), (4, 0.9, 0.6), (5, 0.6, 0.8)]]
    f = data.select_epochs(rows)
    # source ties (epochs 2 and 4) go to the latest; oracle ties (epochs 3 and 5) to the earliest
    assert (f["last"]["epoch"], f["source_selected"]["epoch"], f["oracle"]["epoch"]) == (5, 4, 3)
    assert f["source_selected"]["top1"] == 0.6
    assert f["oracle"]["top1"] == 0.8 and "oracle" in f["oracle"]["rule"]


# ---- bad input: one line on stderr, non-zero exit, no traceback -------------------------------------

def run_info(*args):
    p = subprocess.run([sys.executable, os.path.join(REPO, "data.py"), "info", *args], capture_output=True,
                       text=True, cwd=REPO)
    return p.returncode, p.stderr


def bad_layout(tmp_path, kind):
    """A UCF->HMDB layout with exactly one problem of the given kind; returns extra CLI flags."""
    for folder in ("ucf101", "hmdb51"):
        for part in ("train", "val"):
            make_layout(tmp_path, dataset=folder, part=part, n_videos=3, num_classes=12)
    target = tmp_path / "hmdb51" / "list_hmdb51_train_hmdb_ucf-feature.txt"
    lines = target.read_text().splitlines()
    video = lines[0].split()[0]
    if kind == "malformed":
        lines[1] = "only_two fields"
    elif kind == "missing_frame":
        os.remove(os.path.join(video, "img_00002.t7"))
    elif kind == "wrong_shape":
        torch.save(torch.zeros(2, 7), os.path.join(video, "img_00001.t7"))
    elif kind == "wrong_dtype":
        torch.save(torch.zeros(7, dtype=torch.long), os.path.join(video, "img_00001.t7"))
    elif kind == "nan":
        torch.save(torch.full((7,), float("nan")), os.path.join(video, "img_00001.t7"))
    elif kind == "label":
        lines[0] = f"{video} 2 12"
    elif kind == "zero_frames":
        lines[0] = f"{video} 0 1"
    elif kind == "empty":
        lines = []
    target.write_text("\n".join(lines) + "\n")
    return ["--source", "ucf", "--target", "hmdb", "--data-root", str(tmp_path)]


@pytest.mark.parametrize("kind, words", [
    ("malformed", "malformed line"), ("missing_frame", "missing frame file"), ("wrong_shape", "wrong feature shape"),
    ("wrong_dtype", "wrong feature dtype"), ("nan", "NaN/inf"), ("label", "outside the class file"),
    ("zero_frames", "has 0 frames"), ("empty", "empty split")])
def test_bad_input_gives_one_clear_line(tmp_path, kind, words):
    code, err = run_info(*bad_layout(tmp_path, kind))
    assert code != 0 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], err
    if kind == "malformed":
        assert "list_hmdb51_train_hmdb_ucf-feature.txt:2" in lines[0]


@pytest.mark.parametrize("args, words", [
    (["--source", "ucf", "--target", "hmdb", "--data-root", "/nonexistent/vidda"], "data root not found"),
    (["--source", "ucf", "--target", "synth2-b"], "both must be synthetic"),
    (["--source", "ucf", "--target", "hmdb", "--data-root", "."], "list file not found"),
])
def test_missing_inputs_give_one_clear_line(args, words):
    code, err = run_info(*args)
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and words in err, err


def test_missing_class_file_and_class_count_mismatch(tmp_path):
    make_layout(tmp_path, dataset="ucf101", part="train", n_videos=3, num_classes=3)
    src = str(tmp_path / "ucf101" / "list_ucf101_train_hmdb_ucf-feature.txt")
    flags = ["--source-list", src, "--target-list", src, "--val-list", src, "--source-val-list", src]
    code, err = run_info(*flags, "--class-file", str(tmp_path / "nope.txt"), "--source", "x", "--target", "y",
                         "--data-root", str(tmp_path))
    assert code != 0 and "class file not found" in err and "Traceback" not in err
    (tmp_path / "two.txt").write_text("1 a\n2 b\n")                 # labels go up to 2: a 2-class file is too small
    code, err = run_info(*flags, "--class-file", str(tmp_path / "two.txt"), "--data-root", str(tmp_path))
    assert code != 0 and "outside the class file" in err and len(err.strip().splitlines()) == 1


def test_skip_bad_videos_lists_each_skipped_video(tmp_path):
    flags = bad_layout(tmp_path, "missing_frame")
    p = subprocess.run([sys.executable, os.path.join(REPO, "data.py"), "info", *flags, "--skip-bad-videos"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("skipped:") == 1 and "img_00002.t7" in p.stderr
    assert "hmdb51/list_hmdb51_train_hmdb_ucf-feature.txt: 2 videos" in p.stdout


def test_info_without_arguments_describes_the_synthetic_benchmark():
    p = subprocess.run([sys.executable, os.path.join(REPO, "data.py"), "info", "--synth-dim", "8"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "SYNTHETIC" in p.stdout and "synth2-a/train (synthetic): 1438 videos" in p.stdout
    assert "target batch for source batch 128: 74" in p.stdout


# ---- 4. run plumbing: output folder and resume ---------------------------------------------------------

@dataclass
class ToyArgs(data.RunArgs):
    hidden: int = 8


def toy_main(argv, crash_at=None):
    """A minimal training script written the way the method files are, on a tiny synthetic setting."""
    args = data.parse_args(ToyArgs, argv)
    run = data.Run(args, "toy")
    model = torch.nn.Sequential(torch.nn.Linear(args.synth_dim, args.hidden), torch.nn.ReLU(),
                                torch.nn.Dropout(0.3), torch.nn.Linear(args.hidden, 12))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    for epoch in run.epochs({"model": model, "optimizer": opt}):
        model.train()
        total = 0.0
        for step, (idx_s, _) in enumerate(run.pairs()):
            if crash_at == (epoch, step):
                raise KeyboardInterrupt("killed")
            x = run.frames(run.data.source_train, idx_s, mode="random").mean(1)
            loss = torch.nn.functional.cross_entropy(model(x), torch.as_tensor(run.data.source_train.labels[idx_s]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        model.eval()
        run.end_epoch({"loss": total}, predict=lambda x: model(x.mean(1)))
    return run.finish()


def test_output_folder_round_trip(tmp_path, capsys):
    out = str(tmp_path / "run")
    m = toy_main(["--epochs", "3", "--synth-dim", "8", "--batch-size", "256", "--out", out, "--lr", "0.1"])
    stored = json.load(open(os.path.join(out, "metrics.json")))
    assert stored["final"] == json.loads(json.dumps(m["final"])) and stored["complete"]
    assert stored["args"]["epochs"] == 3 and stored["synthetic"] and "synthetic" in stored["data"]
    assert [r["epoch"] for r in stored["epochs"]] == [1, 2, 3]
    rows = open(os.path.join(out, "epochs.csv")).read().splitlines()
    assert rows[0].startswith("epoch,loss,source_val_top1") and len(rows) == 4
    assert os.path.isfile(os.path.join(out, "checkpoint.pt"))
    for key in ("last", "source_selected", "oracle"):
        assert 0 <= m["final"][key]["top1"] <= 1 and np.array(m["final"][key]["confusion"]).sum() == 360
    assert m["final"]["oracle"]["top1"] >= m["final"]["last"]["top1"]
    assert "SYNTHETIC" in capsys.readouterr().out


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    common = ["--epochs", "4", "--synth-dim", "8", "--batch-size", "256", "--lr", "0.1", "--seed", "3"]
    full = toy_main(common + ["--out", str(tmp_path / "a")])
    with pytest.raises(KeyboardInterrupt):
        toy_main(common + ["--out", str(tmp_path / "b")], crash_at=(3, 2))
    assert len(json.load(open(tmp_path / "b" / "metrics.json"))["epochs"]) == 2
    resumed = toy_main(common + ["--out", str(tmp_path / "b"), "--resume"])
    strip = lambda m: [{k: v for k, v in r.items()} for r in m["epochs"]]
    assert strip(resumed) == strip(full)
    assert resumed["final"] == full["final"]


def test_same_seed_same_metrics_and_parse_args_flags(tmp_path):
    a = toy_main(["--epochs", "1", "--synth-dim", "8", "--out", str(tmp_path / "a")])
    b = toy_main(["--epochs", "1", "--synth-dim", "8", "--out", str(tmp_path / "b")])
    assert a["epochs"] == b["epochs"]
    args = data.parse_args(ToyArgs, ["--batch-size", "7", "--no-resume", "--skip-bad-videos", "--hidden", "3"])
    assert (args.batch_size, args.resume, args.skip_bad_videos, args.hidden) == (7, False, True, 3)


def test_unknown_domain_names_fail_with_one_line():
    code, err = run_info("--source", "ucff", "--target", "hmdb")
    assert code != 0 and "Traceback" not in err
    assert err.strip() == ("error: unknown --source 'ucff' (choose from gameplay, hmdb, kinetics, olympic, ucf, "
                           "D1, D2, D3, epic100-source, epic100-target, synth2-a, synth2-b, synth2-c, or pass "
                           "explicit --*-list files)")


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--batch-size", "-3"), ("--lr", "0"),
                                        ("--num-segments", "0")])
def test_run_rejects_non_positive_shared_flags(tmp_path, flag, value):
    with pytest.raises(SystemExit, match=f"error: {flag} must be positive, got {value}"):
        toy_main(["--synth-dim", "8", "--out", str(tmp_path), flag, value])


def test_resume_refuses_other_settings_and_unreadable_checkpoints(tmp_path):
    common = ["--epochs", "2", "--synth-dim", "8", "--batch-size", "256", "--out", str(tmp_path)]
    toy_main(common)
    with pytest.raises(SystemExit, match=r"error: .*checkpoint.pt was written with other settings \(--lr\)"):
        toy_main(common + ["--resume", "--lr", "0.5"])
    with pytest.raises(SystemExit, match=r"error: .*does not match this model"):   # same flags, other model
        args = data.parse_args(ToyArgs, common + ["--resume"])
        run = data.Run(args, "toy")
        list(run.epochs({"model": torch.nn.Linear(3, 3)}))
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"error: cannot read .*checkpoint.pt"):
        toy_main(common + ["--resume"])
    # more epochs on resume is allowed: the run continues from epoch 2 of the first call
    toy_main(common)
    m = toy_main(["--epochs", "3"] + common[2:] + ["--resume"])
    assert [r["epoch"] for r in m["epochs"]] == [1, 2, 3]


def test_argparse_errors_are_one_line():
    p = subprocess.run([sys.executable, os.path.join(REPO, "data.py"), "info", "--epochs", "x"],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode != 0 and p.stderr.strip().count("\n") == 0
    assert p.stderr.startswith("error: argument --epochs: invalid int value: 'x'")


def test_cache_packed_with_skip_is_not_reused_without_it(tmp_path):
    path, videos = make_layout(tmp_path, n_videos=4)
    bad = sorted(videos)[1]
    os.remove(os.path.join(tmp_path, "hmdb51", "RGB-Feature", bad, "img_00001.t7"))
    assert len(load(path, tmp_path, skip_bad_videos=True)) == 3
    with pytest.raises(SystemExit, match="missing frame file"):
        load(path, tmp_path)


def test_generalization_with_explicit_lists_needs_no_target_train_list(tmp_path):
    src, _ = make_layout(tmp_path, dataset="ucf101", part="train", n_videos=6)
    src_val, _ = make_layout(tmp_path, dataset="ucf101", part="val", n_videos=3)
    tgt_val, _ = make_layout(tmp_path, dataset="hmdb51", part="val", n_videos=3)
    classes = tmp_path / "classes.txt"
    classes.write_text("1 a\n2 b\n3 c\n")
    args = data.RunArgs(source="mine", target="theirs", data_root=str(tmp_path), source_list=src,
                        source_val_list=src_val, val_list=tgt_val, class_file=str(classes))
    pair = data.load_pair(args, with_target_train=False)
    assert pair.target_train is None and len(pair.source_train) == 6 and len(pair.target_val) == 3
    with pytest.raises(SystemExit):                 # adaptation needs the target train list
        data.load_pair(args, with_target_train=True)


def test_end_epoch_uses_predict_source_for_the_source_split(tmp_path):
    args = data.parse_args(ToyArgs, ["--synth-dim", "8", "--epochs", "1", "--out", str(tmp_path)])
    run = data.Run(args, "toy")
    onehot = lambda c: (lambda x: torch.nn.functional.one_hot(torch.full((len(x),), c), 12).float())
    for _ in run.epochs({"model": torch.nn.Linear(1, 1)}):
        row = run.end_epoch({}, predict=onehot(0), predict_source=onehot(1))
    d = run.data
    assert row["source_val_top1"] == pytest.approx(float(np.mean(d.source_val.labels == 1)), abs=1e-12)
    assert row["target_top1"] == pytest.approx(float(np.mean(d.target_val.labels == 0)), abs=1e-12)
    assert 0 < row["source_val_top1"] < 1 and 0 < row["target_top1"] < 1


def test_progress_yields_the_batches_unchanged(tmp_path):
    run = data.Run(data.parse_args(ToyArgs, ["--synth-dim", "8", "--out", str(tmp_path)]), "toy")
    pairs = run.pairs()
    wrapped = list(run.progress(pairs))
    assert len(wrapped) == len(pairs) == 12                       # synth2-a: ceil(1438 / 128) = 12 batches
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(wrapped, pairs))


def test_short_videos_spread_or_pad():
    # 4 frames, K = 6: pad = 0,1,2,3,3,3; spread = floor(tick/2 + tick·k), tick = 2/3 -> 0,1,1,2,3,3
    assert data.sample_indices([4], 6).tolist() == [[0, 1, 2, 3, 3, 3]]
    assert data.sample_indices([4], 6, short="spread").tolist() == [[0, 1, 1, 2, 3, 3]]
    g = torch.Generator().manual_seed(0)
    lengths = np.array([1, 3, 24, 52, 53, 200])
    for mode, clips in (("center", 1), ("random", 1), ("clips", 5)):
        idx = data.sample_indices(lengths, 53, mode, clips, g, short="spread")
        top = torch.as_tensor(lengths).view(-1, *([1] * (idx.dim() - 1)))
        assert idx.min() >= 0 and (idx < top).all()                     # always a real frame
        diffs = idx.diff(dim=-1)
        assert (diffs >= 0).all()                                        # time order kept
        # each frame of a 24-frame video covers a window of 53/24 = 2.2 samples: it appears 1-4 times (2-3 for the
        # deterministic modes), where padding repeats the last frame 30 times
        counts = torch.bincount(idx[2].reshape(-1, 53)[0], minlength=24)
        assert counts.min() >= 1 and counts.max() <= (4 if mode == "random" else 3)
    with pytest.raises(ValueError):
        data.sample_indices([4], 6, short="stretch")
