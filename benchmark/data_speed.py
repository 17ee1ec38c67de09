"""Time data.py on a dataset in the official layout: one-time packing, loading a packed split, one epoch of sampling.

    python -m benchmark.make_layout --out /tmp/ta3n-layout
    python -m benchmark.data_speed --data-root /tmp/ta3n-layout

Packing reads every per-frame .t7 file once; afterwards a run opens the packed memmaps and every batch is an index
gather, so no epoch touches per-frame files (reading them is what makes the official loader slow).
"""
import argparse
import os
import shutil
import time

import torch

import data  # run from the repository root as `python -m benchmark.<name>`


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--source", default="ucf")
    p.add_argument("--target", default="hmdb")
    p.add_argument("--keep-cache", action="store_true", help="do not delete an existing cache first")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    args = data.RunArgs(source=a.source, target=a.target, data_root=a.data_root)
    cache = os.path.join(a.data_root, ".vidda_cache")
    if os.path.isdir(cache) and not a.keep_cache:
        shutil.rmtree(cache)
    t0 = time.perf_counter()
    data.load_pair(args)
    t_pack = time.perf_counter() - t0
    t0 = time.perf_counter()
    pair = data.load_pair(args)
    t_load = time.perf_counter() - t0
    frames = sum(int(s.lengths.sum()) for s in (pair.source_train, pair.source_val, pair.target_train, pair.target_val))

    g = torch.Generator().manual_seed(0)
    timings = {}
    for mode in ("warm-up", "center", "random"):    # warm-up: the first pass pages the memmaps in
        t0 = time.perf_counter()
        n_s, n_t = len(pair.source_train), len(pair.target_train)
        for idx_s, idx_t in data.paired_batches(n_s, n_t, 128, data.target_batch_size(128, n_s, n_t), g):
            for split, idx in ((pair.source_train, idx_s), (pair.target_train, idx_t)):
                fi = data.sample_indices(split.lengths[idx.numpy()], 5, mode.replace("warm-up", "center"),
                                         generator=g)
                x = data.gather_frames(split, idx, fi)
        timings[mode] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data.predict_split(lambda x: x.mean(1), pair.target_val, 5, "cpu")
    t_val = time.perf_counter() - t0
    print(f"| data | videos (S train/val, T train/val) | frames | width | pack (once) | load packed | "
          f"epoch sampling, centre | epoch sampling, random | target val gather |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {pair.name} ({a.data_root}) | {len(pair.source_train)}/{len(pair.source_val)}, "
          f"{len(pair.target_train)}/{len(pair.target_val)} | {frames} | {pair.source_train.dim} | {t_pack:.1f} s | "
          f"{t_load:.2f} s | {timings['center']:.3f} s | {timings['random']:.3f} s | {t_val:.3f} s |")


if __name__ == "__main__":
    main()
