#!/usr/bin/env python3
"""Grid of synthetic sets next to real images: for each dx, one row of real test images, then one
row per synthetic set (its first N images of that dx, from manifest.jsonl).

  python3 scripts/synth_grid.py cache/ham64 cache/ham_splits.csv mel,nv,bkl 8 out.png DIR1 DIR2 ...

numpy only (PNG read and written with zlib); reads 8-bit RGB(A) PNGs as lesionflow writes them.
"""
import json
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from real_grid import load_images, read_png, write_png  # noqa: E402


def main():
    cache, splits_csv, dxs, n, out = sys.argv[1:6]
    dirs = sys.argv[6:]
    n = int(n)
    imgs = load_images(cache)
    recs = [json.loads(l) for l in open(cache + "/records.jsonl")]
    import csv
    which = {r["id"]: r["split"] for r in csv.DictReader(open(splits_csv))}
    S, pad = imgs.shape[1], 2
    rows = []
    for dx in dxs.split(","):
        rows.append([imgs[i] for i, r in enumerate(recs) if r["dx"] == dx and which.get(r["id"]) == "test"][:n])
        for d in dirs:
            man = [json.loads(l) for l in open(d + "/manifest.jsonl")]
            rows.append([read_png(d + "/" + j["file"]) for j in man if j["dx"] == dx][:n])
    grid = np.full((len(rows) * (S + pad), n * (S + pad), 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            grid[r * (S + pad):r * (S + pad) + S, c * (S + pad):c * (S + pad) + S] = im
    write_png(out, grid)
    print(f"wrote {out}: per dx, a row of real test images then {len(dirs)} synthetic rows")


if __name__ == "__main__":
    main()
