"""Pictures of runs: learning curves, the selected epoch's confusion matrix, source vs target video features before
and after adaptation, and every method's score in a benchmark/compare.py result.

    python -m benchmark.plot RUN_DIR [RUN_DIR ...]                 # PNGs next to each run, plus overlays
    python -m benchmark.plot runs/source_only runs/ta3n --out docs/img
    python -m benchmark.plot benchmark/results/synth2-a_synth2-b   # a compare.py folder: methods.png

Needs matplotlib, which nothing else in vidda uses; the t-SNE needs scikit-learn and falls back to PCA without it.

For each RUN_DIR holding a metrics.json (the output folder of any script):
  curves.png     every loss column and the held-out source / target top-1 per epoch, with the protocol's three
                 model-selection epochs marked (last ■, source-selected ●, oracle ★)
  confusion.png  the confusion matrix of the source-selected epoch, rows normalised, with the class names
                 (two heads: the verb head's)
  features.png   when the run saved its features (--save-features): a 2-D t-SNE (or PCA) of the final video features
                 of source val and target val, coloured by domain and by class
With several RUN_DIRs, also in --out (default: their common parent folder): curves.png with every run overlaid and
features.png with one column per run, e.g. a source-only run (before adaptation) beside an adapted one (after).
For each folder holding a results.json (benchmark/compare.py): methods.png, every method's source-selected target
top-1, mean ± std over seeds, with each seed as a dot.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

MARKERS = {"last": ("s", "last"), "source_selected": ("o", "source-selected"), "oracle": ("*", "oracle")}
DPI = 80


def fail(message: str):
    raise SystemExit(f"error: {message}")


def save(fig, path: str):
    """PNG with a 256-colour palette (Pillow comes with matplotlib): a third of the size, the same picture."""
    fig.savefig(path, dpi=DPI)
    from PIL import Image
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(256)
    small.save(path, optimize=True)


def load_metrics(run_dir: str) -> dict:
    path = os.path.join(run_dir, "metrics.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read {path} ({type(e).__name__}); RUN_DIR must be a script's --out folder")


def epoch_rows(run_dir: str, metrics: dict) -> list:
    """Per-epoch rows: epochs.csv when present (every column), else metrics.json's list."""
    path = os.path.join(run_dir, "epochs.csv")
    if os.path.isfile(path):
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    return metrics["epochs"]


