"""Write a UCF->HMDB_full-sized dataset in the official TA3N on-disk layout, for speed benchmarks.

    python -m benchmark.make_layout --out /tmp/ta3n-layout            # 2048-d, 1438/571 UCF + 840/360 HMDB videos

The frames are the synthetic benchmark's (data.make_synthetic_split: synth2-a plays UCF101, synth2-b HMDB51), rendered
at --dim and saved exactly as the official extractor does: one torch.save'd 1-D float32 tensor per frame,
<out>/<dataset>/RGB-Feature/<video>/img_%05d.t7 (1-based), and list files
<out>/<dataset>/list_<dataset>_<train|val>_hmdb_ucf-feature.txt with absolute paths. It is synthetic data: use it
to time reading, packing and training, and label any accuracy measured on it as synthetic.
"""
import argparse
import os

import torch
from tqdm import tqdm

import data  # run from the repository root as `python -m benchmark.<name>`


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="data root to create")
    p.add_argument("--dim", type=int, default=2048, help="feature width (ResNet-101 pool5: 2048)")
    p.add_argument("--seed", type=int, default=0, help="synthetic benchmark seed")
    p.add_argument("--legacy", action="store_true", help="pre-1.6 torch serialization instead of zip")
    args = p.parse_args(argv)
    for domain, folder in (("synth2-a", "ucf101"), ("synth2-b", "hmdb51")):
        for part in ("train", "val"):
            split = data.make_synthetic_split(domain, part, args.seed, args.dim)
            root = os.path.abspath(os.path.join(args.out, folder))
            lines = []
            for v in tqdm(range(len(split)), desc=f"{folder}/{part}", unit="video"):
                video_dir = os.path.join(root, "RGB-Feature", f"{folder}_{part}_{v:05d}")
                os.makedirs(video_dir, exist_ok=True)
                start, n = int(split.offsets[v]), int(split.lengths[v])
                for t in range(n):
                    torch.save(split.features[start + t].clone(), os.path.join(video_dir, "img_%05d.t7" % (t + 1)),
                               _use_new_zipfile_serialization=not args.legacy)
                lines.append(f"{video_dir} {n} {int(split.labels[v])}")
            with open(os.path.join(root, f"list_{folder}_{part}_hmdb_ucf-feature.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
    print(f"wrote the official layout under {args.out}")


if __name__ == "__main__":
    main()
