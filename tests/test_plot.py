"""benchmark/plot.py on tiny real runs: every PNG is written and is a non-empty PNG. Skipped where matplotlib is not
installed (it is optional); the one-line message without it is tested everywhere."""
import json
import os
import sys

import numpy as np
import pytest

import baselines
from benchmark import plot

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    return head == PNG and os.path.getsize(path) > 2000


def test_missing_matplotlib_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)                          # import matplotlib -> ImportError
    with pytest.raises(SystemExit, match=r"^error: benchmark/plot.py needs matplotlib \(pip install matplotlib\)"):
        plot.main([str(tmp_path)])


def test_not_a_run_folder_is_one_line(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(SystemExit, match="holds neither a metrics.json"):
        plot.main([str(tmp_path)])


def test_plots_of_two_runs_and_a_comparison(tmp_path):
    pytest.importorskip("matplotlib")
    common = ["--synth-dim", "16", "--epochs", "2", "--batch-size", "512", "--temporal", "pooling",
              "--save-features", "--device", "cpu"]
    runs = []
    for method in ("source-only", "dann"):
        out = tmp_path / "runs" / method
        baselines.main(common + ["--method", method, "--out", str(out)])
        runs.append(str(out))
    compare = tmp_path / "compare"
    compare.mkdir()
    rows = {"source-only-pooling": {"source_selected": [40.0, 44.0], "baseline": None, "seeds": [1, 2]},
            "dann-pooling": {"source_selected": [45.0, 47.5], "baseline": "source-only-pooling", "seeds": [1, 2]}}
    (compare / "results.json").write_text(json.dumps({"data": "synthetic synth2-a->synth2-b", "synthetic": True,
                                                      "seeds": [1, 2], "methods": rows}))
    written = plot.main(runs + [str(compare), "--embedding", "pca"])
    want = [os.path.join(r, f) for r in runs for f in ("curves.png", "confusion.png", "features.png")]
    want += [str(tmp_path / "runs" / "curves.png"), str(tmp_path / "runs" / "features.png"),
             str(compare / "methods.png")]
    assert sorted(written) == sorted(want)
    for path in want:
        assert is_png(path), path


def test_pca_embedding_keeps_the_two_main_directions():
    rng = np.random.default_rng(0)
    x = np.zeros((200, 5))
    x[:, 0] = 10 * rng.normal(size=200)                                            # the largest spread
    x[:, 3] = 3 * rng.normal(size=200)
    x[:, [1, 2, 4]] = 0.01 * rng.normal(size=(200, 3))
    points, name = plot.embed(x, "pca")
    assert name == "PCA" and points.shape == (200, 2)
    centred = (x - x.mean(0)) / x.std(0).mean()
    # the data lie (almost) in the plane of coordinates 0 and 3: the 2-D projection keeps every point's distance to
    # the centre (to the 0.01-scale residual), and the first axis carries the larger spread
    assert np.allclose(np.linalg.norm(points, axis=1), np.linalg.norm(centred, axis=1), atol=0.01)
    assert points[:, 0].std() > 3 * points[:, 1].std()
