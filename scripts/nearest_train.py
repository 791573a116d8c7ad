#!/usr/bin/env python3
"""Copying check for one diagnosis: the distance of each synthetic image to its nearest real
training image of that diagnosis, beside the same for held-out real images.

  python3 scripts/nearest_train.py cache/ham64 cache/ham_splits.csv df runs/ham_dx/synthetic runs/ham_dx_dflora/synthetic

Distance: root-mean-square difference of 8-bit RGB pixels, minimised over the 8 dihedral
transforms of the training image. Prints min, 5th percentile and median per set; a synthetic set
that copies training images has a much lower minimum and 5th percentile than the held-out real
images (val and test splits). numpy only.
"""
import csv
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_grid import load_images, read_png  # noqa: E402


def main():
    cache, splits, dx, sets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    imgs = load_images(cache)
    recs = [json.loads(line) for line in open(os.path.join(cache, "records.jsonl"))]
    split = {r["id"]: r["split"] for r in csv.DictReader(open(splits))}
    pick = lambda names: np.stack([imgs[i] for i, r in enumerate(recs)
                                   if r["dx"] == dx and split.get(r["id"]) in names]).astype(float)
    train, held = pick({"train"}), pick({"val", "test"})
    variants = [np.rot90(train, k, (1, 2)) for k in range(4)]
    variants += [np.rot90(train[:, ::-1], k, (1, 2)) for k in range(4)]
    T = np.concatenate(variants).reshape(8 * len(train), -1)
    t2 = (T ** 2).sum(1)

    def nearest(x):
        x = x.reshape(len(x), -1)
        d = (x ** 2).sum(1)[:, None] + t2[None] - 2 * x @ T.T
        return np.sqrt(np.maximum(d.min(1), 0) / x.shape[1])

    rows = [(f"held-out real {dx}", held)]
    for s in sets:
        man = [json.loads(line) for line in open(os.path.join(s, "manifest.jsonl"))]
        files = [m["file"] for m in man if m.get("dx") == dx]
        if not files:
            sys.exit(f"nearest_train: {s} has no {dx} image")
        rows.append((s, np.stack([read_png(os.path.join(s, f)) for f in files]).astype(float)))
    print(f"{len(train)} training {dx} images; nearest-training RMS distance (0-255):")
    for name, x in rows:
        v = nearest(x)
        print(f"  {name:<40} n={len(v):4d}  min {v.min():.1f}  5% {np.percentile(v, 5):.1f}  "
              f"median {np.median(v):.1f}")


if __name__ == "__main__":
    main()
