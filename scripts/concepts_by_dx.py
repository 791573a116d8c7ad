#!/usr/bin/env python3
"""Per-diagnosis share of images with each measured colour and structure, from captions.jsonl
files written by `lesionflow caption` (any number; printed side by side as a Markdown table).

  python3 scripts/concepts_by_dx.py before=cache/ham_captions.jsonl after=/tmp/ham_captions.jsonl
"""
import json
import sys
from collections import defaultdict

COLOURS = ["white", "red", "light brown", "dark brown", "blue-gray", "black"]
STRUCTURES = ["pigment network", "dots/globules", "streaks", "blue-whitish veil",
              "regression structures"]


def load(path):
    by_dx = defaultdict(lambda: {"n": 0, "colours": defaultdict(int), "structures": defaultdict(int),
                                 "asym": defaultdict(int)})
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            m = r.get("measured", {})
            if not m.get("ok"):
                continue
            d = by_dx[r.get("dx", "?")]
            d["n"] += 1
            for c in m.get("colours", []):
                d["colours"][c] += 1
            for s in m.get("structures", []):
                d["structures"][s] += 1
            d["asym"][m.get("asymmetry", -1)] += 1
    return by_dx


def main():
    runs = [(a.split("=", 1)[0], load(a.split("=", 1)[1])) for a in sys.argv[1:]]
    dxs = sorted({dx for _, r in runs for dx in r})
    for title, key, names in [("colour present", "colours", COLOURS),
                              ("structure present", "structures", STRUCTURES),
                              ("asymmetry (axes)", "asym", [0, 1, 2])]:
        print(f"\n| {title} | " + " | ".join(f"{dx} ({'/'.join(str(r[dx]['n']) for _, r in runs)})"
                                             for dx in dxs) + " |")
        print("|---" * (len(dxs) + 1) + "|")
        for name in names:
            cells = []
            for dx in dxs:
                vals = []
                for _, r in runs:
                    d = r.get(dx)
                    vals.append("-" if not d or not d["n"] else f"{d[key][name] / d['n']:.2f}")
                cells.append(" / ".join(vals))
            print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n(cells: " + " / ".join(n for n, _ in runs) + "; share of the measured images of that dx)")


if __name__ == "__main__":
    main()