def plot_curves(plt, runs: list, path: str):
    """runs: [(name, run_dir, metrics)]. One run: every loss column; several: each run's total loss, one colour each."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, run_dir, metrics) in enumerate(runs):
        rows = epoch_rows(run_dir, metrics)
        epochs = [r["epoch"] for r in rows]
        colour = colours[i % len(colours)]
        losses = sorted(k for k in rows[0] if k.startswith("loss"))
        if len(runs) > 1:
            losses = ["loss"] if "loss" in rows[0] else losses[:1]
        for j, key in enumerate(losses):
            ax_loss.plot(epochs, [r.get(key, np.nan) for r in rows], color=colour if len(runs) > 1 else None,
                         linestyle="-", label=f"{name} {key}" if len(runs) > 1 else key)
        label = f"{name}: " if len(runs) > 1 else ""
        ax_acc.plot(epochs, [100 * r["source_val_top1"] for r in rows], color=colour, linestyle="--",
                    label=f"{label}held-out source")
        ax_acc.plot(epochs, [100 * r["target_top1"] for r in rows], color=colour, linestyle="-",
                    label=f"{label}target")
        for key, (marker, text) in MARKERS.items():
            pick = metrics["final"][key]
            hollow = key == "last"                        # a hollow square: the source-selected dot shows inside
            ax_acc.plot(pick["epoch"], 100 * pick["top1"], marker=marker, color=colour, markersize=13 if hollow else 8,
                        markerfacecolor="none" if hollow else colour, markeredgecolor=colour if hollow else "black",
                        markeredgewidth=2 if hollow else 1, linestyle="none", label=f"{text} (ep {pick['epoch']})"
                        if len(runs) == 1 else (text if i == 0 else None))
    heads = any("target_action_top1" in r for _, d, m in runs for r in m["epochs"][:1])
    ax_loss.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="losses")
    ax_acc.set(xlabel="epoch", ylabel="action top-1 (%)" if heads else "top-1 (%)",
               title="accuracy (markers: the model-selection epochs)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    synthetic = " (SYNTHETIC benchmark)" if runs[0][2].get("synthetic") else ""
    fig.suptitle(f"{runs[0][2]['data']}{synthetic}", fontsize=10)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


def plot_confusion(plt, name: str, metrics: dict, path: str):
    pick = metrics["final"]["source_selected"]
    confusion = np.array(pick["confusion"], dtype=float)
    classes = [c.split(":", 1)[-1] for c in metrics["classes"][:len(confusion)]]
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = max(4.0, min(14.0, 0.32 * len(classes) + 2))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=90, fontsize=7)
    ax.set_yticks(ticks, classes, fontsize=7)
    if len(classes) <= 15:                                                # counts in the cells while they fit
        for i in range(len(classes)):
            for j in range(len(classes)):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"{name}: source-selected epoch {pick['epoch']}, target top-1 {100 * pick['top1']:.1f} %, "
                 f"class-mean {100 * pick['class_mean']:.1f} %", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


def embed(x: np.ndarray, method: str, seed: int = 0) -> tuple:
    """(N, d) -> (N, 2) and the method's name: t-SNE (scikit-learn) or PCA (numpy SVD of the centred features)."""
    x = (x - x.mean(0)) / (x.std(0).mean() + 1e-12)
    if method in ("auto", "tsne"):
        try:
            from sklearn.manifold import TSNE
            return TSNE(n_components=2, init="pca", perplexity=min(30, (len(x) - 1) / 3),
                        random_state=seed).fit_transform(x), "t-SNE"
        except ImportError:
            if method == "tsne":
                fail("--embedding tsne needs scikit-learn (pip install scikit-learn); --embedding pca needs nothing")
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T, "PCA"


def load_features(run_dir: str, max_points: int, seed: int = 0) -> dict:
    """features.npz of a run, each domain subsampled to max_points videos (fixed seed)."""
    f = np.load(os.path.join(run_dir, "features.npz"))
    rng = np.random.default_rng(seed)
    out = {"classes": [str(c) for c in f["classes"]], "names": [str(n) for n in f["names"]]}
    for domain in ("source", "target"):
        x, y = f[domain], f[f"{domain}_labels"]
        keep = np.sort(rng.permutation(len(x))[:max_points])
        out[domain], out[f"{domain}_labels"] = x[keep], (y[keep, 0] if y.ndim == 2 else y[keep])   # verb for 2 heads
    return out


def plot_features(plt, items: list, path: str, method: str):
    """items: [(name, features)]; one column per run: top coloured by domain, bottom by class."""
    fig, axes = plt.subplots(2, len(items), figsize=(4.2 * len(items), 7.4), squeeze=False)
    used = "PCA"
    for col, (name, f) in enumerate(items):
        points, used = embed(np.concatenate([f["source"], f["target"]]), method)
        n_s = len(f["source"])
        top, bottom = axes[0, col], axes[1, col]
        top.scatter(*points[:n_s].T, s=5, alpha=0.6, label=f"source: {f['names'][0]}", color="tab:blue")
        top.scatter(*points[n_s:].T, s=5, alpha=0.6, label=f"target: {f['names'][1]}", color="tab:orange")
        top.set_title(name, fontsize=10)
        top.legend(fontsize=7, markerscale=3, loc="best")
        labels = np.concatenate([f["source_labels"], f["target_labels"]])
        cmap = plt.get_cmap("tab20" if labels.max() < 20 else "nipy_spectral")
        colours = cmap(labels % 20 / 19 if labels.max() < 20 else labels / max(1, labels.max()))
        bottom.scatter(*points[:n_s].T, s=6, c=colours[:n_s], marker="o", alpha=0.7, label="source (●)")
        bottom.scatter(*points[n_s:].T, s=10, c=colours[n_s:], marker="x", alpha=0.7, label="target (×)")
        bottom.set_title("coloured by class", fontsize=9)
        bottom.legend(fontsize=7, loc="best")
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{used} of the final video features, source val vs target val", fontsize=10)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


