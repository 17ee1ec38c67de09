"""vidda data: the one module every method script shares.

It holds only what must be identical across methods: the datasets, frame sampling,
source/target pairing, THE evaluation protocol and the run plumbing. No losses, no discriminators.

Sections
  1. datasets      official TA3N feature layout (list files + one img_%05d.t7 per frame), a packed
                   memmap cache, the built-in synthetic cross-domain benchmark (synth2-a/b/c), EPIC-Kitchens
                   D1/D2/D3 (TranSVAE's I3D lists) and EPIC-100 UDA (TA3N-EPIC feature pickles + annotation tables)
  2. sampling      the official centred segment rule, TSN random offsets, multi-clip; source/target pairing
  3. evaluation    top-1, class-mean accuracy, confusion; last / source-selected / oracle epochs; --label (one
                   head or verb + noun, the action metric), test.json, --save-features
  4. run plumbing  RunArgs + argparse bridge, seeding, device, output folder, atomic checkpoints, --resume

Shapes: N videos, B batch, K sampled frames (segments), D feature width, C classes.

How a method script uses it (the loop itself stays in the method file):
    args = data.parse_args(Args, argv, __doc__)          # Args(RunArgs) dataclass at the top of the script
    run = data.Run(args, script="ta3n")                  # seed, device, data, output folder
    ...build model, optimizer...
    for epoch in run.epochs(state={"model": model, "optimizer": optimizer}):   # resumes if --resume
        for idx_s, idx_t in run.pairs():                 # index batches, epoch ends with the shorter domain
            x_s = run.frames(run.data.source_train, idx_s)   # (B, K, D) on the device
        run.end_epoch({"loss": ...}, predict=lambda x: model(x))   # evaluation + metrics + checkpoint
    return run.finish()                                  # metrics.json, one-line summary, dict

Command line: `python data.py info [--source X --target Y --data-root R]` describes the data.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import pickle
import platform
import random
import re
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm


def fail(message: str):
    """Bad input ends here: one line on stderr, exit status 1, no traceback."""
    raise SystemExit(f"error: {message}")


# ==== 1. datasets ===================================================================================

# The official class-index files (TA3N repository, data/classInd_*.txt), in file order; only the order is
# used (label = line number), the names label the confusion matrix.
OFFICIAL_CLASSES = {
    "hmdb_ucf": ["climb", "fencing", "golf", "kick_ball", "pullup", "punch", "pushup", "ride_bike",
                 "ride_horse", "shoot_ball", "shoot_bow", "walk"],
    "hmdb_ucf_small": ["golf", "pullup", "ride_bike", "ride_horse", "shoot_ball"],
    "ucf_olympic": ["Basketball", "CleanAndJerk", "ThrowDiscus", "Diving", "PoleVault", "TennisSwing"],
    # the 30 shared categories as listed in TA3N §7.4.2 (alphabetical; the released file was not available to us)
    "kinetics_gameplay": ["break", "carry", "clean_floor", "climb", "crawl", "crouch", "cry", "dance", "drink",
                          "drive", "fall_down", "fight", "hug", "jump", "kick", "light_up", "news_anchor",
                          "open_door", "paint_brush", "paraglide", "pour", "push", "read", "run", "shoot_gun",
                          "stare", "talk", "throw", "walk", "wash_dishes"],
}
# --setting -> (official DA-setting tag used in the file names, the domains it pairs)
SETTINGS = {"full": ("hmdb_ucf", {"ucf", "hmdb"}), "small": ("hmdb_ucf_small", {"ucf", "hmdb"}),
            "olympic": ("ucf_olympic", {"ucf", "olympic"}), "kinetics": ("kinetics_gameplay", {"kinetics", "gameplay"})}
# split sizes the released lists have (split 1; counted in TranSVAE's copies of the same lists); the small and
# Olympic lists are only on TA3N's Dropbox, so their sizes are what `python data.py info` counts
SETTING_SIZES = {"full": "ucf101 train 1438 / val 571, hmdb51 train 840 / val 360"}
DOMAIN_DIRS = {"ucf": "ucf101", "hmdb": "hmdb51", "olympic": "olympic", "kinetics": "kinetics", "gameplay": "gameplay"}


@dataclass
class Split:
    """One list of videos with all their frames packed: frame i of video v is features[offsets[v] + i]."""
    name: str                    # e.g. "hmdb51/val" or "synth2-b/val (synthetic)"
    features: object             # (total_frames, D) float32: np.memmap (real data) or torch.Tensor (synthetic)
    offsets: np.ndarray          # (N,) int64
    lengths: np.ndarray          # (N,) int64, >= 1
    labels: np.ndarray           # (N,) int64 in [0, C); (N, 2) verb, noun with two heads; -1 = unlabelled
    videos: list                 # (N,) video folder or synthetic id
    origin: str                  # where it was read from (list file, cache) or "generated"
    skipped: list = field(default_factory=list)   # [(video as listed, reason)] left out by --skip-bad-videos

    def __len__(self):
        return len(self.labels)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def read_class_file(path: str) -> list:
    """Class names of an official `classInd_*.txt` (`<id> <name>` per line; trailing blanks/CRLF ignored)."""
    if not os.path.isfile(path):
        fail(f"class file not found: {path}")
    names = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.strip().split()
            if not parts:
                continue
            names.append(parts[-1] if len(parts) > 1 else parts[0])
    if not names:
        fail(f"class file {path} lists no classes")
    return names


def read_list_file(path: str) -> list:
    """Rows (video_dir, num_frames, label) of an official list file `<video_feature_dir> <num_frames> <label>`."""
    if not os.path.isfile(path):
        fail(f"list file not found: {path}")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.strip().split()
            if not parts:
                continue
            if len(parts) != 3 or not re.fullmatch(r"-?\d+", parts[1]) or not re.fullmatch(r"-?\d+", parts[2]):
                fail(f"{path}:{n}: malformed line {line.strip()!r} (expected '<video_dir> <num_frames> <label>')")
            rows.append((parts[0], int(parts[1]), int(parts[2])))
    if not rows:
        fail(f"empty split: {path} lists no videos")
    return rows


def reroot(video_dir: str, data_root: str) -> str:
    """The released lists hold the authors' absolute paths: when a listed folder does not exist, look for its
    trailing `<dataset>/RGB-Feature/<video>` part under the data root (or a relative path under the root)."""
    if os.path.isdir(video_dir):
        return video_dir
    parts = [p for p in video_dir.replace("\\", "/").split("/") if p]
    for i in range(len(parts) - 1, 0, -1):
        if parts[i].lower().startswith("rgb-feature"):
            candidate = os.path.join(data_root, *parts[i - 1:])
            if os.path.isdir(candidate):
                return candidate
    candidate = os.path.join(data_root, video_dir.lstrip("/"))
    return candidate if os.path.isdir(candidate) else video_dir


def _frame_path(video_dir: str, i: int) -> str:
    return os.path.join(video_dir, "img_%05d.t7" % i)  # 1-based, as written by the official extractor


def _fingerprint(list_path: str, dirs: list, lengths: list) -> str:
    """What the cache depends on: the list's bytes and every frame file's size and mtime."""
    h = hashlib.sha1(open(list_path, "rb").read())
    for d, n in zip(dirs, lengths):
        for i in range(1, n + 1):
            try:
                st = os.stat(_frame_path(d, i))
                h.update(b"%d:%d;" % (st.st_size, st.st_mtime_ns))
            except OSError:
                h.update(b"missing;")
    return h.hexdigest()


def _load_frame(path: str, dim):
    if not os.path.isfile(path):
        return None, f"missing frame file {path}"
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file: report, do not crash
        return None, f"cannot read {path} ({type(e).__name__})"
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or (dim is not None and t.numel() != dim):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        want = f"({dim},)" if dim else "a 1-D tensor"
        return None, f"wrong feature shape {shape} in {path} (expected {want})"
    if not t.is_floating_point():
        return None, f"wrong feature dtype {t.dtype} in {path} (expected a float tensor)"
    t = t.float()
    if not torch.isfinite(t).all():
        return None, f"NaN/inf in features of {path}"
    return t.numpy(), None


def _read_cache(meta_path: str, array_path: str):
    """The packed cache's metadata and memmap, or (None, reason) when either file is unreadable or truncated."""
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        features = np.load(array_path, mmap_mode="r")
        total = int(sum(meta["lengths"]))
        if features.ndim != 2 or features.shape[0] != total or len(meta["offsets"]) != len(meta["lengths"]):
            return None, f"holds {features.shape[0]} frames, its index {total}"
        return (meta, features), None
    except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"


def load_split(list_path: str, num_classes: int, data_root: str, cache_dir: str, name: str,
               skip_bad_videos: bool = False) -> Split:
    """Read an official list, packing all its frames into one memmap on first use (reused until it changes)."""
    rows = read_list_file(list_path)
    dirs, lengths, labels, listed, skipped = [], [], [], [], []
    for n, (video_dir, num_frames, label) in enumerate(rows, 1):
        problem, folder = None, reroot(video_dir, data_root)
        if num_frames <= 0:
            problem = f"{list_path}:{n}: video {video_dir} has {num_frames} frames"
        elif not 0 <= label < num_classes:
            problem = f"{list_path}:{n}: label {label} outside the class file's range 0..{num_classes - 1}"
        elif not os.path.isdir(folder):
            tried = os.path.join(data_root, *[p for p in video_dir.replace("\\", "/").split("/") if p][-3:])
            problem = (f"{list_path}:{n}: video folder {video_dir} not found (nor its re-rooted path under the "
                       f"data root, e.g. {tried})")
        if problem and not skip_bad_videos:
            fail(problem)
        if problem:
            skipped.append((video_dir, problem))
            continue
        dirs.append(folder)
        listed.append(video_dir)
        lengths.append(num_frames)
        labels.append(label)

    os.makedirs(cache_dir, exist_ok=True)
    key = hashlib.sha1(os.path.abspath(list_path).encode()).hexdigest()[:16]
    meta_path, array_path = os.path.join(cache_dir, key + ".json"), os.path.join(cache_dir, key + ".npy")
    fingerprint = _fingerprint(list_path, dirs, lengths)
    if os.path.isfile(meta_path) or os.path.isfile(array_path):
        cached, problem = _read_cache(meta_path, array_path)
        if problem:
            print(f"notice: the packed cache of {list_path} is corrupt ({problem}); rebuilding it", file=sys.stderr)
        else:
            meta, features = cached
            # a cache packed with --skip-bad-videos that dropped videos is not reused without that flag: repacking
            # then stops at the bad video with its one-line error
            complete = skip_bad_videos or not meta.get("skipped")
            if meta.get("fingerprint") == fingerprint and complete:
                return Split(name, features, np.array(meta["offsets"], dtype=np.int64),
                             np.array(meta["lengths"], dtype=np.int64), np.array(meta["labels"], dtype=np.int64),
                             meta["videos"], f"{list_path} (packed cache {array_path})",
                             [tuple(s) for s in meta.get("skipped", [])])

    # pack: read every frame once (the only time per-frame files are touched)
    first, err = _load_frame(_frame_path(dirs[0], 1), None) if dirs else (None, "no videos")
    if err and dirs and not skip_bad_videos:
        fail(err)
    dim = first.shape[0] if first is not None else None
    keep, tmp_path = [], array_path + ".tmp.npy"
    for v in tqdm(range(len(dirs)), desc=f"packing {name}", unit="video", leave=False,
                  disable=None):                                 # disable=None: bars only on a terminal
        frames = []
        for i in range(1, lengths[v] + 1):
            x, err = _load_frame(_frame_path(dirs[v], i), dim)
            if err:
                if not skip_bad_videos:
                    fail(err)
                skipped.append((listed[v], err))
                frames = None
                break
            dim = dim or x.shape[0]
            frames.append(x)
        if frames:
            keep.append((v, np.stack(frames)))
    for video, reason in skipped:                                # reported once, when the cache is packed
        print(f"skipped: {reason}", file=sys.stderr)
    if not keep:
        fail(f"empty split: no usable video in {list_path}" + (f" ({len(skipped)} skipped)" if skipped else ""))
    total = sum(len(x) for _, x in keep)
    packed = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.float32, shape=(total, dim))
    offsets, pos = [], 0
    for _, x in keep:
        packed[pos:pos + len(x)] = x
        offsets.append(pos)
        pos += len(x)
    packed.flush()
    del packed
    os.replace(tmp_path, array_path)
    meta = {"fingerprint": fingerprint, "list": os.path.abspath(list_path), "offsets": offsets,
            "lengths": [lengths[v] for v, _ in keep], "labels": [labels[v] for v, _ in keep],
            "videos": [dirs[v] for v, _ in keep], "skipped": skipped}
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f)
    os.replace(meta_path + ".tmp", meta_path)
    return load_split(list_path, num_classes, data_root, cache_dir, name, skip_bad_videos)


