#!/usr/bin/env python3
"""Average the weights of several checkpoints of one generator (a "model soup" of points on one
training trajectory, e.g. an EMA and later EMA snapshots). numpy only.

  python3 scripts/average_weights.py OUT.safetensors A.safetensors B.safetensors [C ...]
  python3 scripts/average_weights.py OUT.safetensors A.safetensors:0.75 B.safetensors:0.25

Every input must hold the same tensor names, shapes and dtypes (F32/F64; F16 is averaged in
fp32 and written back as F16). The first input's metadata is kept and an "averaged_from" entry
lists the inputs and their weights, so `lesionflow` loads the result like the first file.
"""
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16}


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            sys.exit(f"{path}: tensor {name} has dtype {info['dtype']}; only F32/F64/F16 are averaged")
        lo, hi = info["data_offsets"]
        arr = np.frombuffer(data[lo:hi], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        tensors[name] = (info["dtype"], arr)
    return meta, tensors


def write(path, meta, tensors):
    header, blobs, offset = {"__metadata__": meta}, [], 0
    for name in sorted(tensors):
        dtype, arr = tensors[name]
        raw = np.ascontiguousarray(arr.astype(DTYPES[dtype])).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    out, specs = sys.argv[1], sys.argv[2:]
    paths, weights = [], []
    for s in specs:
        p, w = s, 1.0
        if ":" in s:
            head, tail = s.rsplit(":", 1)
            try:
                p, w = head, float(tail)
            except ValueError:
                pass
        paths.append(p)
        weights.append(w)
    total = sum(weights)
    if total <= 0:
        sys.exit("the weights must sum to a positive number")
    weights = [w / total for w in weights]
    meta0, ref = read(paths[0])
    acc = {k: (d, a.astype(np.float64) * weights[0]) for k, (d, a) in ref.items()}
    for p, w in zip(paths[1:], weights[1:]):
        _, t = read(p)
        if set(t) != set(acc):
            sys.exit(f"{p}: tensor names differ from {paths[0]} ({len(set(t) ^ set(acc))} not shared)")
        for k, (d, a) in t.items():
            if a.shape != acc[k][1].shape:
                sys.exit(f"{p}: tensor {k} has shape {list(a.shape)}, {paths[0]} has {list(acc[k][1].shape)}")
            acc[k] = (acc[k][0], acc[k][1] + a.astype(np.float64) * w)
    meta = dict(meta0)
    meta["averaged_from"] = json.dumps([{"file": p, "weight": round(w, 6)} for p, w in zip(paths, weights)])
    write(out, meta, acc)
    print(f"wrote {out}: {len(acc)} tensors averaged over {len(paths)} checkpoints")


if __name__ == "__main__":
    main()
