"""Safe and legible runs (data.Run and the scripts): bad --out forms, cache folder and corrupt caches, resume without
a checkpoint, runs on list files named after their lists, no silent overwrite, per-epoch lines on a pipe, skipped
videos recorded, Ctrl-C, best_source.pt and --eval-only. Each test fails on the code before these changes."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
from test_data import make_layout, toy_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--synth-dim", "8", "--batch-size", "256", "--lr", "0.1"]


def script(*args, timeout=300):
    """Run a script as a user would (stdout is a pipe), one thread."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def one_error_line(p, words):
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], p.stderr


# ---- the output folder ----------------------------------------------------------------------------------

def test_bad_out_forms_fail_in_one_line_before_training(tmp_path):
    (tmp_path / "afile").write_text("x")
    cases = [(str(tmp_path / "afile"), "is a file, not a folder"),
             (str(tmp_path / "afile" / "run"), "which is a file"),
             ("/proc/vidda-cannot-create/run", "cannot write the output folder")]
    for out, words in cases:
        p = script("ta3n.py", "--out", out, "--epochs", "1", *TINY)
        one_error_line(p, words)
        assert "epoch 1/" not in p.stdout                            # nothing trained


def test_resume_without_a_checkpoint_refuses(tmp_path):
    p = script("baselines.py", "--out", str(tmp_path / "typo"), "--resume", "--epochs", "1", *TINY)
    one_error_line(p, "--resume: no checkpoint.pt in")


def test_a_folder_holding_another_run_is_never_overwritten(tmp_path):
    out = str(tmp_path / "run")
    toy_main(["--epochs", "1", *TINY, "--out", out])
    before = open(os.path.join(out, "metrics.json")).read()
    with pytest.raises(SystemExit, match="holds a run with other settings .*--seed.*--resume"):
        toy_main(["--epochs", "1", *TINY, "--out", out, "--seed", "2"])
    assert open(os.path.join(out, "metrics.json")).read() == before
    toy_main(["--epochs", "2", *TINY, "--out", out])                 # same settings, more epochs: allowed


def test_runs_on_list_files_are_named_after_their_lists(tmp_path, monkeypatch):
    for dataset in ("ucf101", "hmdb51"):
        for part in ("train", "val"):
            make_layout(tmp_path, dataset=dataset, part=part, n_videos=4, num_classes=3, dim=8)
    lists = {f"{d}_{p}": str(tmp_path / d / f"list_{d}_{p}_hmdb_ucf-feature.txt")
             for d in ("ucf101", "hmdb51") for p in ("train", "val")}
    (tmp_path / "classes.txt").write_text("".join(f"{i} c{i}\n" for i in range(1, 13)))   # the toy has 12 outputs
    flags = ["--source-list", lists["ucf101_train"], "--source-val-list", lists["ucf101_val"], "--target-list",
             lists["hmdb51_train"], "--val-list", lists["hmdb51_val"], "--class-file", str(tmp_path / "classes.txt"),
             "--data-root", str(tmp_path), "--epochs", "1", "--batch-size", "4", "--synth-dim", "8"]
    monkeypatch.chdir(tmp_path)                                      # default --out is ./runs/...
    m = toy_main(flags)
    assert "synth" not in m["data"] and m["data"] == "list_ucf101_train_hmdb_ucf-feature->list_hmdb51_val_hmdb_ucf-feature"
    assert m["args"]["source"] == "list_ucf101_train_hmdb_ucf-feature" and not m["synthetic"]
    assert os.path.isdir("runs/toy_list_ucf101_train_hmdb_ucf-feature_list_hmdb51_val_hmdb_ucf-feature_s1")
    named = toy_main(flags + ["--name", "mine"])
    assert named["data"] == "mine" and os.path.isdir("runs/toy_mine_s1")
    toy_main(["--epochs", "1", *TINY])                               # the synthetic default has its own folder
    assert json.load(open("runs/toy_synth2-a_synth2-b_s1/metrics.json"))["synthetic"]


# ---- the packed cache ----------------------------------------------------------------------------------