# ---- the built-in synthetic cross-domain benchmark (v2) ----
# A latent SCENE is rendered to D-d features by one fixed nonlinear renderer shared by every domain, so the features
# look like pooled CNN features (non-negative, post-ReLU, norms of tens) and the domains share one feature space. The
# scene of a frame has three parts: the actor's pose, the video's appearance (clothes, lighting) and its background.
# A video of class c is a sequence of 3 sub-actions (the class recipe); during a sub-action the pose moves along
# that sub-action's motion. Classes 0 and 1 use the same sub-actions in opposite order (order twins), so mean-pooling
# cannot separate them; every other class has a sub-action set of its own.
# A domain changes the SCENE before rendering, never the renderer: a viewpoint (a rotation of the pose space and a
# camera zoom), its mean appearance and background, and timing (video lengths, idle frames before/after the action,
# the mean share of each sub-action (tempo) and its spread). The renderer's nonlinearity turns these into a
# nonlinear shift in feature space with feature scales within tens of percent of each other, as between two
# datasets seen through one frozen ImageNet network. The parameters were tuned for the measured properties that
# `python data.py info` prints (README, Data), never for a method's score.
SYNTH = {  # domain -> split sizes (UCF -> HMDB_full's) and scene parameters
    "synth2-a": dict(n_train=1438, n_val=571, balanced=False, length=(24, 48), idle=(0.1, 0.1),
                     tempo=(0.25, 0.5, 0.25), dirichlet=15.0, view=0.48, zoom=1.0, appearance=0.72,
                     background=0.72, noise=0.4, style=0.3),
    "synth2-b": dict(n_train=840, n_val=360, balanced=True, length=(16, 80), idle=(0.35, 0.05),
                     tempo=(1 / 3, 1 / 3, 1 / 3), dirichlet=8.0, view=0.48, zoom=0.95, appearance=0.72,
                     background=0.72, noise=0.4, style=0.3),
    "synth2-c": dict(n_train=840, n_val=360, balanced=True, length=(30, 100), idle=(0.05, 0.35),
                     tempo=(0.4, 0.2, 0.4), dirichlet=6.0, view=0.48, zoom=1.05, appearance=0.72,
                     background=0.72, noise=0.4, style=0.3),
}
# length: frames per video (uniform); idle: largest idle fraction before / after the action; tempo: mean share of
# each sub-action (symmetric, so order twins stay twins under pooling), dirichlet: its concentration (higher = less
# spread); view: radians by which the domain rotates its 2 planes of the pose space; zoom: pose scale; appearance,
# background: size (per coordinate) of the domain's mean; noise: per-frame pose noise; style: per-video spread of
# appearance and background around the domain's mean.
SYNTHETIC_DOMAINS = tuple(SYNTH)
RETIRED_SYNTHETIC = ("synth-a", "synth-b", "synth-c")   # v1 (until commit 6e894dd): a linear renderer per domain
SYNTH_CLASSES = 12
SYNTH_SUBACTIONS = 10
SYNTH_POSE, SYNTH_APPEARANCE, SYNTH_BACKGROUND, SYNTH_HIDDEN = 12, 6, 6, 512
RENDER_GAIN = 4.0


def _synthetic_world(seed: int, dim: int) -> dict:
    """What every domain shares: sub-actions (pose prototypes and motions), class recipes and the renderer."""
    rng = np.random.default_rng([seed, 0])
    world = {"prototypes": rng.normal(0, 1, (SYNTH_SUBACTIONS, SYNTH_POSE)),
             "motions": rng.normal(0, 0.6, (SYNTH_SUBACTIONS, SYNTH_POSE)),     # pose velocity inside a sub-action
             "rest": rng.normal(0, 1, SYNTH_POSE)}                             # idle pose before/after the action
    recipes, sets = [], set()
    a, b, c = rng.permutation(SYNTH_SUBACTIONS)[:3]              # one order-twin pair: classes 0 and 1
    recipes += [(a, b, c), (c, b, a)]
    sets.add(frozenset((a, b, c)))
    while len(recipes) < SYNTH_CLASSES:                          # 10 classes with sub-action sets of their own
        r = tuple(rng.permutation(SYNTH_SUBACTIONS)[:3])
        if frozenset(r) not in sets:
            sets.add(frozenset(r))
            recipes.append(r)
    world["recipes"] = np.array(recipes)
    # renderer: pose -> hidden, modulated by appearance (a gain per hidden unit) and shifted by background, then a
    # second layer; ReLU after both, like pooled features of a CNN's last block
    world["w_pose"] = rng.normal(0, 1 / math.sqrt(SYNTH_POSE), (SYNTH_POSE, SYNTH_HIDDEN))
    world["w_appearance"] = rng.normal(0, 1 / math.sqrt(SYNTH_APPEARANCE), (SYNTH_APPEARANCE, SYNTH_HIDDEN))
    world["w_background"] = rng.normal(0, 1 / math.sqrt(SYNTH_BACKGROUND), (SYNTH_BACKGROUND, SYNTH_HIDDEN))
    world["w_out"] = rng.normal(0, 1 / math.sqrt(SYNTH_HIDDEN), (SYNTH_HIDDEN, dim))
    world["b_hidden"] = rng.normal(0, 0.2, SYNTH_HIDDEN)
    world["b_out"] = rng.normal(0, 0.2, dim)
    return world


def synthetic_order_twins(seed: int = 0) -> list:
    """Classes whose sub-action set another class shares in another order (mean-pooling cannot tell them apart)."""
    recipes = [frozenset(r) for r in _synthetic_world(seed, 1)["recipes"]]
    return [c for c, r in enumerate(recipes) if recipes.count(r) > 1]


def _render(world: dict, pose, appearance, background, video) -> np.ndarray:
    """The fixed renderer: pose (F, P) per frame, appearance (N, A) per video, background (F, G) per frame, video (F,)
    the video of each frame -> (F, D) features >= 0. Appearance multiplies each hidden unit's pose response (a gain
    in [0.5, 1.5]), background shifts its threshold; ReLU after both layers, like a CNN's pooled last block."""
    gain = 1 + 0.5 * np.tanh(appearance @ world["w_appearance"])                  # (N, hidden)
    hidden = (pose @ world["w_pose"]) * gain[video] + background @ world["w_background"] + world["b_hidden"]
    features = np.maximum(hidden, 0, out=hidden) @ world["w_out"] + world["b_out"]
    return RENDER_GAIN * np.maximum(features, 0, out=features)


def _domain_scene(seed: int, domain: str) -> dict:
    """A domain's scene: its viewpoint (a rotation of the pose space times a camera zoom) and its mean appearance
    and background. The domains are placed symmetrically: domain i rotates its own 2 of the pose space's 6 planes
    by `view` radians, and the appearance and background means point in mutually orthogonal directions, so every
    pair of domains differs by the same amount of rotation and the same distance between means."""
    p, i = SYNTH[domain], list(SYNTH).index(domain)
    rng = np.random.default_rng([seed, 1])                       # shared by all domains: one frame of reference
    basis = np.linalg.qr(rng.normal(0, 1, (SYNTH_POSE, SYNTH_POSE)))[0]         # 6 orthonormal planes
    rotation = np.eye(SYNTH_POSE)
    cos, sin = math.cos(p["view"]) - 1, math.sin(p["view"])
    for plane in (2 * i, 2 * i + 1):
        u, v = basis[:, 2 * plane:2 * plane + 1], basis[:, 2 * plane + 1:2 * plane + 2]
        rotation = rotation + cos * (u @ u.T + v @ v.T) + sin * (v @ u.T - u @ v.T)
    directions = [np.linalg.qr(rng.normal(0, 1, (n, len(SYNTH))))[0][:, i] * math.sqrt(n)
                  for n in (SYNTH_APPEARANCE, SYNTH_BACKGROUND)]
    return {"rotation": rotation * p["zoom"], "appearance": p["appearance"] * directions[0],
            "background": p["background"] * directions[1]}


_SYNTHETIC_CACHE = {}          # (domain, part, seed, dim, parameters) -> Split: a process generates each split once


def make_synthetic_split(domain: str, part: str, seed: int = 0, dim: int = 128) -> Split:
    """Generate the train or val split of one synthetic domain, deterministically from (seed, domain, part).
    The split is cached for the life of the process; its features must not be modified in place."""
    if domain in RETIRED_SYNTHETIC:
        fail(f"{domain!r} is the retired v1 synthetic benchmark (commit 6e894dd reproduces it); use "
             f"{', '.join(SYNTH)}")
    if domain not in SYNTH:
        fail(f"unknown synthetic domain {domain!r} (choose from {', '.join(SYNTH)})")
    key = (domain, part, seed, dim, repr(SYNTH[domain]))
    if key not in _SYNTHETIC_CACHE:
        if len(_SYNTHETIC_CACHE) >= 16:
            _SYNTHETIC_CACHE.pop(next(iter(_SYNTHETIC_CACHE)))
        _SYNTHETIC_CACHE[key] = _generate_synthetic_split(domain, part, seed, dim)
    return dataclasses.replace(_SYNTHETIC_CACHE[key])           # a caller may rebind fields of its own copy


