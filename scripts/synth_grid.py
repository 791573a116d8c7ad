#!/usr/bin/env python3
"""Grid of synthetic sets next to real images: for each dx, one row of real test images, then one
row per synthetic set (its first N images of that dx, from manifest.jsonl).

  python3 scripts/synth_grid.py cache/ham64 cache/ham_splits.csv mel,nv,bkl 8 out.png DIR1 DIR2 ...

numpy only (PNG read and written with zlib); reads 8-bit RGB(A) PNGs as lesionflow writes them.
"""
import json
import struct
import sys
import zlib

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from real_grid import load_images, write_png  # noqa: E402


def read_png(path):
    d = open(path, "rb").read()
    assert d[:8] == b"\x89PNG\r\n\x1a\n", path + ": not a PNG"
    i, idat = 8, b""
    while i < len(d):
        n = struct.unpack(">I", d[i:i + 4])[0]
        tag, body = d[i + 4:i + 8], d[i + 8:i + 8 + n]
        i += 12 + n
        if tag == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6), path + ": only 8-bit RGB/RGBA PNGs"
        elif tag == b"IDAT":
            idat += body
    ch = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(idat), w * ch
    out = np.zeros((h, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    pos = 0
    for y in range(h):
        f = raw[pos]
        line = np.frombuffer(raw[pos + 1:pos + 1 + stride], np.uint8).astype(np.int32)
        pos += 1 + stride
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 255
        else:  # sub, average, Paeth: sequential along the row
            cur = np.zeros(stride, np.int32)
            for x in range(stride):
                a = cur[x - ch] if x >= ch else 0
                b = prev[x]
                c = prev[x - ch] if x >= ch else 0
                if f == 1:
                    p = a
                elif f == 3:
                    p = (a + b) // 2
                else:
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (line[x] + p) & 255
        out[y] = cur
        prev = cur
    return out.reshape(h, w, ch)[:, :, :3].astype(np.uint8)


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
