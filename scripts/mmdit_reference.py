#!/usr/bin/env python3
"""Independent python3-torch reference of lesionflow's MMDiT forward pass.

Writes tests/parity/mmdit_tiny.safetensors holding random weights (keyed like the C++
named_parameters()), inputs (input.x, input.t, input.ids, input.mask) and the expected output
(expected.out), plus the config JSON in the metadata. Run with /usr/bin/python3 (Debian's
python3-torch); only torch + the standard library are used.
"""
import json
import math
import struct
import sys

import torch
import torch.nn.functional as F

CFG = dict(image_size=16, channels=3, patch=4, dim=32, heads=2, double_blocks=2, single_blocks=2,
           mlp_ratio=2.0, refine_channels=8, vocab_size=50, max_text_len=12, text_dim=24,
           text_layers=2, text_heads=2, rope_theta=100.0, prediction="velocity")


def shapes(c):
    D, Dt, hid = c["dim"], c["text_dim"], int(c["mlp_ratio"] * c["dim"])
    pd = c["patch"] ** 2 * c["channels"]
    hd = D // c["heads"]
    s = {"text.tok.weight": (c["vocab_size"], Dt), "text.pos": (1, c["max_text_len"], Dt),
         "text.norm.weight": (Dt,), "text.norm.bias": (Dt,)}
    def lin(name, i, o):
        s[name + ".weight"] = (o, i)
        s[name + ".bias"] = (o,)
    for l in range(c["text_layers"]):
        p = f"text.layers.{l}."
        s[p + "ln1.weight"] = (Dt,); s[p + "ln1.bias"] = (Dt,)
        s[p + "ln2.weight"] = (Dt,); s[p + "ln2.bias"] = (Dt,)
        lin(p + "qkv", Dt, 3 * Dt); lin(p + "proj", Dt, Dt)
        lin(p + "mlp1", Dt, 4 * Dt); lin(p + "mlp2", 4 * Dt, Dt)
    lin("img_in", pd, D); lin("txt_in", Dt, D)
    lin("time_in.0", 256, D); lin("time_in.2", D, D)
    lin("vec_in.0", Dt, D); lin("vec_in.2", D, D)
    for b in range(c["double_blocks"]):
        for st in ("img", "txt"):
            p = f"double_blocks.{b}.{st}."
            lin(p + "mod", D, 6 * D); lin(p + "qkv", D, 3 * D); lin(p + "proj", D, D)
            lin(p + "mlp1", D, hid); lin(p + "mlp2", hid, D)
            s[p + "q_norm"] = (hd,); s[p + "k_norm"] = (hd,)
    for b in range(c["single_blocks"]):
        p = f"single_blocks.{b}."
        lin(p + "mod", D, 3 * D); lin(p + "lin1", D, 3 * D + hid); lin(p + "lin2", D + hid, D)
        s[p + "q_norm"] = (hd,); s[p + "k_norm"] = (hd,)
    lin("final_mod", D, 2 * D); lin("final_out", D, pd)
    rc, C = c["refine_channels"], c["channels"]
    for i, (ci, co) in {0: (2 * C, rc), 2: (rc, rc), 4: (rc, C)}.items():
        s[f"refine.{i}.weight"] = (co, ci, 3, 3); s[f"refine.{i}.bias"] = (co,)
    return s


def attend(q, k, v, key_mask):
    # q,k,v: [B,H,N,hd]; key_mask [B,N] bool
    w = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    w = w.masked_fill(~key_mask[:, None, None, :], -1e9)
    return w.softmax(-1) @ v