def _generate_synthetic_split(domain: str, part: str, seed: int, dim: int) -> Split:
    p = SYNTH[domain]
    world, scene = _synthetic_world(seed, dim), _domain_scene(seed, domain)
    rng = np.random.default_rng([seed, 2, list(SYNTH).index(domain), 0 if part == "train" else 1])
    n = p["n_train"] if part == "train" else p["n_val"]
    if p["balanced"]:
        labels = np.arange(n) % SYNTH_CLASSES
    else:                                                        # UCF-like imbalance (largest class ~ 2x the smallest)
        w = np.linspace(1.0, 2.0, SYNTH_CLASSES)[rng.permutation(SYNTH_CLASSES)]
        labels = rng.choice(SYNTH_CLASSES, size=n, p=w / w.sum())
    labels = rng.permutation(labels)
    lengths = rng.integers(p["length"][0], p["length"][1] + 1, size=n)

    # timing, per video: idle fractions before/after the action and uneven sub-action durations
    pre, post = rng.uniform(0, p["idle"][0], n), rng.uniform(0, p["idle"][1], n)
    durations = rng.dirichlet(3 * p["dirichlet"] * np.array(p["tempo"]), size=n)   # (N, 3), mean = tempo
    bounds = np.cumsum(durations, axis=1)                                            # sub-action ends in [0, 1]
    video = np.repeat(np.arange(n), lengths)                     # frame -> video
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    t = (np.arange(len(video)) - offsets[video] + 0.5) / lengths[video]         # position in the video, [0, 1)
    u = (t - pre[video]) / np.maximum(1 - pre[video] - post[video], 1e-3)        # position inside the action
    in_action = (u >= 0) & (u < 1)
    step = np.clip((u[:, None] >= bounds[video][:, :2]).sum(1), 0, 2)           # sub-action 0, 1 or 2
    start = np.where(step > 0, bounds[video, np.maximum(step - 1, 0)], 0.0)
    phase = np.clip((u - start) / (bounds[video, step] - start), 0, 1) - 0.5    # position inside the sub-action
    sub = world["recipes"][labels[video], step]
    pose = np.where(in_action[:, None], world["prototypes"][sub] + phase[:, None] * world["motions"][sub],
                    world["rest"])
    pose = (pose + p["noise"] * rng.normal(0, 1, pose.shape)) @ scene["rotation"].T          # viewpoint

    # appearance and background: the domain's mean, a per-video draw (style), small per-frame jitter
    appearance = scene["appearance"] + p["style"] * rng.normal(0, 1, (n, SYNTH_APPEARANCE))
    background = scene["background"] + p["style"] * rng.normal(0, 1, (n, SYNTH_BACKGROUND))
    features = _render(world, pose, appearance,
                       background[video] + 0.1 * rng.normal(0, 1, (len(video), SYNTH_BACKGROUND)), video)
    return Split(f"{domain}/{part} (synthetic)", torch.from_numpy(features.astype(np.float32)),
                 offsets.astype(np.int64), lengths.astype(np.int64), labels.astype(np.int64),
                 [f"{domain}-{part}-{i:05d}" for i in range(n)], f"generated (v2, seed {seed}, {dim}-d)")


# ---- other feature formats: EPIC-Kitchens (D1/D2/D3 I3D, EPIC-100 UDA pickles) ----
# Neither dataset may be redistributed (CC BY-NC): the readers take paths from the user; the tests write tiny files in
# the same formats. Layouts, sources and licences: docs/data.md.
#
# D1/D2/D3 (MM-SADA split, Munro & Damen, CVPR 2020): three kitchens of EPIC-Kitchens-55, 8 verb classes, read from
# TranSVAE's I3D features (github.com/ldkong1205/TranSVAE, exp/train_epic_kitchens.py): TA3N's per-frame layout (one
# img_%05d.t7 of 2048 floats per frame) and list lines
#     dataset/epic-kitchens/I3D-feature-pretrain/<train|test>/<Pxx>/<video_id>/<row> <frames> <verb_class>
# whose last folder is the 0-based ROW of MM-SADA's annotation table D<i>_<train|test>.pkl (counted over the whole
# table, not per video). The paths are relative to TranSVAE's repository root, our --data-root.
EPIC_KITCHENS = {"D1": "P08", "D2": "P01", "D3": "P22"}       # domain -> participant (MM-SADA README, TranSVAE)
EPIC_KITCHENS_SIZES = {"D1": (1543, 435), "D2": (2495, 750), "D3": (3897, 974)}   # rows of D<i>_train / D<i>_test
# no class-name file exists upstream: each id is named after its most frequent raw verbs in the tables
EPIC_KITCHENS_VERBS = ["take", "put", "open", "close", "wash", "cut", "mix", "pour"]
# EPIC-100 UDA (Damen et al., IJCV 2022): source = videos recorded for EPIC-55, target = videos new in EPIC-100, from the
# same 12 participants (4 more for validation); 97 verbs, 300 nouns. Read from the TBN feature pickles of the TA3N-EPIC
# code (github.com/jonmun/EPIC-KITCHENS-100_UDA_TA3N, dataset.py): <split>.pkl = {'narration_ids': N ids, 'features':
# {'RGB'|'Flow'|'Audio': (N, 25, 1024)}}, joined by narration_id with the annotation tables EPIC_100_uda_<split>.csv
# (github.com/epic-kitchens/epic-kitchens-100-annotations, UDA_annotations/).
EPIC100_DOMAINS = ("epic100-source", "epic100-target")
EPIC100_CLASSES = {"verb": 97, "noun": 300}
EPIC100_SEGMENTS = 25                       # official dataset.py: 25 segments per video; K = 5 centred -> rows 2,7,..,22
EPIC100_MODALITIES = ("RGB", "Flow", "Audio")
# our split -> (feature pickle, annotation table). target_val is scored every epoch; the unlabelled target test split
# (optional) is predicted at the source-selected epoch into test.json, the challenge's submission file
EPIC100_SPLITS = {"source_train": ("source_train", "EPIC_100_uda_source_train"),
                  "source_val": ("source_val", "EPIC_100_uda_source_val"),
                  "target_train": ("target_train", "EPIC_100_uda_target_train_timestamps"),
                  "target_val": ("target_val", "EPIC_100_uda_target_val"),
                  "target_test": ("target_test", "EPIC_100_uda_target_test_timestamps")}
EPIC_DOMAINS = (*EPIC_KITCHENS, *EPIC100_DOMAINS)
LABELS = ("auto", "verb", "noun", "verb+noun")


def _find_file(root: str, folders: tuple, names: tuple) -> str:
    """The first existing root/<folder>/<name> ('' for none)."""
    for folder in folders:
        for name in names:
            path = os.path.join(root, folder, name)
            if os.path.isfile(path):
                return path
    return ""


def read_table(path: str) -> list:
    """Rows (dicts of strings) of an annotation table: a CSV, or a pickled pandas DataFrame (needs pandas; its index
    becomes a column, as the official readers' reset_index). Each row also gets '_where' = '<file> row <i>' (0-based)."""
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        try:
            import pandas
        except ImportError:
            fail(f"reading {path} needs pandas (pip install pandas), or put its CSV version beside it")
        try:
            rows = pandas.read_pickle(path).reset_index().astype(str).to_dict("records")
        except Exception as e:
            fail(f"cannot read {path} ({type(e).__name__})")
    for i, row in enumerate(rows):
        row["_where"] = f"{path} row {i}"
    return rows


def _int_field(row: dict, column: str, low: int, high: int) -> int:
    """row[column] as an int in [low, high), or a one-line error naming the file, row and narration."""
    value = str(row.get(column, "")).strip()
    what = f"{row['_where']}" + (f" (narration id {row['narration_id']})" if row.get("narration_id") else "")
    if not re.fullmatch(r"-?\d+(\.0)?", value):
        fail(f"{what}: {column} {value!r} is not an integer")
    if not low <= int(float(value)) < high:
        fail(f"{what}: label {column} {value} out of range 0..{high - 1}")
    return int(float(value))