def plot_methods(plt, results: dict, path: str):
    """compare.py's results.json: source-selected target top-1 per method, mean ± std over seeds, seeds as dots."""
    names = list(results["methods"])
    values = [results["methods"][n]["source_selected"] for n in names]
    means = [np.mean(v) for v in values]
    stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(names) + 1.6))
    y = np.arange(len(names))[::-1]
    colours = ["0.6" if not results["methods"][n]["baseline"] else "tab:blue" for n in names]
    ax.barh(y, means, xerr=stds, color=colours, alpha=0.8, capsize=3)
    for yi, v in zip(y, values):
        ax.plot(v, [yi] * len(v), "k.", markersize=4)
    ax.set_yticks(y, names, fontsize=8)
    synthetic = " (SYNTHETIC)" if results.get("synthetic") else ""
    ax.set_xlabel(f"target top-1 (%), source-selected epoch; mean ± std over seeds {results['seeds']}, dots = seeds")
    ax.set_title(f"{results['data']}{synthetic}; grey = reference rows (no adaptation)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="script --out folders and/or compare.py folders")
    p.add_argument("--out", default="", help="where the overlays of several runs go (default: their common parent)")
    p.add_argument("--embedding", default="auto", choices=["auto", "tsne", "pca"],
                   help="auto: t-SNE when scikit-learn is installed, else PCA")
    p.add_argument("--max-points", type=int, default=1000, help="videos per domain in the feature plot")
    a = p.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("benchmark/plot.py needs matplotlib (pip install matplotlib); nothing else in vidda does")
    runs, compares, written = [], [], []
    for d in a.runs:
        if os.path.isfile(os.path.join(d, "results.json")):
            compares.append(d)
        elif os.path.isfile(os.path.join(d, "metrics.json")):
            runs.append(d)
        else:
            fail(f"{d} holds neither a metrics.json (a script's --out folder) nor a results.json (benchmark/compare.py)")
    parent = os.path.commonpath([os.path.abspath(d) for d in runs]) if runs else ""
    named = [(os.path.relpath(os.path.abspath(d), parent) if len(runs) > 1 else os.path.basename(os.path.abspath(d)),
              d, load_metrics(d)) for d in runs]
    for name, d, metrics in named:
        if not metrics.get("epochs"):
            fail(f"{d}/metrics.json has no epoch yet")
        plot_curves(plt, [(name, d, metrics)], os.path.join(d, "curves.png"))
        plot_confusion(plt, name, metrics, os.path.join(d, "confusion.png"))
        written += [os.path.join(d, "curves.png"), os.path.join(d, "confusion.png")]
        if os.path.isfile(os.path.join(d, "features.npz")):
            plot_features(plt, [(name, load_features(d, a.max_points))], os.path.join(d, "features.png"), a.embedding)
            written.append(os.path.join(d, "features.png"))
    if len(named) > 1:
        out = a.out or parent
        os.makedirs(out, exist_ok=True)
        plot_curves(plt, named, os.path.join(out, "curves.png"))
        written.append(os.path.join(out, "curves.png"))
        with_features = [(n, load_features(d, a.max_points)) for n, d, _ in named
                         if os.path.isfile(os.path.join(d, "features.npz"))]
        if with_features:
            plot_features(plt, with_features, os.path.join(out, "features.png"), a.embedding)
            written.append(os.path.join(out, "features.png"))
    for d in compares:
        with open(os.path.join(d, "results.json")) as f:
            plot_methods(plt, json.load(f), os.path.join(d, "methods.png"))
        written.append(os.path.join(d, "methods.png"))
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
    sys.exit(0)