def test_cache_folder_flag_and_read_only_data_root(tmp_path, monkeypatch):
    path, _ = make_layout(tmp_path / "root")
    split = data.load_split(path, 3, str(tmp_path / "root"), data.cache_dir(
        data.parse_args(data.RunArgs, ["--cache-dir", str(tmp_path / "elsewhere")])), "t")
    assert str(tmp_path / "elsewhere") in split.origin and not os.path.exists(tmp_path / "root" / ".vidda_cache")
    # a root the user cannot write (simulated: the tests may run as root, who can write anywhere)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real_access = os.access
    monkeypatch.setattr(data.os, "access", lambda p, mode: False if str(p).startswith(str(tmp_path / "root"))
                        else real_access(p, mode))
    data.WARNINGS.clear()
    folder = data.cache_dir(data.parse_args(data.RunArgs, ["--data-root", str(tmp_path / "root")]))
    assert folder == str(tmp_path / "xdg" / "vidda")
    assert len(data.WARNINGS) == 1 and "is not writable" in data.WARNINGS[0]


@pytest.mark.parametrize("what", ["npy", "json"])
def test_a_truncated_cache_is_rebuilt_with_a_notice(tmp_path, capsys, what):
    path, videos = make_layout(tmp_path)
    cache = str(tmp_path / ".cache")
    first = data.load_split(path, 3, str(tmp_path), cache, "t")
    want = np.array(first.features)
    target = next(f for f in os.listdir(cache) if f.endswith("." + what))
    with open(os.path.join(cache, target), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(cache, target)) // 2)
    capsys.readouterr()
    again = data.load_split(path, 3, str(tmp_path), cache, "t")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is corrupt" in err and "rebuilding" in err
    assert np.array_equal(np.array(again.features), want)


# ---- data problems, one line each -----------------------------------------------------------------------

def test_missing_video_folder_names_list_line_and_paths(tmp_path):
    path, videos = make_layout(tmp_path, list_prefix="/somewhere/else/hmdb51/RGB-Feature")
    name = sorted(videos)[2]
    import shutil
    shutil.rmtree(tmp_path / "hmdb51" / "RGB-Feature" / name)
    with pytest.raises(SystemExit) as e:
        data.load_split(path, 3, str(tmp_path), str(tmp_path / ".cache"), "t")
    message = str(e.value)
    assert f"{path}:3:" in message and f"/somewhere/else/hmdb51/RGB-Feature/{name}" in message
    assert str(tmp_path / "hmdb51" / "RGB-Feature" / name) in message and "\n" not in message


def test_skipped_videos_go_into_metrics_and_the_summary(tmp_path, capsys):
    for dataset in ("ucf101", "hmdb51"):
        for part in ("train", "val"):
            make_layout(tmp_path, dataset=dataset, part=part, n_videos=6, num_classes=3, dim=8)
    victim = tmp_path / "hmdb51" / "RGB-Feature" / "v_train_001" / "img_00002.t7"
    os.remove(victim)
    (tmp_path / "classes.txt").write_text("".join(f"{i} c{i}\n" for i in range(1, 13)))   # the toy has 12 outputs
    flags = ["--source", "ucf", "--target", "hmdb", "--data-root", str(tmp_path), "--class-file",
             str(tmp_path / "classes.txt"), "--epochs", "1", "--batch-size", "4", "--skip-bad-videos", "--synth-dim", "8",
             "--out", str(tmp_path / "run")]
    for _ in range(2):                                               # packed, then from the cache: reported once
        m = toy_main(flags)
        assert len(m["skipped_videos"]) == 1 and "img_00002.t7" in m["skipped_videos"][0]["reason"]
        assert m["skipped_videos"][0]["video"].endswith("v_train_001")
    out = capsys.readouterr()
    assert out.err.count("skipped:") == 1 and out.out.count("| 1 videos skipped |") == 2


