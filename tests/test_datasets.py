"""data.py's other formats: EPIC-Kitchens D1/D2/D3 (TranSVAE lists into MM-SADA's tables), EPIC-100 UDA feature
pickles with their annotation tables, the TA3N settings by name, the --label helper (two heads, the action metric,
test.json) and --save-features. EPIC data may not be redistributed: every file here is written by the test itself,
tiny, in the documented format (docs/data.md)."""
import csv
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import baselines
import data
import ta3n
import tcon
from helpers import assert_close

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE_D = ["uid", "participant_id", "video_id", "narration", "start_timestamp", "stop_timestamp", "start_frame",
           "stop_frame", "verb", "verb_class"]
TABLE_100 = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp", "stop_timestamp",
             "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class", "all_nouns",
             "all_noun_classes"]


def run_info(*args):
    p = subprocess.run([sys.executable, os.path.join(REPO, "data.py"), "info", *args], capture_output=True,
                       text=True, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return p.returncode, p.stdout, p.stderr


def one_error_line(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ---- writers: the exact on-disk formats ----------------------------------------------------------------

def write_epic_kitchens(root, domain="D1", part="train", n=5, dim=6, seed=0, table=True):
    """TranSVAE's EPIC layout for one split: per-frame img_%05d.t7 (dim floats) under
    dataset/epic-kitchens/I3D-feature-pretrain/<part>/<Pxx>/<video_id>/<row>, the list
    dataset/epic-kitchens/list/list_<Pxx>_<part>.txt (lines NOT in row order, so the row index matters) and, with
    table=True, MM-SADA's table as Annotations/D<i>_<part>.csv. Returns {row: (frames (T, dim), verb_class)}."""
    g = torch.Generator().manual_seed(seed)
    participant = data.EPIC_KITCHENS[domain]
    rows, lines = {}, []
    table_rows = []
    for row in range(n):
        frames = 2 + (row * 3 + seed) % 5
        verb = (row * 5 + seed) % 8
        video = f"{participant}_{10 + row % 2:02d}"
        start = 100 * row
        table_rows.append({"uid": 9000 + row, "participant_id": participant, "video_id": video,
                           "narration": f"verb {verb}", "start_timestamp": "00:00:01.00",
                           "stop_timestamp": "00:00:02.00", "start_frame": start, "stop_frame": start + frames,
                           "verb": data.EPIC_KITCHENS_VERBS[verb], "verb_class": verb})
        x = torch.rand(frames, dim, generator=g)
        rel = f"dataset/epic-kitchens/I3D-feature-pretrain/{part}/{participant}/{video}/{row}"
        os.makedirs(os.path.join(root, rel))
        for t in range(frames):
            torch.save(x[t].clone(), os.path.join(root, rel, "img_%05d.t7" % (t + 1)))
        rows[row] = (x, verb)
        lines.append(f"{rel} {frames} {verb}")
    lines = lines[1:] + lines[:1]                                                  # rows 1, 2, ..., 0
    list_dir = os.path.join(root, "dataset", "epic-kitchens", "list")
    os.makedirs(list_dir, exist_ok=True)
    with open(os.path.join(list_dir, f"list_{participant}_{part}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if table:
        os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
        with open(os.path.join(root, "Annotations", f"D{domain[1]}_{part}.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, TABLE_D)
            w.writeheader()
            w.writerows(table_rows)
    return rows


def epic_kitchens_layout(root, table=True):
    """D1 and D2, train (5 rows) and test (4 rows); returns (CLI flags, {(domain, part): written rows})."""
    written = {}
    for domain, seed in (("D1", 0), ("D2", 1)):
        for part, n in (("train", 5), ("test", 4)):
            written[domain, part] = write_epic_kitchens(root, domain, part, n=n, seed=seed + (part == "test") * 2,
                                                        table=table)
    return ["--source", "D1", "--target", "D2", "--data-root", str(root)], written


def epic100_records(split, n, dims, seed):
    """Narration ids, labels and per-modality features (n, 25, dim) of one tiny EPIC-100 split."""
    g = np.random.default_rng(seed)
    ids = [f"P{1 + i % 3:02d}_1{seed}_{i}" for i in range(n)]
    verbs, nouns = (np.arange(n) * 7 + seed) % 97, (np.arange(n) * 31 + seed) % 300
    features = {m: g.normal(size=(n, 25, d)).astype(np.float32) for m, d in dims.items()}
    return ids, verbs, nouns, features


def write_epic100(root, n=(6, 4, 5, 4, 3), dims=None, test=True):
    """The EPIC-100 UDA layout: data/<split>.pkl = {'narration_ids': [...], 'features': {modality: (N, 25, D)}} with
    the pickle's ids in ANOTHER order than the table's, and annotations/EPIC_100_uda_<split>.csv (15 columns, or the
    8 of the *_timestamps tables). Returns {split: (ids in table order, verbs, nouns, {modality: (N, 25, D)})}."""
    dims = dims or {"Audio": 3, "RGB": 4, "Flow": 2}          # not the usual key order: ALL must follow the file's
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    out = {}
    keys = [k for k in data.EPIC100_SPLITS if test or k != "target_test"]
    for s, key in enumerate(keys):
        pickle_name, table_name = data.EPIC100_SPLITS[key]
        ids, verbs, nouns, features = epic100_records(key, n[s], dims, seed=s)
        order = np.arange(n[s])[::-1]                                              # the pickle stores them reversed
        with open(os.path.join(root, "data", pickle_name + ".pkl"), "wb") as f:
            pickle.dump({"narration_ids": [ids[i] for i in order],
                         "features": {m: x[order] for m, x in features.items()}}, f)
        labelled = not table_name.endswith("_timestamps")
        columns = TABLE_100 if labelled else TABLE_100[:8]
        with open(os.path.join(root, "annotations", table_name + ".csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for i in range(n[s]):
                row = [ids[i], ids[i][:3], ids[i][:6], "00:00:00.000", "00:00:01.00", "00:00:02.00", 10, 20, "open tap",
                       "open", verbs[i], "tap", nouns[i], "['tap', 'cupboard']", f"[{nouns[i]}, 3]"]
                w.writerow(row[:len(columns)])
        out[key] = (ids, verbs, nouns, features)
    return out


def epic100_args(root, *flags):
    return data.parse_args(data.RunArgs, ["--source", "epic100-source", "--target", "epic100-target", "--data-root",
                                          str(root), *flags])


# ---- EPIC-Kitchens D1/D2/D3 ----------------------------------------------------------------------------

@pytest.mark.parametrize("table", [True, False])
def test_epic_kitchens_lists_read_the_row_folders_in_list_order(tmp_path, table):
    flags, written = epic_kitchens_layout(tmp_path, table)
    pair = data.load_pair(data.parse_args(data.RunArgs, flags))
    assert pair.notes[-1].endswith("rows not checked (no Annotations/D2_test.pkl under the root)") != table
    assert pair.class_names == ["take", "put", "open", "close", "wash", "cut", "mix", "pour"] and pair.imbalanced
    for split, key in ((pair.source_train, ("D1", "train")), (pair.source_val, ("D1", "test")),
                       (pair.target_train, ("D2", "train")), (pair.target_val, ("D2", "test"))):
        rows = [int(v.rstrip("/").split("/")[-1]) for v in split.videos]
        n = len(written[key])
        assert rows == list(range(1, n)) + [0]                                    # list order, not row order
        for v, row in enumerate(rows):
            x, verb = written[key][row]
            assert split.labels[v] == verb and split.lengths[v] == len(x)
            got = np.array(split.features[split.offsets[v]:split.offsets[v] + split.lengths[v]])
            assert_close(got, x, atol=0, what=f"{key} row {row}")
    assert data.EPIC_KITCHENS_SIZES["D1"] == (1543, 435)                         # MM-SADA's P08 tables


def test_epic_kitchens_info_and_summary_show_class_mean(tmp_path, capsys):
    flags, _ = epic_kitchens_layout(tmp_path)
    code, out, err = run_info(*flags)
    assert code == 0, err
    assert "EPIC-Kitchens D1->D2" in out and "published train/test sizes: D1 1543/435, D2 2495/750" in out
    assert "list_P08_train.txt: 5 lines match their rows of" in out and "D1_train.csv" in out
    m = baselines.main(flags + ["--method", "source-only", "--temporal", "pooling", "--epochs", "1", "--out",
                                str(tmp_path / "run"), "--batch-size", "4"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    final = m["final"]
    want = " / ".join(f"{100 * final[k]['class_mean']:.2f}" for k in ("last", "source_selected", "oracle"))
    assert f"| class-mean {want} |" in line and "EPIC-Kitchens D1->D2" in line


@pytest.mark.parametrize("change, words", [
    (lambda lines: [lines[0].replace("/1 ", "/2 "), lines[1].replace("/2 ", "/1 ")] + lines[2:],   # rows swapped
     ["list_P08_train.txt:1", "row 2 of", "D1_train.csv", "the line says"]),
    (lambda lines: [lines[0].replace("/1 ", "/7 ")] + lines[1:], ["list_P08_train.txt:1", "row 7 is past the end"]),
    (lambda lines: lines[:1] + [lines[1].replace("/2 ", "/1 ")] + lines[2:],
     ["list_P08_train.txt:2", "row 1 already used on line 1"]),
    (lambda lines: [lines[0].replace("P08/P08_11", "P01/P01_11")] + lines[1:], ["list_P08_train.txt:1", "malformed"]),
    (lambda lines: [lines[0].replace("/train/", "/test/")] + lines[1:], ["list_P08_train.txt:1", "malformed"]),
    (lambda lines: [lines[0].rsplit(" ", 1)[0] + " 9"] + lines[1:], ["row 1 of", "the line says"]),
])
def test_epic_kitchens_bad_lines_give_one_line(tmp_path, change, words):
    flags, _ = epic_kitchens_layout(tmp_path)
    path = tmp_path / "dataset" / "epic-kitchens" / "list" / "list_P08_train.txt"
    path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")
    code, out, err = run_info(*flags)
    assert code != 0
    one_error_line(err, *words)


# ---- EPIC-100 UDA ----------------------------------------------------------------------------------------

def test_epic100_pickles_join_the_tables_by_narration_id(tmp_path):
    written = write_epic100(tmp_path)
    pair = data.load_pair(epic100_args(tmp_path))
    assert pair.heads == {"verb": 97, "noun": 300} and pair.num_classes == 397 and pair.imbalanced
    splits = {"source_train": pair.source_train, "source_val": pair.source_val, "target_train": pair.target_train,
              "target_val": pair.target_val, "target_test": pair.target_test}
    for key, split in splits.items():
        ids, verbs, nouns, features = written[key]
        assert split.videos == ids and split.dim == 3 + 4 + 2                      # the table's order, ALL = 9
        assert (split.lengths == 25).all() and (split.offsets == 25 * np.arange(len(ids))).all()
        want = np.concatenate([features["Audio"], features["RGB"], features["Flow"]], axis=2)   # the file's key order
        assert_close(np.array(split.features).reshape(len(ids), 25, 9), want, atol=0, what=key)
        if key in ("target_train", "target_test"):                                 # *_timestamps: no labels
            assert (split.labels == -1).all() and split.labels.shape == (len(ids), 2)
        else:
            assert (split.labels[:, 0] == verbs).all() and (split.labels[:, 1] == nouns).all()
    # the centred rule on 25 segments with K = 5 reads rows 2, 7, 12, 17, 22 (official dataset.py)
    idx = data.sample_indices(pair.target_val.lengths, 5)
    assert idx.tolist() == [[2, 7, 12, 17, 22]] * 4
    x = data.gather_frames(pair.target_val, torch.arange(4), idx)
    assert_close(x[:, :, 3:7], written["target_val"][3]["RGB"][:, [2, 7, 12, 17, 22]], atol=0, what="RGB rows")


@pytest.mark.parametrize("label, modality, width, classes", [("verb", "RGB", 4, 97), ("noun", "Flow", 2, 300),
                                                             ("verb+noun", "Audio", 3, 397)])
def test_epic100_label_and_modality_flags(tmp_path, label, modality, width, classes):
    written = write_epic100(tmp_path, test=False)
    pair = data.load_pair(epic100_args(tmp_path, "--label", label, "--modality", modality))
    assert pair.source_train.dim == width and pair.num_classes == classes and pair.target_test is None
    ids, verbs, nouns, features = written["source_val"]
    want = {"verb": verbs, "noun": nouns, "verb+noun": np.stack([verbs, nouns], 1)}[label]
    assert (pair.source_val.labels == want).all()
    assert_close(np.array(pair.source_val.features).reshape(-1, 25, width), features[modality], atol=0)
    # the packed cache is reused while the pickle's size and time stay: garbage of the same size is never read
    path = tmp_path / "data" / "source_val.pkl"
    st = os.stat(path)
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = data.load_pair(epic100_args(tmp_path, "--label", label, "--modality", modality))
    assert_close(np.array(again.source_val.features).reshape(-1, 25, width), features[modality], atol=0)
    path.write_bytes(b"")                                                          # a changed pickle is repacked
    with pytest.raises(SystemExit, match="cannot read"):
        data.load_pair(epic100_args(tmp_path, "--label", label, "--modality", modality))


def corrupt(root, kind):
    """One bad record of the given kind in the tiny EPIC-100 layout."""
    path = os.path.join(root, "data", "source_train.pkl")
    blob = pickle.load(open(path, "rb"))
    table = os.path.join(root, "annotations", "EPIC_100_uda_source_train.csv")
    rows = list(csv.reader(open(table)))
    if kind == "missing_key":
        del blob["narration_ids"]
    elif kind == "missing_modality":
        del blob["features"]["Flow"]
    elif kind == "segments":
        blob["features"]["RGB"] = blob["features"]["RGB"][:, :24]
    elif kind == "ragged":
        blob["features"]["RGB"] = [x for x in blob["features"]["RGB"]]
        blob["features"]["RGB"][2] = blob["features"]["RGB"][2][:20]
    elif kind == "unknown_id":
        rows[3][0] = "P99_99_9"
    elif kind == "verb_range":
        rows[2][10] = "97"
    elif kind == "noun_range":
        rows[2][12] = "-1"
    elif kind == "nan":
        blob["features"]["Audio"][1, 4, 0] = np.nan
    elif kind == "code":
        blob = {"narration_ids": [], "features": {}, "x": os.system}
    pickle.dump(blob, open(path, "wb"))
    csv.writer(open(table, "w", newline="")).writerows(rows)


@pytest.mark.parametrize("kind, words", [
    ("missing_key", ["source_train.pkl", "missing key 'narration_ids'"]),
    ("missing_modality", ["source_train.pkl", "missing key 'features'/'Flow'"]),
    ("segments", ["source_train.pkl", "24 segments", "wrong segment count"]),
    ("ragged", ["record 2 (narration id P01_10_3)", "wrong segment count"]),   # stored reversed: table row 3
    ("unknown_id", ["EPIC_100_uda_source_train.csv row 2", "unknown narration id 'P99_99_9'"]),
    ("verb_range", ["EPIC_100_uda_source_train.csv row 1", "verb_class 97 out of range 0..96"]),
    ("noun_range", ["EPIC_100_uda_source_train.csv row 1", "noun_class -1 out of range 0..299"]),
    ("nan", ["source_train.pkl", "NaN/inf", "narration id P02_10_4"]),
    ("code", ["source_train.pkl", "is not plain data"]),
])
def test_epic100_bad_records_give_one_line(tmp_path, kind, words):
    write_epic100(tmp_path, test=False)
    corrupt(tmp_path, kind)
    code, out, err = run_info("--source", "epic100-source", "--target", "epic100-target", "--data-root",
                              str(tmp_path))
    assert code != 0
    one_error_line(err, *words)


@pytest.mark.parametrize("flags, words", [
    (["--label", "noun", "--source", "D1", "--target", "D2"], ["--label noun", "verb labels only"]),
    (["--label", "verb"], ["--label verb", "one class label per video"]),
    (["--modality", "RGB"], ["--modality RGB", "only the EPIC-100"]),
    (["--source", "epic100-source", "--target", "D2"], ["cannot pair 'epic100-source' with 'D2'"]),
    (["--source", "epic100-source", "--target", "epic100-target", "--data-root", "/nonexistent"],
     ["data root not found"]),
])
def test_label_and_pairing_mistakes_give_one_line(flags, words):
    code, out, err = run_info(*flags)
    assert code != 0
    one_error_line(err, *words)


def test_info_on_epic100(tmp_path):
    write_epic100(tmp_path)
    code, out, err = run_info("--source", "epic100-source", "--target", "epic100-target", "--data-root",
                              str(tmp_path))
    assert code == 0, err
    assert "EPIC-100 UDA ALL verb+noun; 397 classes" in out and "heads: verb 97, noun 300" in out
    assert "target_train (ALL): 5 videos, unlabelled" in out and "source_train (ALL): 6 videos, verb: 6 classes" in out
    assert "target test: 3 videos" in out


# ---- the label helper: two heads, the action metric, test.json -----------------------------------------

def test_action_metric_by_hand_on_three_videos():
    heads = (3, 4)
    logits = torch.tensor([[3.0, 2.0, 1.0, 9.0, 8.0, 7.0, 0.0],      # verb top-2 {0, 1}; noun top-2 {0, 1}
                           [1.0, 2.0, 3.0, 5.0, 0.0, 1.0, 2.0],      # verb top-2 {2, 1}; noun top-2 {0, 3}
                           [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 3.0]])     # verb top-2 {2, 1}; noun top-2 {3, 2}
    labels = torch.tensor([[0, 0], [1, 0], [2, 2]])
    # top-1: video 0 both right; video 1 verb wrong; video 2 noun wrong (3 != 2) -> action 1/3
    assert data.action_hits(logits, labels, heads, 1).tolist() == [True, False, False]
    # top-2: video 1 verb 1 in {2, 1}; video 2 noun 2 in {3, 2} -> all three
    assert data.action_hits(logits, labels, heads, 2).tolist() == [True, True, True]
    pair = data.DomainPair("t", list("abcdefg"), None, None, None, None, False, heads={"verb": 3, "noun": 4})
    r = data.split_report(logits, labels.numpy(), pair)
    assert r["top1"] == pytest.approx(1 / 3) and r["heads"]["action_top1"] == pytest.approx(1 / 3)
    assert r["heads"]["verb_top1"] == pytest.approx(2 / 3) and r["heads"]["noun_top1"] == pytest.approx(2 / 3)
    assert r["heads"]["verb_top5"] == 1.0 and r["heads"]["action_top5"] == 1.0     # k capped at the head's size
    assert r["confusion"] == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]                     # the verb head's
    assert r["class_mean"] == pytest.approx((1 + 0 + 1) / 3)


def test_label_loss_and_head_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0, 2.0, 0.0, 0.0]])                               # heads (2, 3)
    labels = torch.tensor([[1, 0]])
    ce_verb = np.log(2)                                                            # uniform over 2
    ce_noun = -np.log(np.exp(2) / (np.exp(2) + 2))
    assert_close(data.label_loss(logits, labels, (2, 3)), 0.5 * (ce_verb + ce_noun), atol=1e-6, what="0.5(CE+CE)")
    assert_close(data.label_loss(logits, labels[:, 0], ()), -np.log(np.exp(0) / (np.exp(2) + 4)), atol=1e-6)
    p = np.array([np.exp(2), 1, 1]) / (np.exp(2) + 2)
    h_noun = -(p * np.log(p)).sum()
    assert_close(data.head_entropy(logits, (2, 3)), [0.5 * (np.log(2) + h_noun)], atol=1e-6, what="H per head")
    probs = data.head_probabilities(logits, (2, 3))
    assert_close(probs, [[0.5, 0.5, *p]], atol=1e-6, what="softmax per head")


def test_test_json_has_the_challenge_format(tmp_path):
    logits = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0, 0.0]])
    path = str(tmp_path / "test.json")
    data.write_test_json(path, logits, ["P01_101_0", "P01_101_1"], {"verb": 2, "noun": 3})
    out = json.load(open(path))
    assert {k: out[k] for k in ("version", "challenge", "sls_pt", "sls_tl", "sls_td")} == {
        "version": "0.2", "challenge": "domain_adaptation", "sls_pt": 0, "sls_tl": 0, "sls_td": 0}
    r = out["results_target"]
    assert list(r) == ["P01_101_0", "P01_101_1"] and list(r["P01_101_0"]) == ["verb", "noun"]
    assert r["P01_101_0"]["verb"] == {"0": 0.5, "1": 0.5}
    e = np.e
    assert r["P01_101_0"]["noun"] == {"0": round(e / (e + 2), 3), "1": round(1 / (e + 2), 3), "2": round(1 / (e + 2), 3)}
    assert r["P01_101_1"]["verb"]["0"] == round(np.exp(5) / (np.exp(5) + 1), 3)


def test_verb_noun_trains_one_step_and_writes_test_json(tmp_path, capsys):
    write_epic100(tmp_path, n=(8, 4, 6, 4, 3))
    flags = ["--source", "epic100-source", "--target", "epic100-target", "--data-root", str(tmp_path),
             "--epochs", "1", "--batch-size", "8", "--device", "cpu"]
    m = ta3n.main(flags + ["--out", str(tmp_path / "ta3n"), "--kernel", "torch"])
    row = m["epochs"][0]
    for key in ("target_verb_top1", "target_noun_top5", "target_action_top1", "target_action_top5"):
        assert 0 <= row[key] <= 1, key
    assert row["target_top1"] == row["target_action_top1"] and np.isfinite(row["loss_y"]) and row["loss_ae"] > 0
    assert "(top-1 = action)" in capsys.readouterr().out
    submission = json.load(open(tmp_path / "ta3n" / "test.json"))
    ids = list(submission["results_target"])
    assert len(ids) == 3 and len(submission["results_target"][ids[0]]["noun"]) == 300
    assert abs(sum(submission["results_target"][ids[0]]["verb"].values()) - 1) < 0.06     # 97 values rounded to 3 d.
    for method in ("dann", "mcd"):      # CDAN's per-head map: tests/test_baselines.py (its C·d discriminator is big)
        m = baselines.main(flags + ["--method", method, "--out", str(tmp_path / method)])
        assert np.isfinite(m["epochs"][0]["loss_y"]) and 0 <= m["epochs"][0]["target_action_top1"] <= 1
    with pytest.raises(SystemExit, match="target-only trains on target-train labels"):
        baselines.main(flags + ["--method", "target-only", "--out", str(tmp_path / "to")])
    with pytest.raises(SystemExit, match="tcon.py trains one classifier head: use --label verb"):
        tcon.main(flags + ["--out", str(tmp_path / "tcon")])


def test_two_head_loss_is_the_mean_of_two_independent_heads():
    """One Linear of width 97 + 300 is two heads: the verb CE's gradient touches only the verb rows."""
    net = baselines.VideoModel(6, 5, 3, temporal="pooling", heads=(2, 3))
    net.eval()
    x, y = torch.randn(4, 3, 6), torch.tensor([[0, 2], [1, 1], [1, 0], [0, 0]])
    logits = net.classifier(net(x)[2])
    want = 0.5 * (torch.nn.functional.cross_entropy(logits[:, :2], y[:, 0]) +
                  torch.nn.functional.cross_entropy(logits[:, 2:], y[:, 1]))
    assert_close(baselines.class_loss(logits, y, net.heads), want, atol=1e-7)
    torch.nn.functional.cross_entropy(logits[:, :2], y[:, 0]).backward()
    assert net.classifier.weight.grad[2:].abs().sum() == 0 and net.classifier.weight.grad[:2].abs().sum() > 0


# ---- settings by name, --save-features ---------------------------------------------------------------------

def test_info_reports_each_settings_class_file_and_split_sizes(tmp_path):
    from test_data import make_layout
    for dataset, tag in (("ucf101", "hmdb_ucf_small"), ("hmdb51", "hmdb_ucf_small")):
        for part in ("train", "val"):
            path, _ = make_layout(tmp_path, dataset=dataset, part=part, n_videos=3 + (part == "val"), num_classes=5)
            os.replace(path, path.replace("hmdb_ucf-feature", f"{tag}-feature"))
    code, out, err = run_info("--source", "ucf", "--target", "hmdb", "--setting", "small", "--data-root",
                              str(tmp_path))
    assert code == 0, err
    assert "classes: 5 from built-in copy of TA3N data/classInd_hmdb_ucf_small.txt" in out
    assert "setting small: list tag hmdb_ucf_small; published split sizes: not published" in out
    assert "ucf101/list_ucf101_val_hmdb_ucf_small-feature.txt: 4 videos" in out
    (tmp_path / "classInd_hmdb_ucf_small.txt").write_text("1 golf\r\n2 pullup\r\n3 ride_bike\r\n4 ride_horse\r\n"
                                                          "5 shoot_ball \r\n")
    code, out, err = run_info("--source", "ucf", "--target", "hmdb", "--setting", "small", "--data-root",
                              str(tmp_path))
    assert code == 0 and f"classes: 5 from {tmp_path / 'classInd_hmdb_ucf_small.txt'}" in out, err
    code, out, err = run_info("--source", "ucf", "--target", "hmdb", "--setting", "olympic", "--data-root",
                              str(tmp_path))
    one_error_line(err, "--setting olympic pairs olympic and ucf, not 'ucf' with 'hmdb'")
    assert "ucf101 train 1438 / val 571, hmdb51 train 840 / val 360" == data.SETTING_SIZES["full"]


def test_save_features_writes_the_val_features_and_labels(tmp_path):
    common = ["--synth-dim", "16", "--epochs", "1", "--batch-size", "512", "--save-features", "--device", "cpu"]
    m = ta3n.main(common + ["--out", str(tmp_path / "t"), "--kernel", "torch"])
    f = np.load(tmp_path / "t" / "features.npz")
    assert f["source"].shape == (571, 256) and f["target"].shape == (360, 256) and int(f["epoch"]) == 1
    pair = data.load_pair(data.parse_args(data.RunArgs, ["--synth-dim", "16"]))
    assert (f["source_labels"] == pair.source_val.labels).all() and (f["target_labels"] == pair.target_val.labels).all()
    assert list(f["classes"]) == pair.class_names and np.isfinite(f["source"]).all()
    baselines.main(common + ["--method", "adabn", "--temporal", "pooling", "--out", str(tmp_path / "b")])
    g = np.load(tmp_path / "b" / "features.npz")
    assert g["source"].shape == (571, 512) and g["target"].shape == (360, 512)
    assert not np.allclose(g["source"][:3], 0)
    with pytest.raises(SystemExit, match="--save-features is implemented in ta3n.py and baselines.py, not in tcon.py"):
        tcon.main(common + ["--out", str(tmp_path / "c")])