def rope_tables(c, T):
    hd = c["dim"] // c["heads"]
    g = c["image_size"] // c["patch"]
    q = hd // 4
    freqs = c["rope_theta"] ** (-torch.arange(q, dtype=torch.float64) / q)
    r, cc = torch.meshgrid(torch.arange(g, dtype=torch.float64), torch.arange(g, dtype=torch.float64), indexing="ij")
    ang = torch.cat([r.reshape(-1, 1) * freqs, cc.reshape(-1, 1) * freqs], 1)
    ang = torch.cat([torch.zeros(T, hd // 2, dtype=torch.float64), ang], 0)
    return ang.cos().float(), ang.sin().float()


def rope(x, cos, sin):
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def heads(x, h):  # [B,N,D] -> [B,h,N,hd]
    B, N, D = x.shape
    return x.view(B, N, h, D // h).transpose(1, 2)


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def forward(W, c, x, t, ids, mask):
    B, C, H, _ = x.shape
    p, D, nh = c["patch"], c["dim"], c["heads"]
    T = ids.shape[1]
    lin = lambda name, v: F.linear(v, W[name + ".weight"], W[name + ".bias"])
    # text encoder
    h = W["text.tok.weight"][ids] + W["text.pos"][:, :T]
    for l in range(c["text_layers"]):
        pre = f"text.layers.{l}."
        y = F.layer_norm(h, (h.shape[-1],), W[pre + "ln1.weight"], W[pre + "ln1.bias"])
        qkv = lin(pre + "qkv", y)
        q, k, v = [heads(z, c["text_heads"]) for z in qkv.chunk(3, -1)]
        a = attend(q, k, v, mask).transpose(1, 2).reshape(h.shape)
        h = h + lin(pre + "proj", a)
        y = F.layer_norm(h, (h.shape[-1],), W[pre + "ln2.weight"], W[pre + "ln2.bias"])
        h = h + lin(pre + "mlp2", F.gelu(lin(pre + "mlp1", y), approximate="tanh"))
    h = F.layer_norm(h, (h.shape[-1],), W["text.norm.weight"], W["text.norm.bias"])
    m = mask.float().unsqueeze(-1)
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
    # conditioning vector
    half = 128
    fr = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    arg = (t * 1000.0)[:, None] * fr[None]
    temb = torch.cat([arg.cos(), arg.sin()], 1)
    vec = lin("time_in.2", F.silu(lin("time_in.0", temb))) + lin("vec_in.2", F.silu(lin("vec_in.0", pooled)))
    # tokens
    patches = x.unfold(2, p, p).unfold(3, p, p)  # [B,C,g,g,p,p]
    patches = patches.permute(0, 2, 3, 4, 5, 1).reshape(B, -1, p * p * C)
    img = lin("img_in", patches)
    txt = lin("txt_in", h)
    N = img.shape[1]
    cos, sin = rope_tables(c, T)
    kmask = torch.cat([mask, torch.ones(B, N, dtype=torch.bool)], 1)
    ln = lambda v: F.layer_norm(v, (v.shape[-1],), eps=1e-6)
    sv = F.silu(vec)
    for b in range(c["double_blocks"]):
        pre = f"double_blocks.{b}."
        mi = lin(pre + "img.mod", sv)[:, None].chunk(6, -1)
        mt = lin(pre + "txt.mod", sv)[:, None].chunk(6, -1)
        def qkv_of(s, v, mm):
            q, k, vv = lin(pre + s + ".qkv", ln(v) * (1 + mm[1]) + mm[0]).chunk(3, -1)
            return rms(heads(q, nh), W[pre + s + ".q_norm"]), rms(heads(k, nh), W[pre + s + ".k_norm"]), heads(vv, nh)
        iq, ik, iv = qkv_of("img", img, mi)
        tq, tk, tv = qkv_of("txt", txt, mt)
        q = rope(torch.cat([tq, iq], 2), cos, sin)
        k = rope(torch.cat([tk, ik], 2), cos, sin)
        a = attend(q, k, torch.cat([tv, iv], 2), kmask).transpose(1, 2).reshape(B, T + N, D)
        ta, ia = a[:, :T], a[:, T:]
        img = img + mi[2] * lin(pre + "img.proj", ia)
        img = img + mi[5] * lin(pre + "img.mlp2", F.gelu(lin(pre + "img.mlp1", ln(img) * (1 + mi[4]) + mi[3]), approximate="tanh"))
        txt = txt + mt[2] * lin(pre + "txt.proj", ta)
        txt = txt + mt[5] * lin(pre + "txt.mlp2", F.gelu(lin(pre + "txt.mlp1", ln(txt) * (1 + mt[4]) + mt[3]), approximate="tanh"))
    s = torch.cat([txt, img], 1)
    hid = int(c["mlp_ratio"] * D)
    for b in range(c["single_blocks"]):
        pre = f"single_blocks.{b}."
        sh, sc, g = lin(pre + "mod", sv)[:, None].chunk(3, -1)
        y = lin(pre + "lin1", ln(s) * (1 + sc) + sh)
        qkv, mlp = y[..., :3 * D], y[..., 3 * D:]
        q, k, v = [heads(z, nh) for z in qkv.chunk(3, -1)]
        q = rope(rms(q, W[pre + "q_norm"]), cos, sin)
        k = rope(rms(k, W[pre + "k_norm"]), cos, sin)
        a = attend(q, k, v, kmask).transpose(1, 2).reshape(B, T + N, D)
        s = s + g * lin(pre + "lin2", torch.cat([a, F.gelu(mlp, approximate="tanh")], -1))
    img = s[:, T:]
    sh, sc = lin("final_mod", sv)[:, None].chunk(2, -1)
    out = lin("final_out", ln(img) * (1 + sc) + sh)
    g = H // p
    out = out.view(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, H)
    r = torch.cat([out, x], 1)
    r = F.silu(F.conv2d(r, W["refine.0.weight"], W["refine.0.bias"], padding=1))
    r = F.silu(F.conv2d(r, W["refine.2.weight"], W["refine.2.bias"], padding=1))
    r = F.conv2d(r, W["refine.4.weight"], W["refine.4.bias"], padding=1)
    return out + r


def write_safetensors(path, tensors, metadata):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        dt = {torch.float32: "F32", torch.int64: "I64", torch.bool: "U8"}[t.dtype]
        b = (t.to(torch.uint8) if t.dtype == torch.bool else t).numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * ((8 - (len(h) + 8) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main(out):
    torch.manual_seed(0)
    W = {}
    for name, shp in shapes(CFG).items():
        W[name] = torch.randn(shp) * (0.02 if name.endswith("bias") else 0.15)
        if name.endswith("norm.weight") or name.endswith("q_norm") or name.endswith("k_norm"):
            W[name] = 1 + 0.1 * torch.randn(shp)
    B, T = 2, CFG["max_text_len"]
    x = torch.randn(B, 3, CFG["image_size"], CFG["image_size"])
    t = torch.tensor([0.3, 0.85])
    ids = torch.randint(0, CFG["vocab_size"], (B, T))
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, :7] = True
    mask[1, :12] = True
    with torch.no_grad():
        y = forward(W, CFG, x, t, ids, mask)
    tensors = dict(W)
    tensors.update({"input.x": x, "input.t": t, "input.ids": ids, "input.mask": mask, "expected.out": y})
    write_safetensors(out, tensors, {"config": json.dumps(CFG), "torch": torch.__version__})
    print(f"wrote {out}: output mean {y.mean():.5f} std {y.std():.5f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/parity/mmdit_tiny.safetensors")