def check_epic_kitchens_list(path: str, domain: str, part: str, root: str) -> str:
    """Check a TranSVAE EPIC list line by line (format, participant, split, row indices unique); when MM-SADA's table
    D<i>_<part>.pkl (or .csv) is under root/Annotations or root/video_splits, also check that each row's participant,
    video, verb_class and frame count (stop − start) match the line. Returns what was checked, for `data.py info`."""
    if not os.path.isfile(path):
        fail(f"list file not found: {path} (EPIC-Kitchens {domain}: TranSVAE's dataset/epic-kitchens/list/; "
             f"see docs/data.md)")
    participant, lines, seen = EPIC_KITCHENS[domain], [], {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            folders = parts[0].replace("\\", "/").rstrip("/").split("/")
            ok = (len(parts) == 3 and len(folders) >= 4 and folders[-4] == part and folders[-3] == participant
                  and folders[-2].startswith(participant + "_") and folders[-1].isdigit()
                  and re.fullmatch(r"\d+", parts[1]) and re.fullmatch(r"\d+", parts[2]))
            if not ok:
                fail(f"{path}:{n}: malformed line {line.strip()!r} (expected '.../{part}/{participant}/<video_id>/<row> "
                     f"<num_frames> <verb_class>', TranSVAE's list for {domain})")
            row = int(folders[-1])
            if row in seen:
                fail(f"{path}:{n}: row {row} already used on line {seen[row]} (each line is one row of "
                     f"D{domain[1]}_{part}.pkl)")
            seen[row] = n
            lines.append((n, folders[-2], row, int(parts[1]), int(parts[2])))
    if not lines:
        fail(f"empty split: {path} lists no videos")
    table_path = _find_file(root, ("Annotations", "video_splits"), (f"D{domain[1]}_{part}.pkl", f"D{domain[1]}_{part}.csv"))
    if not table_path:
        return f"{os.path.basename(path)}: rows not checked (no Annotations/D{domain[1]}_{part}.pkl under the root)"
    table = read_table(table_path)
    for n, video, row, frames, label in lines:
        if row >= len(table):
            fail(f"{path}:{n}: row {row} is past the end of {table_path} ({len(table)} rows)")
        r = table[row]
        got = (str(r.get("participant_id")), str(r.get("video_id")), _int_field(r, "verb_class", 0, 8),
               _int_field(r, "stop_frame", 0, 2 ** 62) - _int_field(r, "start_frame", 0, 2 ** 62))
        if got != (participant, video, label, frames):
            fail(f"{path}:{n}: row {row} of {table_path} is (participant, video, verb_class, frames) = {got}, the "
                 f"line says {(participant, video, label, frames)}")
    return f"{os.path.basename(path)}: {len(lines)} lines match their rows of {table_path}"


def load_epic_kitchens_pair(args, with_target_train: bool = True) -> DomainPair:
    """D<i> -> D<j>: source train / held-out source (the source kitchen's test list) / target train / target test."""
    if args.source not in EPIC_KITCHENS or args.target not in EPIC_KITCHENS:
        fail(f"cannot pair {args.source!r} with {args.target!r}: EPIC-Kitchens pairs D1, D2, D3 with each other")
    if args.label not in ("auto", "verb"):
        fail(f"--label {args.label}: D1/D2/D3 have verb labels only")
    if not os.path.isdir(args.data_root):
        fail(f"data root not found: {args.data_root} (TranSVAE's repository root, holding dataset/epic-kitchens/)")
    parts = {"source_train": (args.source, "train"), "source_val": (args.source, "test"),
             "target_train": (args.target, "train"), "target_val": (args.target, "test")}
    cache = os.path.join(args.data_root, ".vidda_cache")
    splits, notes = {}, []
    for key, (domain, part) in parts.items():
        if key == "target_train" and not with_target_train:
            splits[key] = None
            continue
        path = os.path.join(args.data_root, "dataset", "epic-kitchens", "list",
                            f"list_{EPIC_KITCHENS[domain]}_{part}.txt")
        notes.append(check_epic_kitchens_list(path, domain, part, args.data_root))
        splits[key] = load_split(path, len(EPIC_KITCHENS_VERBS), args.data_root, cache, f"{domain}/{part}",
                                 args.skip_bad_videos)
    sizes = ", ".join(f"{d} {EPIC_KITCHENS_SIZES[d][0]}/{EPIC_KITCHENS_SIZES[d][1]}" for d in sorted({args.source,
                                                                                                       args.target}))
    notes = ["classes: the 8 MM-SADA verb classes (built in: " + ", ".join(EPIC_KITCHENS_VERBS) + ")",
             f"published train/test sizes: {sizes}"] + notes
    return DomainPair(f"EPIC-Kitchens {args.source}->{args.target}", list(EPIC_KITCHENS_VERBS),
                      splits["source_train"], splits["source_val"], splits["target_train"], splits["target_val"],
                      False, imbalanced=True, notes=notes)


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain data only (builtin containers and numpy arrays; pandas objects when pandas is installed), so a
    feature pickle cannot run code while it loads."""
    BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "bool",
                "complex", "slice", "range"}
    NUMPY = {"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"}

    def find_class(self, module, name):
        top = module.split(".")[0]
        if ((module == "builtins" and name in self.BUILTINS) or (top == "numpy" and name in self.NUMPY)
                or (module, name) in {("collections", "OrderedDict"), ("_codecs", "encode")}
                or (top == "pandas" and not module.startswith("pandas.core.computation") and name[0].isupper())):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _read_feature_pickle(path: str, modality: str) -> tuple:
    """(narration ids, [(N, 25, D_m) array per modality]) of a TA3N-EPIC feature pickle. ALL takes every modality in
    the file's key order (official dataset.py concatenates them in that order: D = 3072 for RGB+Flow+Audio)."""
    try:
        with open(path, "rb") as f:
            blob = _DataUnpickler(f).load()
    except Exception as e:
        fail(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    expected = "{'narration_ids': [N ids], 'features': {'RGB'|'Flow'|'Audio': (N, 25, D)}}"
    for key in ("narration_ids", "features"):
        if not isinstance(blob, dict) or key not in blob:
            fail(f"{path}: missing key {key!r} (expected {expected})")
    ids, features = [str(i) for i in blob["narration_ids"]], blob["features"]
    if not isinstance(features, dict):
        fail(f"{path}: 'features' is a {type(features).__name__}, not a dict (expected {expected})")
    names = [m for m in features if m in EPIC100_MODALITIES] if modality == "ALL" else [modality]
    arrays = []
    for m in (EPIC100_MODALITIES if modality == "ALL" else names):     # ALL needs all three
        if m not in features:
            fail(f"{path}: missing key 'features'/{m!r} (it has {', '.join(map(repr, features))})")
    for m in names:
        x = features[m]
        if len(x) != len(ids):
            fail(f"{path}: features[{m!r}] has {len(x)} records for {len(ids)} narration ids")
        if not (isinstance(x, np.ndarray) and x.ndim == 3 and x.dtype != object):    # records one by one: find the bad one
            for n, record in enumerate(x):
                shape = np.shape(record)
                if len(shape) != 2 or shape[0] != EPIC100_SEGMENTS:
                    fail(f"{path}: record {n} (narration id {ids[n]}) of features[{m!r}] has shape {shape}, expected "
                         f"({EPIC100_SEGMENTS}, D): wrong segment count")
            x = np.stack([np.asarray(r) for r in x])
        if x.shape[1] != EPIC100_SEGMENTS:
            fail(f"{path}: record 0 (narration id {ids[0] if ids else '-'}) of features[{m!r}] has {x.shape[1]} "
                 f"segments, expected {EPIC100_SEGMENTS}: wrong segment count")
        arrays.append(x)
    return ids, arrays


def load_epic100_split(root: str, key: str, modality: str, label: str, cache_dir: str) -> Split:
    """One EPIC-100 UDA split: the annotation table's rows in order, each joined by narration_id with its 25 feature
    rows. Features go to a memmap cache on first use (the pickles hold up to 26115 × 25 × 3072 floats); labels: (N,)
    for --label verb or noun, (N, 2) = (verb, noun) for verb+noun, -1 where the table has none (*_timestamps)."""
    pickle_name, table_name = EPIC100_SPLITS[key]
    pickle_path = _find_file(root, ("data", ""), (pickle_name + ".pkl",))
    table_path = _find_file(root, ("annotations", "UDA_annotations", ""), (table_name + ".csv", table_name + ".pkl"))
    if not pickle_path:
        fail(f"feature pickle not found: {os.path.join(root, 'data', pickle_name + '.pkl')} (EPIC-100 UDA layout; "
             f"see docs/data.md)")
    if not table_path:
        fail(f"annotation table not found: {os.path.join(root, 'annotations', table_name + '.csv')} (UDA_annotations "
             f"of the epic-kitchens-100-annotations repository)")
    table = read_table(table_path)
    if not table:
        fail(f"empty split: {table_path} has no rows")
    if "narration_id" not in table[0]:
        fail(f"{table_path}: missing column 'narration_id'")
    labelled = not table_name.endswith("_timestamps")
    heads = {"verb": 0, "noun": 1}
    both = np.full((len(table), 2), -1, dtype=np.int64)
    if labelled:
        for i, row in enumerate(table):
            both[i] = [_int_field(row, f"{h}_class", 0, c) for h, c in EPIC100_CLASSES.items()]
    labels = both if label == "verb+noun" else both[:, heads[label]]

    os.makedirs(cache_dir, exist_ok=True)
    stat = os.stat(pickle_path)
    ident = f"{os.path.abspath(pickle_path)}|{os.path.abspath(table_path)}|{modality}"
    base = os.path.join(cache_dir, "epic100_" + hashlib.sha1(ident.encode()).hexdigest()[:16])
    fingerprint = f"{stat.st_size}:{stat.st_mtime_ns}:" + hashlib.sha1(open(table_path, "rb").read()).hexdigest()
    ids = [row["narration_id"] for row in table]
    if not (os.path.isfile(base + ".json") and json.load(open(base + ".json")).get("fingerprint") == fingerprint):
        names, arrays = _read_feature_pickle(pickle_path, modality)
        index = {}
        for n, name in enumerate(names):
            if name in index:
                fail(f"{pickle_path}: narration id {name} appears twice (records {index[name]} and {n})")
            index[name] = n
        for row in table:
            if row["narration_id"] not in index:
                fail(f"{row['_where']}: unknown narration id {row['narration_id']!r} (not in {pickle_path})")
        order = np.array([index[i] for i in ids])
        dim = sum(x.shape[2] for x in arrays)
        packed = np.lib.format.open_memmap(base + ".tmp.npy", mode="w+", dtype=np.float32,
                                           shape=(len(order), EPIC100_SEGMENTS, dim))
        for start in range(0, len(order), 1024):                  # in chunks: no second full copy in memory
            rows = order[start:start + 1024]
            chunk = np.concatenate([np.asarray(x[rows], dtype=np.float32) for x in arrays], axis=2)   # (n, 25, D)
            bad = ~np.isfinite(chunk).all(axis=(1, 2))
            if bad.any():
                fail(f"{pickle_path}: NaN/inf in the features of narration id {ids[start + int(bad.argmax())]}")
            packed[start:start + len(rows)] = chunk
        packed.flush()
        del packed, arrays
        os.replace(base + ".tmp.npy", base + ".npy")
        with open(base + ".json.tmp", "w") as f:
            json.dump({"fingerprint": fingerprint, "pickle": os.path.abspath(pickle_path), "modality": modality}, f)
        os.replace(base + ".json.tmp", base + ".json")
    features = np.load(base + ".npy", mmap_mode="r")
    features = features.reshape(-1, features.shape[2])                                   # (N·25, D)
    n = len(ids)
    return Split(f"{pickle_name} ({modality})", features, np.arange(n, dtype=np.int64) * EPIC100_SEGMENTS,
                 np.full(n, EPIC100_SEGMENTS, dtype=np.int64), labels, ids,
                 f"{pickle_path} + {table_path} (packed cache {base}.npy)")


def _epic100_class_names(root: str, head: str) -> tuple:
    """Class names from EPIC_100_<head>_classes.csv (columns id,key,...) when it is under the root, else head00.."""
    path = _find_file(root, ("", "annotations", "UDA_annotations"), (f"EPIC_100_{head}_classes.csv",))
    count = EPIC100_CLASSES[head]
    if not path:
        return [f"{head}{i:03d}" for i in range(count)], f"{head} names: none found (EPIC_100_{head}_classes.csv)"
    rows = read_table(path)
    names = [None] * count
    for row in rows:
        names[_int_field(row, "id", 0, count)] = row.get("key") or row["id"]
    if None in names:
        fail(f"{path}: lists {len(rows)} {head} classes, expected {count} (ids 0..{count - 1})")
    return names, f"{head} names from {path}"


def load_epic100_pair(args, with_target_train: bool = True) -> DomainPair:
    """EPIC-100 UDA: source_train / source_val (held-out source, model selection) / target_train (no labels) /
    target_val (scored every epoch), and target_test when its pickle is there (predictions -> test.json)."""
    if (args.source, args.target) != EPIC100_DOMAINS:
        fail(f"cannot pair {args.source!r} with {args.target!r}: EPIC-100 UDA is --source epic100-source "
             f"--target epic100-target")
    if args.modality not in ("ALL", *EPIC100_MODALITIES):
        fail(f"unknown --modality {args.modality!r} (RGB, Flow, Audio or ALL)")
    if not os.path.isdir(args.data_root):
        fail(f"data root not found: {args.data_root} (the EPIC-100 UDA layout: data/*.pkl, annotations/*.csv)")
    label = "verb+noun" if args.label == "auto" else args.label
    cache = os.path.join(args.data_root, ".vidda_cache")
    splits = {key: load_epic100_split(args.data_root, key, args.modality, label, cache)
              for key in ("source_train", "source_val", "target_train", "target_val")
              if key != "target_train" or with_target_train}
    test = None
    if _find_file(args.data_root, ("data", ""), ("target_test.pkl",)):
        test = load_epic100_split(args.data_root, "target_test", args.modality, label, cache)
    widths = {f"{s.name} {s.dim}" for s in [*splits.values(), test] if s is not None}
    if len({w.rsplit(' ', 1)[1] for w in widths}) > 1:
        fail(f"the EPIC-100 pickles have different feature widths ({', '.join(sorted(widths))})")
    heads = {h: c for h, c in EPIC100_CLASSES.items() if h in label.split("+")}
    names, notes = [], []
    for head in heads:
        head_names, note = _epic100_class_names(args.data_root, head)
        names += [f"{head}:{n}" for n in head_names] if len(heads) > 1 else head_names
        notes.append(note)
    notes.append(f"heads: {', '.join(f'{h} {c}' for h, c in heads.items())}" + (
        " (the classifier's outputs side by side; top-1 = action: every head right)" if len(heads) > 1 else ""))
    notes.append("target test: " + (f"{len(test)} videos, predicted into test.json at the source-selected epoch"
                                    if test is not None else "no data/target_test.pkl, no test.json"))
    return DomainPair(f"EPIC-100 UDA {args.modality} {label}", names, splits["source_train"], splits["source_val"],
                      splits.get("target_train"), splits["target_val"], False, heads=heads, target_test=test,
                      imbalanced=True, notes=notes)


def load_epic_pair(args, with_target_train: bool = True) -> DomainPair:
    """--source/--target among D1, D2, D3, epic100-source, epic100-target."""
    if args.source in EPIC100_DOMAINS or args.target in EPIC100_DOMAINS:
        return load_epic100_pair(args, with_target_train)
    if args.modality != "ALL":
        fail(f"--modality {args.modality}: only the EPIC-100 feature pickles have modalities")
    return load_epic_kitchens_pair(args, with_target_train)


@dataclass
class DomainPair:
    """The splits of one source -> target task, and what every output file calls it."""
    name: str                    # e.g. "synthetic synth2-a->synth2-b" or "ucf->hmdb (full)"
    class_names: list
    source_train: Split
    source_val: Split            # held-out source split: model selection without target labels
    target_train: object         # Split, or None for domain generalization
    target_val: Split            # the target test list ("val" in the official lists)
    synthetic: bool
    heads: dict = field(default_factory=dict)   # EPIC-100: head -> classes; two heads = class_names side by side
    target_test: object = None   # EPIC-100: unlabelled target test split (predictions -> test.json), or None
    imbalanced: bool = False     # the summary line also shows class-mean accuracy (EPIC)
    notes: list = field(default_factory=list)   # lines for `python data.py info`: class file, published sizes

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _resolve_setting(source: str, target: str, setting: str) -> str:
    if setting != "auto":
        if setting not in SETTINGS:
            fail(f"unknown --setting {setting!r} (choose from auto, {', '.join(SETTINGS)})")
        if not {source, target} <= SETTINGS[setting][1]:
            fail(f"--setting {setting} pairs {' and '.join(sorted(SETTINGS[setting][1]))}, not {source!r} with {target!r}")
        return setting
    for name in ("full", "olympic", "kinetics"):
        if {source, target} <= SETTINGS[name][1]:
            return name
    fail(f"no official setting pairs {source!r} with {target!r} (pairs: ucf-hmdb, ucf-olympic, kinetics-gameplay)")


def official_list(data_root: str, domain: str, part: str, setting: str) -> str:
    """Path of an official list, e.g. <root>/hmdb51/list_hmdb51_val_hmdb_ucf-feature.txt."""
    folder = DOMAIN_DIRS[domain]
    return os.path.join(data_root, folder, f"list_{folder}_{part}_{SETTINGS[setting][0]}-feature.txt")


def load_pair(args, with_target_train: bool = True) -> DomainPair:
    """Resolve --source/--target (named datasets, synthetic domains or explicit list flags) into splits."""
    source, target = args.source, args.target
    explicit = {"source_list": args.source_list, "target_list": args.target_list, "val_list": args.val_list}
    if not with_target_train:                       # domain generalization: the target train list is never read
        explicit.pop("target_list")
    if not any(explicit.values()) and {source, target} & set(EPIC_DOMAINS):
        return load_epic_pair(args, with_target_train)
    known = sorted(DOMAIN_DIRS) + list(EPIC_DOMAINS) + sorted(SYNTHETIC_DOMAINS)   # EPIC names: dispatched above
    for flag, name in (("--source", source), ("--target", target)):
        if name in RETIRED_SYNTHETIC and not any(explicit.values()):
            make_synthetic_split(name, "val")                # says it is retired, and what to use instead
    for flag, name in (("--source", source), ("--target", target)):
        if not any(explicit.values()) and name not in known:
            fail(f"unknown {flag} {name!r} (choose from {', '.join(known)}, or pass explicit --*-list files)")
    reject_epic_flags(args, f"{source}->{target}")
    synthetic = source in SYNTHETIC_DOMAINS and not any(explicit.values())
    if synthetic != (target in SYNTHETIC_DOMAINS) and not any(explicit.values()):
        fail(f"cannot pair {source!r} with {target!r}: both must be synthetic (synth2-a/b/c) or both real")
    if synthetic:
        make = lambda d, part: make_synthetic_split(d, part, args.synth_seed, args.synth_dim)
        return DomainPair(f"synthetic {source}->{target}", [f"class{c:02d}" for c in range(SYNTH_CLASSES)],
                          make(source, "train"), make(source, "val"),
                          make(target, "train") if with_target_train else None, make(target, "val"), True)

    if not os.path.isdir(args.data_root) and not all(explicit.values()):
        fail(f"data root not found: {args.data_root} (expected the TA3N feature layout; see README, Data; "
             f"run with --source synth2-a --target synth2-b for the synthetic benchmark)")
    if not all(explicit.values()):
        for d in (source, target):
            if d not in DOMAIN_DIRS:             # reached with only some explicit lists and a synthetic name
                fail(f"{d!r} has no official list files: name real datasets ({', '.join(DOMAIN_DIRS)}) or pass "
                     f"every one of {', '.join('--' + k.replace('_', '-') for k in explicit)}")
        setting = _resolve_setting(source, target, args.setting)
    else:
        setting = args.setting if args.setting in SETTINGS else None
    tag = SETTINGS[setting][0] if setting else None

    class_file = args.class_file or (os.path.join(args.data_root, f"classInd_{tag}.txt") if tag else "")
    if class_file and (args.class_file or os.path.isfile(class_file)):
        class_names = read_class_file(class_file)
    elif tag:
        class_names, class_file = OFFICIAL_CLASSES[tag], f"built-in copy of TA3N data/classInd_{tag}.txt"
    else:
        fail("--class-file is required with explicit list files and no --setting")
    lists = {
        "source_train": args.source_list or official_list(args.data_root, source, "train", setting),
        "source_val": args.source_val_list or (official_list(args.data_root, source, "val", setting) if setting else ""),
        "target_train": (args.target_list or official_list(args.data_root, target, "train", setting))
        if with_target_train else "",
        "target_val": args.val_list or official_list(args.data_root, target, "val", setting),
    }
    if not lists["source_val"]:
        fail("--source-val-list is required with explicit list files (model selection needs a held-out source split)")
    cache = cache_dir(args)
    splits = {}
    for key, path in lists.items():
        if key == "target_train" and not with_target_train:
            splits[key] = None
            continue
        rel = os.path.relpath(path, args.data_root) if path.startswith(args.data_root) else path
        splits[key] = load_split(path, len(class_names), args.data_root, cache, rel, args.skip_bad_videos)
    dims = {s.dim for s in splits.values() if s is not None}
    if len(dims) != 1:
        fail(f"source and target features have different widths {sorted(dims)}")
    # classes the lists do not cover: one line each (recorded in metrics.json); training can still run
    used = np.unique(np.concatenate([s.labels for s in splits.values() if s is not None]))
    if len(used) and used.max() + 1 < len(class_names):
        warn(f"the class file lists {len(class_names)} classes, the lists use labels up to {used.max()}")
    missing = sorted(set(range(len(class_names))) - set(splits["source_train"].labels.tolist()))
    if missing:
        warn(f"{len(missing)} class(es) have no video in the source train list {lists['source_train']}: "
             f"{', '.join(class_names[c] for c in missing[:10])}{' ...' if len(missing) > 10 else ''}")
    name = args.name or f"{source}->{target}" + (f" ({setting})" if setting else "")
    notes = [f"classes: {len(class_names)} from {class_file}"] + (
        [f"setting {setting}: list tag {tag}; published split sizes: {SETTING_SIZES.get(setting, 'not published')}"]
        if setting else [])
    return DomainPair(name, class_names, splits["source_train"], splits["source_val"], splits["target_train"],
                      splits["target_val"], False, notes=notes)


WARNINGS = []          # one-line notices of this process (printed once, copied into metrics.json)


def warn(message: str):
    """A one-line notice on stderr that does not stop the run; Run records it in metrics.json."""
    if message not in WARNINGS:
        WARNINGS.append(message)
        print(f"notice: {message}", file=sys.stderr)


def cache_dir(args) -> str:
    """Where packed caches live: --cache-dir, else <data root>/.vidda_cache when the root is writable, else the
    user cache folder (~/.cache/vidda, or $XDG_CACHE_HOME/vidda), said in one line."""
    if args.cache_dir:
        folder = args.cache_dir
    else:
        root = args.data_root if os.path.isdir(args.data_root) else "."
        folder = os.path.join(root, ".vidda_cache")
        if not (os.access(folder, os.W_OK) if os.path.isdir(folder) else os.access(root, os.W_OK)):
            user = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vidda")
            warn(f"{root} is not writable: packed caches go to {user} (set another with --cache-dir)")
            folder = user
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        fail(f"cannot create the cache folder {folder} ({e.strerror}); pass a writable --cache-dir")
    if not os.access(folder, os.W_OK):
        fail(f"the cache folder {folder} is not writable; pass a writable --cache-dir")
    return folder


# ==== 2. sampling and pairing =======================================================================

def sample_indices(lengths, num_segments: int, mode: str = "center", num_clips: int = 1, generator=None,
                   short: str = "pad"):
    """0-based frame indices, vectorized over videos.

    center  the official rule (TA3N dataset.py `_get_test_indices`): tick = n/K, index_k = int(tick/2 + tick·k)
            (+1 in the official 1-based numbering); a video with n < K frames gives 0..n-1 then repeats the last.
    random  TSN training offsets: one uniform frame inside each of the K equal segments.
    clips   num_clips evenly shifted centred samplings (MA2L-TD-style multi-clip testing); clips=1 == center.
    short   videos with n < K frames: "pad" (TA3N: 0..n-1, then the last frame repeated) or "spread" (the same
            formulas as longer videos, so the repeated frames are spread over the video, as MA2L-TD's loader does).
    Args: lengths (N,) ints. Returns (N, K) long, or (N, num_clips, K) for mode="clips".
    """
    n = torch.as_tensor(np.asarray(lengths), dtype=torch.float64)[:, None]             # (N, 1)
    k = torch.arange(num_segments, dtype=torch.float64)[None, :]                         # (1, K)
    tick = n / num_segments
    if mode == "center":
        idx = torch.floor(tick / 2 + tick * k)
    elif mode == "random":
        u = torch.rand(n.shape[0], num_segments, generator=generator, dtype=torch.float64)
        idx = torch.floor(tick * (k + u))
    elif mode == "clips":
        c = (torch.arange(num_clips, dtype=torch.float64)[None, :, None] + 0.5) / num_clips    # (1, clips, 1)
        idx = torch.floor(tick[:, :, None] * (k[:, None, :] + c))                             # (N, clips, K)
    else:
        raise ValueError(f"unknown sampling mode {mode}")
    if short == "spread":                          # every formula above stays inside 0..n-1 (tick·K = n)
        return idx.long()
    if short != "pad":
        raise ValueError(f"unknown short-video rule {short}")
    pad = torch.minimum(k, n - 1)                                                         # 0..n-1, n-1, n-1, ...
    if mode == "clips":
        return torch.where(n[:, :, None] >= num_segments, idx, pad[:, None, :].expand_as(idx)).long()
    return torch.where(n >= num_segments, idx, pad.expand_as(idx)).long()


def gather_frames(split: Split, videos, frame_idx, device="cpu") -> torch.Tensor:
    """Frames of the given videos: videos (B,) long, frame_idx (B, ..., K) 0-based -> (B, ..., K, D) float32."""
    videos = torch.as_tensor(videos).cpu()
    rows = torch.as_tensor(split.offsets)[videos].view(-1, *([1] * (frame_idx.dim() - 1))) + frame_idx.cpu()
    if isinstance(split.features, torch.Tensor):
        out = split.features[rows.to(split.features.device)]
    else:                                                    # memmap: read only the sampled rows
        flat = rows.reshape(-1).numpy()
        out = torch.from_numpy(np.ascontiguousarray(split.features[flat])).view(*rows.shape, split.dim)
    return out.to(device, non_blocking=True)


def target_batch_size(batch_size: int, n_source: int, n_target: int) -> int:
    """The official script's integer rule: 128 · 840 / 1438 -> 74, so both domains take about as many steps."""
    return max(1, batch_size * n_target // n_source)


def paired_batches(n_source: int, n_target: int, batch_source: int, batch_target: int, generator,
                   cycle: bool = False) -> list:
    """One epoch of (source indices, target indices) steps, each domain shuffled, last batches kept partial.
    The epoch ends with the shorter domain (official `zip`), or with the longer one when cycle=True (the shorter
    domain is reshuffled each time it runs out)."""
    def batches(n, b):
        perm = torch.randperm(n, generator=generator)
        return list(perm.split(b))
    src, tgt = batches(n_source, batch_source), batches(n_target, batch_target)
    if cycle:
        steps = max(len(src), len(tgt))
        while len(src) < steps:
            src += batches(n_source, batch_source)
        while len(tgt) < steps:
            tgt += batches(n_target, batch_target)
    steps = min(len(src), len(tgt))
    return list(zip(src[:steps], tgt[:steps]))


# ==== 3. evaluation =================================================================================

@torch.no_grad()
def predict_split(predict, split: Split, num_segments: int, device, num_clips: int = 1, batch_size: int = 256,
                  short: str = "pad", cache: dict = None):
    """Logits (N, C) of every video; with num_clips > 1 the logits of the clips are averaged. `cache`: a dict in
    which the split's centred frames, gathered on the device, are kept between calls (they never change) when
    they take less than 256 MB."""
    mode = "clips" if num_clips > 1 else "center"
    key = (id(split), num_segments, num_clips, short)
    if cache is not None and key in cache:
        frames = cache[key]
    else:
        idx = sample_indices(split.lengths, num_segments, mode, num_clips, short=short)
        small = idx.numel() * split.dim * 4 < 256 * 2 ** 20
        frames = gather_frames(split, torch.arange(len(split)), idx, device) if small else None
        if cache is not None and small:
            cache[key] = frames
    out = []
    for start in range(0, len(split), batch_size):
        v = torch.arange(start, min(start + batch_size, len(split)))
        x = frames[start:start + len(v)] if frames is not None else gather_frames(split, v, idx[v], device)
        if num_clips > 1:                                                # (B, clips, K, D)
            logits = predict(x.flatten(0, 1)).view(len(v), num_clips, -1).mean(1)
        else:                                                            # (B, K, D)
            logits = predict(x)
        out.append(logits.float().cpu())
    return torch.cat(out)


def accuracy_report(logits: torch.Tensor, labels, num_classes: int) -> dict:
    """Top-1, class-mean accuracy (mean over classes present) and the confusion matrix (rows = true class)."""
    labels = torch.as_tensor(np.asarray(labels))
    pred = logits.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1)
    present = confusion.sum(1) > 0
    return {"top1": float((pred == labels).double().mean()), "class_mean": float(per_class[present].mean()),
            "confusion": confusion.tolist()}


def select_epochs(history: list) -> dict:
    """The protocol's three numbers from per-epoch rows: last epoch, best source-val epoch, best target epoch.
    'oracle' picks the epoch by target test accuracy, as the official TA3N, MA2L-TD and APN code do; it is
    shown (labelled) only so that numbers can be compared with the papers."""
    def pick(row, rule):
        return {"rule": rule, "epoch": row["epoch"], "top1": row["target_top1"],
                "class_mean": row["target_class_mean"], "confusion": row["target_confusion"]}
    last = history[-1]
    # Ties on source accuracy are common (held-out source accuracy saturates early): take the LATEST tied
    # epoch, the one trained longest under the same evidence. The oracle keeps the earliest tie, as the
    # official code's `if prec1 > best_prec1` does.
    chosen = max(history, key=lambda r: (r["source_val_top1"], r["epoch"]))
    oracle = max(history, key=lambda r: (r["target_top1"], -r["epoch"]))
    return {"last": pick(last, "last epoch"), "source_selected": pick(chosen, "best held-out source accuracy"),
            "oracle": pick(oracle, "best target test accuracy (oracle, for comparison with papers)")}


# ---- labels: one head, or verb + noun (EPIC-100, --label) ----
# With two heads the classifier's C_verb + C_noun outputs are the two heads side by side (one Linear of that width is
# two Linear heads), the labels are (N, 2), the class loss is the mean of the heads' CEs and a video counts for the
# action metric at k when every head's true class is in that head's own top-k (official EPIC-100 TA3N code,
# main.py:488-495 and multitask_accuracy, main.py:936-966). Scripts pass the heads' sizes, tuple(pair.heads.values());
# with fewer than two heads every function below is the plain single-label one.

def split_heads(logits, heads: tuple = ()) -> list:
    """(B, ΣC_h) -> [(B, C_h) per head]; one head (or none): [logits]."""
    return list(logits.split(list(heads), dim=-1)) if len(heads) > 1 else [logits]


def label_loss(logits, labels, heads: tuple = ()):
    """CE(logits, labels), or with two heads 0.5·(CE_verb + CE_noun) on labels (B, 2) (official train_metric=all)."""
    if len(heads) < 2:
        return torch.nn.functional.cross_entropy(logits, labels)
    parts = split_heads(logits, heads)
    return sum(torch.nn.functional.cross_entropy(p, labels[:, h]) for h, p in enumerate(parts)) / len(parts)


def head_probabilities(logits, heads: tuple = ()):
    """softmax within each head, side by side: (B, ΣC_h), each head's block sums to 1."""
    return torch.cat([torch.softmax(p, -1) for p in split_heads(logits, heads)], -1)


def head_entropy(logits, heads: tuple = ()):
    """H(softmax) per row, natural log, averaged over the heads (official: 0.5·(H_verb + H_noun)). (B, ΣC_h) -> (B,)."""
    parts = [torch.log_softmax(p, -1) for p in split_heads(logits, heads)]
    return sum(-(p.exp() * p).sum(-1) for p in parts) / len(parts)


def topk_hits(logits, labels, k: int) -> torch.Tensor:
    """(N,) bool: the true class is among the k highest logits (k capped at C). logits (N, C), labels (N,)."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices                  # (N, k)
    return (top == torch.as_tensor(np.asarray(labels))[:, None]).any(-1)


def action_hits(logits, labels, heads: tuple, k: int) -> torch.Tensor:
    """(N,) bool: for EVERY head the true class is in that head's top-k. labels (N, heads)."""
    labels = torch.as_tensor(np.asarray(labels))
    hits = [topk_hits(p, labels[:, h], k) for h, p in enumerate(split_heads(logits, heads))]
    return torch.stack(hits).all(0)


def split_report(logits, labels, pair) -> dict:
    """accuracy_report for one head. With two heads: top1 = action top-1 (what model selection compares),
    class_mean and confusion of the first head (verb), and under 'heads' each head's and the action's top-1/top-5."""
    if len(pair.heads) < 2:
        return accuracy_report(logits, labels, pair.num_classes)
    labels = torch.as_tensor(np.asarray(labels))
    sizes = tuple(pair.heads.values())
    parts = split_heads(logits, sizes)
    report = accuracy_report(parts[0], labels[:, 0], sizes[0])
    extra = {}
    for h, (name, part) in enumerate(zip(pair.heads, parts)):
        for k in (1, 5):
            extra[f"{name}_top{k}"] = float(topk_hits(part, labels[:, h], k).double().mean())
    for k in (1, 5):
        extra[f"action_top{k}"] = float(action_hits(logits, labels, sizes, k).double().mean())
    return {**report, "top1": extra["action_top1"], "heads": extra}


def summary_details(pair, history: list, final: dict) -> str:
    """What the summary line adds on EPIC data: class-mean accuracy (the classes are very imbalanced), and with two
    heads the verb and noun top-1 of the selected epochs (the line's top-1 is then the action top-1)."""
    if not pair.imbalanced:
        return ""
    keys = ("last", "source_selected", "oracle")
    text = " | class-mean " + " / ".join(f"{100 * final[k]['class_mean']:.2f}" for k in keys)
    if len(pair.heads) > 1:
        rows = {r["epoch"]: r for r in history}
        for name in pair.heads:
            text += f" | {name} " + " / ".join(f"{100 * rows[final[k]['epoch']][f'target_{name}_top1']:.2f}" for k in keys)
        text += " (top-1 = action)"
    return text


def write_test_json(path: str, logits, narration_ids: list, heads: dict):
    """The EPIC-100 UDA challenge's submission file: per narration id, each head's softmax probabilities by class id
    (3 decimals), version 0.2 (official test_models.py)."""
    parts = split_heads(logits.double(), tuple(heads.values()))
    probs = [torch.softmax(p, -1).numpy().round(3).tolist() for p in parts]               # float64: 3 decimals exact
    results = {}
    for n, narration_id in enumerate(narration_ids):
        results[narration_id] = {h: {str(c): p for c, p in enumerate(probs[i][n])} for i, h in enumerate(heads)}
    with open(path + ".tmp", "w") as f:
        json.dump({"results_target": results, "version": "0.2", "challenge": "domain_adaptation", "sls_pt": 0,
                   "sls_tl": 0, "sls_td": 0}, f)
    os.replace(path + ".tmp", path)


def write_test_predictions(run, predict):
    """At the source-selected epoch (ties: the latest, as select_epochs), predict the unlabelled target test split
    into <out>/test.json; called by Run.end_epoch when the pair has a test split."""
    if select_epochs(run.history)["source_selected"]["epoch"] != run.epoch:
        return
    heads = run.data.heads or {"class": run.data.num_classes}
    logits = predict_split(predict, run.data.target_test, run.args.num_segments, run.device, short=run.short_videos)
    write_test_json(os.path.join(run.out, "test.json"), logits, run.data.target_test.videos, heads)


def save_features(run, feature, feature_source=None) -> str:
    """--save-features: the final video features of the held-out source split and the target test split, with their
    labels, into <out>/features.npz (read by benchmark/plot.py). `feature` maps frames (B, K, D) to (B, d) (eval mode
    is the caller's job); `feature_source`, when given, is used for the source split (AdaBN)."""
    d, k = run.data, run.args.num_segments
    h_s = predict_split(feature_source or feature, d.source_val, k, run.device, short=run.short_videos)
    h_t = predict_split(feature, d.target_val, k, run.device, short=run.short_videos)
    path = os.path.join(run.out, "features.npz")
    np.savez_compressed(path, source=h_s.numpy(), target=h_t.numpy(), source_labels=np.asarray(d.source_val.labels),
                        target_labels=np.asarray(d.target_val.labels), classes=np.array(d.class_names),
                        names=np.array([d.source_val.name, d.target_val.name]), epoch=run.epoch)
    return path


# scripts that implement --label verb+noun (two heads) and --save-features; the others refuse them in one line
LABEL_AWARE_SCRIPTS = ("ta3n", "baselines")


def check_script_flags(args, pair, script: str):
    if script in LABEL_AWARE_SCRIPTS:
        return
    if len(pair.heads) > 1:
        fail(f"{script}.py trains one classifier head: use --label verb or --label noun (two heads: ta3n.py, "
             f"baselines.py)")
    if args.save_features:
        fail(f"--save-features is implemented in ta3n.py and baselines.py, not in {script}.py")


def reject_epic_flags(args, name: str):
    """--label and --modality choose among EPIC labels and features; other data has one label and one feature."""
    if args.label != "auto":
        fail(f"--label {args.label}: {name} has one class label per video (verb/noun labels: EPIC data)")
    if args.modality != "ALL":
        fail(f"--modality {args.modality}: only the EPIC-100 feature pickles have modalities")


# ==== 4. run plumbing ===============================================================================

@dataclass
class RunArgs:
    """The flags every script shares; each method's `Args(RunArgs)` adds its own below these."""
    source: str = field(default="", metadata={"help": "source domain: ucf, hmdb, olympic, kinetics, gameplay, "
                                              "EPIC-Kitchens D1/D2/D3, epic100-source, or synthetic synth2-a/b/c "
                                              "(default synth2-a; with --*-list files: the "
                                              "source list's name)"})
    target: str = field(default="", metadata={"help": "target domain, same names (default synth2-b; with list "
                                              "files: the --val-list's name)"})
    data_root: str = field(default_factory=lambda: os.environ.get("VIDDA_DATA", "./data"),
                           metadata={"help": "root of the TA3N feature layout (env VIDDA_DATA)"})
    setting: str = field(default="auto", metadata={"help": "auto|full|small|olympic|kinetics (UCF-HMDB_full, "
                                                   "UCF-HMDB_small, UCF-Olympic, Kinetics-Gameplay)"})
    epochs: int = field(default=30, metadata={"help": "training epochs"})
    batch_size: int = field(default=128, metadata={"help": "source batch; target = batch · n_t / n_s"})
    lr: float = field(default=0.03, metadata={"help": "initial learning rate"})
    seed: int = field(default=1, metadata={"help": "seed of the model, dropout and sampling"})
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda"})
    out: str = field(default="", metadata={"help": "output folder (default "
                                          "runs/<script>[_<variant>]_<source>_<target>_s<seed>)"})
    resume: bool = field(default=False, metadata={"help": "continue from the output folder's checkpoint"})
    name: str = field(default="", metadata={"help": "name of the data in the output folder and summary (default: "
                                            "the source and target names)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: OMP_NUM_THREADS if set, else every "
                                              "core on an idle machine and 1 on a busy one)"})
    cache_dir: str = field(default="", metadata={"help": "packed-cache folder (default <data-root>/.vidda_cache, "
                                                 "or ~/.cache/vidda when the data root is read-only)"})
    eval_only: bool = field(default=False, metadata={"help": "no training: test the model of --checkpoint"})
    checkpoint: str = field(default="", metadata={"help": "with --eval-only: a checkpoint.pt or best_source.pt"})
    num_segments: int = field(default=5, metadata={"help": "frames sampled per video (K)"})
    source_list: str = field(default="", metadata={"help": "explicit source train list (overrides --source)"})
    source_val_list: str = field(default="", metadata={"help": "explicit held-out source list"})
    target_list: str = field(default="", metadata={"help": "explicit target train list"})
    val_list: str = field(default="", metadata={"help": "explicit target test list"})
    class_file: str = field(default="", metadata={"help": "explicit class-index file (any class count)"})
    skip_bad_videos: bool = field(default=False, metadata={"help": "skip (and list) unreadable videos"})
    synth_seed: int = field(default=0, metadata={"help": "seed of the synthetic benchmark's data"})
    synth_dim: int = field(default=128, metadata={"help": "feature width of the synthetic benchmark"})
    label: str = field(default="auto", metadata={"help": "EPIC: verb, noun or verb+noun (two heads; top-1 = action: "
                                                 "verb and noun both right); auto = verb+noun on EPIC-100, the one "
                                                 "class label elsewhere", "choices": list(LABELS)})
    modality: str = field(default="ALL", metadata={"help": "EPIC-100 feature pickles: RGB, Flow, Audio or ALL (all "
                                                   "three side by side)", "choices": ["ALL", *EPIC100_MODALITIES]})
    save_features: bool = field(default=False, metadata={"help": "write <out>/features.npz: final video features "
                                                         "of the source val and target val splits with labels (for "
                                                         "benchmark/plot.py)"})


def parse_args(cls, argv=None, description: str = ""):
    """Build an argparse parser from a dataclass: field `batch_size` -> flag `--batch-size`; bools get --x/--no-x;
    list fields take several values; `metadata={"choices": ...}` restricts a value."""
    parser = argparse.ArgumentParser(description=(description or "").split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw = {"default": default, "help": f.metadata.get("help", " ")}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("list"):
            kw.update(nargs="+", type=str)
        else:
            kw["type"] = {"int": int, "float": float}.get(kind, str)
        parser.add_argument("--" + f.name.replace("_", "-"), **kw)
    parser.error = lambda message: fail(f"{message} (see --help)")          # one line, no usage block
    argv = list(sys.argv[1:] if argv is None else argv)
    args = cls(**vars(parser.parse_args(argv)))
    object.__setattr__(args, "argv", argv)             # the words as typed (not a field: not in metrics' "args")
    if isinstance(args, RunArgs):
        # a run on explicit list files is named after its lists, never after the synthetic default pair
        stem = lambda path: os.path.splitext(os.path.basename(path))[0]
        if args.source == "":
            args.source = stem(args.source_list) if args.source_list else SYNTHETIC_DOMAINS[0]
        if args.target == "":
            args.target = stem(args.val_list) if args.val_list else SYNTHETIC_DOMAINS[1]
    return args


def seed_everything(seed: int):
    """Seed python, numpy and torch (CPU and CUDA) at once."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        fail(f"unknown --device {name!r} (auto, cpu or cuda)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


def _rng_state(generator):
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generator": generator.get_state()}


def _set_rng_state(state, generator):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])


def atomic_save(obj, path: str):
    """torch.save to a temp file, then rename: a run killed mid-write leaves the previous checkpoint intact."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


# flags that may differ between a run and its resumption (or a re-run into the same folder)
RESUMABLE = {"resume", "epochs", "out", "device", "threads", "cache_dir", "eval_only", "checkpoint", "mmd"}


def changed_settings(args, then: dict) -> list:
    """Flags (outside RESUMABLE) whose value differs from a stored run's args; a flag the stored run predates
    counts as unchanged when it is at its default."""
    plain = lambda value: json.loads(json.dumps(value, default=str))      # tuples and lists compare equal
    changed = []
    for f in dataclasses.fields(args):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name not in RESUMABLE and plain(getattr(args, f.name)) != plain(then.get(f.name, default)):
            changed.append(f.name)
    return sorted(changed)


def pick_threads(requested: int) -> int:
    """Torch CPU threads for --threads N, or for 0: OMP_NUM_THREADS when it is set, else every core on an idle
    machine and one on a busy one (1-minute load average). These models are small: on a 2-core machine shared with
    another job, two threads per process made `python ta3n.py` about 10x slower than one (docs/data.md), while on
    an idle machine two threads are faster. The thread count never changed a metric in our runs."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - load)))


def command_line(args, script: str) -> str:
    """The command line of this run as it was typed (parse_args keeps it), e.g. `python ta3n.py --seed 2`."""
    return " ".join(["python", f"{script}.py"] + [shlex.quote(a) for a in getattr(args, "argv", [])])


def _check_output_folder(out: str):
    """--out must be a creatable, writable folder: checked before any data is read or any epoch is trained."""
    if os.path.isfile(out):
        fail(f"--out {out} is a file, not a folder")
    parent = os.path.dirname(os.path.abspath(out))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.path.isfile(parent):
        fail(f"--out {out} lies under {parent}, which is a file")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write_test_{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        fail(f"cannot write the output folder {out} ({e.strerror}); pass a writable --out")


class Run:
    """Run plumbing shared by every script: data, device, seeding, per-epoch evaluation, outputs, resume.
    It owns no part of the method: the training step stays in the method file."""

    def __init__(self, args, script: str, with_target_train: bool = True, data: DomainPair = None,
                 variant: str = ""):
        self.args, self.script, self.started = args, script, time.time()
        for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--lr", args.lr),
                            ("--num-segments", args.num_segments), ("--synth-dim", args.synth_dim)):
            if not value > 0:
                fail(f"{flag} must be positive, got {value}")
        for flag, value in (("--seed", args.seed), ("--synth-seed", args.synth_seed)):
            if not 0 <= value < 2 ** 32:
                fail(f"{flag} must be in [0, 2^32), got {value}")
        if args.threads < 0:
            fail(f"--threads must be 0 (automatic) or positive, got {args.threads}")
        if args.eval_only and not args.checkpoint:
            fail("--eval-only needs --checkpoint PATH (the checkpoint.pt or best_source.pt of a trained run)")
        if args.eval_only and not os.path.isfile(args.checkpoint):
            fail(f"--checkpoint {args.checkpoint} not found")
        self.device = pick_device(args.device)

        # the output folder: named after the data (or --name); never silently reused by a run with other settings
        targets = "+".join(args.target) if isinstance(args.target, list) else args.target
        name = args.name or f"{args.source}_{targets}"
        folder = "_".join([script] + ([variant] if variant else []) + [name, f"s{args.seed}"])
        self._out_typed = bool(args.out)
        self.out = args.out = args.out or os.path.join("runs", folder + ("_eval" if args.eval_only else ""))
        _check_output_folder(self.out)
        self.checkpoint_path = os.path.join(self.out, "checkpoint.pt")
        if args.resume and not os.path.isfile(self.checkpoint_path):
            fail(f"--resume: no checkpoint.pt in {self.out} (another --out? without --resume a new run starts)")
        metrics_path = os.path.join(self.out, "metrics.json")
        if not args.resume and os.path.isfile(metrics_path):
            try:
                with open(metrics_path) as f:
                    then = json.load(f).get("args", {})
            except (OSError, ValueError):
                then = {}
            changed = changed_settings(args, then)
            if changed:
                fail(f"{self.out} holds a run with other settings ({', '.join('--' + k.replace('_', '-') for k in changed)}"
                     f"); pass another --out, or --resume with that run's flags")

        self._saved_epoch, self._previous_sigint = 0, None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._interrupted)
        self.threads = pick_threads(args.threads)
        torch.set_num_threads(self.threads)
        # videos shorter than K: TA3N's padding unless a method's Args asks otherwise (MA2L-TD: --short-videos)
        self.short_videos = getattr(args, "short_videos", "pad")
        self.data = data or load_pair(args, with_target_train)
        check_script_flags(args, self.data, script)
        if self.data.source_train.dim != self.data.target_val.dim:
            fail("source and target features have different widths")
        seed_everything(args.seed)
        self.generator = torch.Generator().manual_seed(args.seed)     # batches and frame sampling
        self.history, self.epoch, self._state = [], 0, {}
        self.extra_time = 0.0
        self._eval_frames = {}
        self._log_lines = not sys.stdout.isatty()          # nohup, CI, a log file: one line per epoch, no bars

    def _interrupted(self, signum, frame):
        """Ctrl-C: say where the last complete epoch is and how to continue, exit 130 (no traceback)."""
        if self._saved_epoch and not self.args.eval_only:
            print(f"\ninterrupted: epoch {self._saved_epoch} of {self.args.epochs} is saved in "
                  f"{self.checkpoint_path}; continue with: {self.resume_command()}", file=sys.stderr)
        else:
            print("\ninterrupted before the first epoch finished: nothing was saved", file=sys.stderr)
        raise SystemExit(130)

    def resume_command(self) -> str:
        words = command_line(self.args, self.script)
        words += "" if self._out_typed else f" --out {shlex.quote(self.out)}"
        return words + ("" if self.args.resume else " --resume")

    # -- data access ---------------------------------------------------------------------------------
    def frames(self, split: Split, videos, mode: str = "center", num_clips: int = 1) -> torch.Tensor:
        """Sampled frames of a batch on the run's device: (B, K, D), or (B, clips, K, D) for mode='clips'."""
        lengths = torch.as_tensor(split.lengths)[torch.as_tensor(videos).cpu()]
        idx = sample_indices(lengths, self.args.num_segments, mode, num_clips, self.generator, self.short_videos)
        return gather_frames(split, videos, idx, self.device)

    def pairs(self, cycle: bool = False, batch_size: int = None) -> list:
        """This epoch's (source, target) index batches; target batch = batch · n_target / n_source."""
        b = batch_size or self.args.batch_size
        n_s, n_t = len(self.data.source_train), len(self.data.target_train)
        return paired_batches(n_s, n_t, b, target_batch_size(b, n_s, n_t), self.generator, cycle)

    def progress(self, batches, desc: str = "train"):
        """A per-batch progress bar over one epoch's batches (shown on a terminal only, like every bar here)."""
        return tqdm(batches, desc=desc, unit="batch", leave=False, disable=None)

    # -- epochs, evaluation, checkpoints -------------------------------------------------------------
    def epochs(self, state: dict):
        """Yield epoch numbers 1..E; with --resume, restore `state` (modules/optimizers by name) and skip done ones."""
        self._state = state
        if self.args.resume:
            ckpt = self._load(self.checkpoint_path)
            # the checkpoint must come from the same configuration (only these may change on resume)
            changed = changed_settings(self.args, ckpt.get("args", {}))
            if changed:
                fail(f"{self.checkpoint_path} was written with other settings "
                     f"({', '.join('--' + k.replace('_', '-') for k in changed)}); use another --out or the same flags")
            self._restore(state, ckpt, self.checkpoint_path)
            self.history, self.epoch = ckpt["history"], ckpt["epoch"]
            self._saved_epoch = self.epoch
            self.extra_time = ckpt.get("elapsed", 0.0)
            _set_rng_state(ckpt["rng"], self.generator)
            print(f"resumed {self.out} at epoch {self.epoch}", file=sys.stderr)
        for epoch in tqdm(range(self.epoch + 1, self.args.epochs + 1), desc=self.script, unit="epoch",
                          initial=self.epoch, total=self.args.epochs, leave=True, disable=None):
            self.epoch = epoch
            yield epoch

    def _load(self, path: str) -> dict:
        try:
            return torch.load(path, map_location=self.device, weights_only=False)
        except Exception as e:
            fail(f"cannot read {path} ({type(e).__name__}); delete it or drop --resume")

    def _restore(self, state: dict, ckpt: dict, path: str, trained_only: bool = False):
        try:
            for key, obj in state.items():
                if not trained_only or not isinstance(obj, torch.optim.Optimizer):
                    obj.load_state_dict(ckpt["state"][key])
        except (KeyError, RuntimeError, ValueError) as e:
            fail(f"{path} does not match this model ({type(e).__name__}: {str(e).splitlines()[0][:120]})")

    def load_trained(self, state: dict):
        """--eval-only: load `state` (modules and other trained state, no optimizer) from --checkpoint; modules go
        to eval mode."""
        self._state = state
        ckpt = self._load(self.args.checkpoint)
        self._restore(state, ckpt, self.args.checkpoint, trained_only=True)
        for obj in state.values():
            if isinstance(obj, torch.nn.Module):
                obj.eval()
        self.epoch = int(ckpt.get("epoch", 0))

    def end_epoch(self, train_stats: dict, predict, num_clips: int = 1, predict_source=None) -> dict:
        """Evaluate on the held-out source split and the target test list, record the row, write the outputs and
        an atomic checkpoint (model, optimizer and RNG state; plus best_source.pt, the modules of the
        source-selected epoch). `predict` maps frames (B, K, D) to logits (B, C) (eval mode is the caller's job);
        `predict_source`, when given, is used for the source split instead (AdaBN: source BN statistics)."""
        d = self.data
        src = split_report(self._predict(predict_source or predict, d.source_val, num_clips), d.source_val.labels, d)
        tgt = split_report(self._predict(predict, d.target_val, num_clips), d.target_val.labels, d)
        row = {"epoch": self.epoch, **{k2: float(v) for k2, v in train_stats.items()},
               "source_val_top1": src["top1"], "target_top1": tgt["top1"], "target_class_mean": tgt["class_mean"],
               **{f"target_{k2}": v for k2, v in tgt.get("heads", {}).items()}, "target_confusion": tgt["confusion"]}
        self.history.append(row)
        if d.target_test is not None:
            write_test_predictions(self, predict)
        self._write(final=False)
        if self.args.eval_only:
            return row
        trained = {key: obj.state_dict() for key, obj in self._state.items()
                   if not isinstance(obj, torch.optim.Optimizer)}                # the model, without optimizers
        if max(self.history, key=lambda r: (r["source_val_top1"], r["epoch"])) is row:     # ties: the latest
            atomic_save({"epoch": self.epoch, "args": dataclasses.asdict(self.args), "state": trained},
                        os.path.join(self.out, "best_source.pt"))
        atomic_save({"epoch": self.epoch, "history": self.history, "rng": _rng_state(self.generator),
                     "elapsed": self.elapsed(), "args": dataclasses.asdict(self.args),
                     "state": {key: obj.state_dict() for key, obj in self._state.items()}}, self.checkpoint_path)
        self._saved_epoch = self.epoch
        if self._log_lines:                                 # after the checkpoint: the line means "saved"
            losses = " ".join(f"{k} {v:.4g}" for k, v in train_stats.items())
            print(f"{self.script} epoch {self.epoch}/{self.args.epochs} | {losses} | source {100 * src['top1']:.2f} "
                  f"| target {100 * tgt['top1']:.2f} | {self.elapsed():.1f}s", flush=True)
        return row

    def _predict(self, predict, split: Split, num_clips: int) -> torch.Tensor:
        """Logits of every video of a split; its evaluation frames are gathered once per run, then reused."""
        return predict_split(predict, split, self.args.num_segments, self.device, num_clips, short=self.short_videos,
                             cache=self._eval_frames)

    def elapsed(self) -> float:
        return self.extra_time + time.time() - self.started

    def _write(self, final: bool, extra: dict = None):
        columns = [c for c in self.history[0] if c != "target_confusion"]
        with open(os.path.join(self.out, "epochs.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.history)
        skipped = [{"split": s.name, "video": v, "reason": r}
                   for s in (self.data.source_train, self.data.source_val, self.data.target_train, self.data.target_val)
                   if s is not None for v, r in s.skipped]
        metrics = {"script": self.script, "data": self.data.name, "synthetic": self.data.synthetic,
                   "classes": self.data.class_names, "args": dataclasses.asdict(self.args),
                   "command": command_line(self.args, self.script),
                   "epochs": [{k: v for k, v in r.items() if k != "target_confusion"} for r in self.history],
                   "final": select_epochs(self.history), "wall_time_s": round(self.elapsed(), 2),
                   "complete": final, "threads": self.threads, "skipped_videos": skipped, "notices": list(WARNINGS),
                   "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                "numpy": np.__version__}, **(extra or {})}
        if self.args.eval_only:
            metrics["evaluated_checkpoint"] = os.path.abspath(self.args.checkpoint)
        with open(os.path.join(self.out, "metrics.json.tmp"), "w") as f:
            json.dump(metrics, f, indent=1)
        os.replace(os.path.join(self.out, "metrics.json.tmp"), os.path.join(self.out, "metrics.json"))
        return metrics

    def finish(self, extra: dict = None, summary: str = "") -> dict:
        """Write the final metrics.json, print the one-line summary (`summary` is appended to it: APN names every
        target there), return the metrics."""
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
        if not self.history:
            fail(f"nothing to report: no epoch ran (--epochs {self.args.epochs}?)")
        metrics = self._write(final=True, extra=extra)
        f = metrics["final"]
        label = "SYNTHETIC " if self.data.synthetic else ""
        skipped = f" | {len(metrics['skipped_videos'])} videos skipped" if metrics["skipped_videos"] else ""
        if self.args.eval_only:
            picked = f"epoch {f['last']['epoch']} of {self.args.checkpoint}"
            print(f"{self.script} | {label}data {self.data.name} | target top-1 {100 * f['last']['top1']:.2f} "
                  f"(class mean {100 * f['last']['class_mean']:.2f}) | {picked}{summary}{skipped} | {self.out}")
            return metrics
        print(f"{self.script} | {label}data {self.data.name} | target top-1: last {100 * f['last']['top1']:.2f} "
              f"| source-selected {100 * f['source_selected']['top1']:.2f} (ep {f['source_selected']['epoch']}) "
              f"| oracle {100 * f['oracle']['top1']:.2f} (ep {f['oracle']['epoch']})"
              f"{summary_details(self.data, self.history, f)}{summary} | {metrics['wall_time_s']:.1f}s, {self.threads} "
              f"thread{'s' * (self.threads > 1)}{skipped} | {self.out}")
        return metrics


# ==== `python data.py info` ==========================================================================

def describe(split: Split, num_classes: int) -> str:
    labels = np.asarray(split.labels)
    first = labels[:, 0] if labels.ndim == 2 else labels          # two heads: the first head's (verb) classes
    counts = np.bincount(np.maximum(first, 0), minlength=num_classes)
    classes = "unlabelled" if (first < 0).all() else (
        f"{'verb: ' if labels.ndim == 2 else ''}{int((counts > 0).sum())} classes, videos per class "
        f"{counts.min()}-{counts.max()} ({' '.join(map(str, counts))})")
    lengths = split.lengths
    cached = "packed cache" if "packed cache" in split.origin else ("in memory" if "generated" in split.origin else "-")
    return (f"{split.name}: {len(split)} videos, {classes}, frames min/median/max "
            f"{lengths.min()}/{int(np.median(lengths))}/{lengths.max()}, width {split.dim}, {cached}; "
            f"from {split.origin}")


def _random_frames(split: Split, count: int, generator) -> torch.Tensor:
    rows = torch.randperm(int(split.lengths.sum()), generator=generator)[:count].sort().values.numpy()
    return torch.as_tensor(np.asarray(split.features[rows]), dtype=torch.float64)        # (count, D)


def shift_report(pair: DomainPair, frames: int = 4000, seed: int = 0) -> dict:
    """How the two domains of a pair differ, on single frames: target/source ratios of the mean frame L2 norm and
    of the mean per-dimension std (train splits), and the balanced held-out accuracy of a logistic-regression domain
    classifier trained on `frames` standardised frames of each train split and tested on frames of the val splits."""
    g = torch.Generator().manual_seed(seed)
    train = [_random_frames(s, frames, g) for s in (pair.source_train, pair.target_train)]
    test = [_random_frames(s, frames, g) for s in (pair.source_val, pair.target_val)]
    norm = [f.norm(dim=1).mean().item() for f in train]
    std = [f.std(0).mean().item() for f in train]
    label = lambda parts: torch.cat([torch.full((len(p),), float(i), dtype=torch.float64) for i, p in enumerate(parts)])
    x, y, x_test, y_test = torch.cat(train), label(train), torch.cat(test), label(test)
    mean, sd = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / sd, (x_test - mean) / sd
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w[:-1] + w[-1], y) + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss
    optimizer.step(closure)
    with torch.no_grad():
        correct = ((x_test @ w[:-1] + w[-1] > 0).double() == y_test).double()
        accuracy = 0.5 * (correct[y_test == 0].mean() + correct[y_test == 1].mean()).item()   # balanced
    return {"norm_ratio": norm[1] / norm[0], "std_ratio": std[1] / std[0], "domain_classifier": accuracy,
            "mean_norm": norm, "mean_std": std}


@dataclass
class InfoArgs(RunArgs):
    pass


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "info":
        fail("usage: python data.py info [--source X --target Y --data-root R ...]")
    args = parse_args(InfoArgs, argv[1:], "Describe a source/target pair (default: the synthetic benchmark).")
    pair = load_pair(args)
    print(f"data: {pair.name}{' (SYNTHETIC benchmark)' if pair.synthetic else ''}; {pair.num_classes} classes")
    for note in pair.notes:
        print("  " + note)
    first_head = list(pair.heads.values())[0] if len(pair.heads) > 1 else pair.num_classes
    for split in (pair.source_train, pair.source_val, pair.target_train, pair.target_val, pair.target_test):
        if split is not None:
            print("  " + describe(split, first_head))
    print(f"  target batch for source batch {args.batch_size}: "
          f"{target_batch_size(args.batch_size, len(pair.source_train), len(pair.target_train))}")
    shift = shift_report(pair)
    print(f"  shift on single frames (target / source): mean L2 norm {shift['mean_norm'][1]:.2f} / "
          f"{shift['mean_norm'][0]:.2f} (ratio {shift['norm_ratio']:.3f}), mean per-dimension std "
          f"{shift['mean_std'][1]:.3f} / {shift['mean_std'][0]:.3f} (ratio {shift['std_ratio']:.3f}); a "
          f"logistic-regression domain classifier tells the domains apart on "
          f"{100 * shift['domain_classifier']:.1f} % of held-out frames")
    if pair.synthetic:
        twins = synthetic_order_twins(args.synth_seed)
        print(f"  order twins (same sub-actions, another order): {len(twins)} of {SYNTH_CLASSES} classes "
              f"({', '.join(map(str, twins))}); the other classes each have a sub-action set of their own")


if __name__ == "__main__":
    main()
