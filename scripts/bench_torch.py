#!/usr/bin/env python3
"""The same models in python3-torch, timed for `lesionflow bench` (never used at run time).

usage (called by the C++ bench driver, one measurement per call, JSON on stdout):
  bench_torch.py gen-train CONFIG_JSON BATCH TEXT_TOKENS STEPS THREADS
  bench_torch.py vit-train IMAGE_SIZE PATCH DIM DEPTH HEADS BATCH STEPS THREADS

gen-train: lesionflow's MMDiT (scripts/mmdit_reference.py, the independent implementation the
parity test checks) with fresh random weights, x-prediction-style MSE loss, AdamW; one warm-up
step, then STEPS timed steps. vit-train: the ViT classifier of src/classify with cross-entropy.
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmdit_reference as ref  # noqa: E402


def timed(step, batch, steps):
    """One warm-up step, then `steps` timed steps."""
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"images_per_second": batch * steps / dt, "seconds": dt}


def gen_train(cfg, batch, T, steps, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    W = {k: (torch.randn(s) * 0.02).requires_grad_(True) for k, s in ref.shapes(cfg).items()}
    opt = torch.optim.AdamW(list(W.values()), lr=1e-4, weight_decay=0.0)
    S, C = cfg["image_size"], cfg["channels"]
    x0 = torch.randn(batch, C, S, S)
    ids = torch.randint(3, cfg["vocab_size"], (batch, T))
    mask = torch.ones(batch, T, dtype=torch.bool)

    def step():
        t = torch.rand(batch)
        noise = torch.randn_like(x0)
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        loss = F.mse_loss(ref.forward(W, cfg, xt, t, ids, mask), x0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(W.values()), 1.0)
        opt.step()

    return timed(step, batch, steps)


class ViT(torch.nn.Module):
    def __init__(self, size, patch, dim, depth, heads):
        super().__init__()
        T = (size // patch) ** 2
        self.heads = heads
        self.patch = torch.nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = torch.nn.Parameter(torch.randn(1, T + 1, dim) * 0.02)
        self.layers = torch.nn.ModuleList()
        for _ in range(depth):
            self.layers.append(torch.nn.ModuleDict(dict(
                ln1=torch.nn.LayerNorm(dim), qkv=torch.nn.Linear(dim, 3 * dim), proj=torch.nn.Linear(dim, dim),
                ln2=torch.nn.LayerNorm(dim), fc1=torch.nn.Linear(dim, 4 * dim), fc2=torch.nn.Linear(4 * dim, dim))))
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, 2)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        N, _, D = t.shape
        t = torch.cat([self.cls.expand(N, 1, D), t], 1) + self.pos
        L, H = t.shape[1], self.heads
        for l in self.layers:
            q, k, v = l["qkv"](l["ln1"](t)).view(N, L, 3, H, D // H).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // H), -1)
            t = t + l["proj"]((a @ v).transpose(1, 2).reshape(N, L, D))
            t = t + l["fc2"](F.gelu(l["fc1"](l["ln2"](t))))
        return self.head(self.norm(t[:, 0]))


def vit_train(size, patch, dim, depth, heads, batch, steps, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = ViT(size, patch, dim, depth, heads)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch,))

    def step():
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed(step, batch, steps)


def main(argv):
    if argv[1] == "gen-train":
        cfg = json.loads(argv[2])
        r = gen_train(cfg, int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6]))
    elif argv[1] == "vit-train":
        a = [int(v) for v in argv[2:10]]
        r = vit_train(*a)
    else:
        raise SystemExit("unknown benchmark " + argv[1])
    r["torch"] = torch.__version__
    print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv)