def test_classes_the_lists_do_not_cover_get_one_notice_each(tmp_path):
    path, _ = make_layout(tmp_path, num_classes=2, n_videos=4)
    (tmp_path / "five.txt").write_text("".join(f"{i} c{i}\n" for i in range(1, 6)))
    data.WARNINGS.clear()
    args = data.parse_args(data.RunArgs, ["--source-list", path, "--source-val-list", path, "--target-list", path,
                                          "--val-list", path, "--class-file", str(tmp_path / "five.txt"),
                                          "--data-root", str(tmp_path)])
    data.load_pair(args)
    assert len(data.WARNINGS) == 2
    assert "lists 5 classes, the lists use labels up to 1" in data.WARNINGS[0]
    assert "3 class(es) have no video in the source train list" in data.WARNINGS[1] and data.WARNINGS[1].endswith(": c3, c4, c5")


# ---- what a user sees and gets -----------------------------------------------------------------------------

def test_a_pipe_gets_one_line_per_epoch_and_the_thread_count_is_recorded(tmp_path):
    p = script("baselines.py", "--method", "source-only", "--temporal", "pooling", "--epochs", "2",
               "--out", str(tmp_path / "r"), *TINY)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert [l.split(" | ")[0] for l in lines[:2]] == ["baselines epoch 1/2", "baselines epoch 2/2"]
    assert "loss_y" in lines[0] and "| source " in lines[0] and "| target " in lines[0]
    assert lines[2].startswith("baselines | SYNTHETIC") and "1 thread |" in lines[2]
    m = json.load(open(tmp_path / "r" / "metrics.json"))
    assert m["threads"] == 1 and m["command"].startswith("python baselines.py --method source-only")


def test_ctrl_c_says_where_the_epoch_is_saved_and_how_to_resume(tmp_path):
    out = str(tmp_path / "r")
    cmd = [sys.executable, "baselines.py", "--method", "source-only", "--temporal", "pooling", "--epochs", "40",
           "--out", out, *TINY]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in p.stdout:                                           # wait for the first finished epoch
        if line.startswith("baselines epoch 1/40"):
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: epoch ") and f"saved in {out}/checkpoint.pt" in lines[0]
    resume = lines[0].split("continue with: ")[1]
    assert resume.endswith("--resume") and "--epochs 40" in resume
    saved = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["epoch"]
    assert lines[0].startswith(f"interrupted: epoch {saved} of 40")


def test_best_source_checkpoint_and_eval_only_on_another_target(tmp_path):
    out = str(tmp_path / "r")
    m = toy_main(["--epochs", "3", *TINY, "--out", out])
    best = torch.load(os.path.join(out, "best_source.pt"), weights_only=False)
    assert best["epoch"] == m["final"]["source_selected"]["epoch"] and set(best["state"]) == {"model"}
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    assert set(ckpt) == {"epoch", "history", "rng", "elapsed", "args", "state"}     # no data in checkpoints
    # the toy script has no eval-only path: test it through ta3n.py, which does
    p = script("ta3n.py", "--epochs", "2", "--out", str(tmp_path / "t"), *TINY)
    assert p.returncode == 0, p.stderr
    trained = json.load(open(tmp_path / "t" / "metrics.json"))
    p = script("ta3n.py", "--eval-only", "--checkpoint", str(tmp_path / "t" / "best_source.pt"), "--out",
               str(tmp_path / "e"), *TINY)
    assert p.returncode == 0, p.stderr
    e = json.load(open(tmp_path / "e" / "metrics.json"))
    chosen = trained["final"]["source_selected"]
    assert e["final"]["last"]["top1"] == chosen["top1"] and e["final"]["last"]["epoch"] == chosen["epoch"]
    assert e["evaluated_checkpoint"].endswith("best_source.pt") and e["complete"]
    assert not os.path.exists(tmp_path / "e" / "checkpoint.pt")
    p = script("ta3n.py", "--eval-only", "--checkpoint", str(tmp_path / "t" / "best_source.pt"), "--target",
               "synth2-c", "--out", str(tmp_path / "c"), *TINY)
    assert p.returncode == 0 and "synth2-a->synth2-c" in p.stdout and "target top-1 " in p.stdout
    one_error_line(script("ta3n.py", "--eval-only", "--out", str(tmp_path / "x"), *TINY), "--eval-only needs")
