#!/usr/bin/env python3
"""Grid of real images from a prepared cache: one row per dx, N images of a split each.

  python3 scripts/real_grid.py cache/ham64 cache/ham_splits.csv test mel,nv,bkl,bcc,akiec,vasc,df 8 out.png

Reads images.safetensors (U8 [N,S,S,3]) and records.jsonl with numpy only; writes an RGB PNG
(zlib, no imaging library needed). Rows follow the order of the dx list.
"""
import csv
import json
import struct
import sys
import zlib

import numpy as np


def load_images(cache):
    with open(cache + "/images.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header["images"]
    a, b = meta["data_offsets"]
    return np.frombuffer(data[a:b], dtype=np.uint8).reshape(meta["shape"])


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


def write_png(path, rgb):
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def main():
    cache, splits_csv, split, dxs, n, out = sys.argv[1:7]
    n = int(n)
    imgs = load_images(cache)
    recs = [json.loads(l) for l in open(cache + "/records.jsonl")]
    which = {r["id"]: r["split"] for r in csv.DictReader(open(splits_csv))}
    S, pad = imgs.shape[1], 2
    dxs = dxs.split(",")
    grid = np.full((len(dxs) * (S + pad), n * (S + pad), 3), 255, np.uint8)
    for row, dx in enumerate(dxs):
        idx = [i for i, r in enumerate(recs) if r["dx"] == dx and which.get(r["id"]) == split][:n]
        for col, i in enumerate(idx):
            grid[row * (S + pad):row * (S + pad) + S, col * (S + pad):col * (S + pad) + S] = imgs[i]
    write_png(out, grid)
    print(f"wrote {out}: rows {','.join(dxs)}, {n} {split} images each")


if __name__ == "__main__":
    main()
