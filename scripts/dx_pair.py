#!/usr/bin/env python3
"""Paired comparison of two diagnosis-task arms, possibly from different experiments.

  python3 scripts/dx_pair.py 'runs/ham_dx/classifiers/cnn_realsyn_n500_s*/test_dx_probs.csv' \\
                             'runs/ham_dx_dflora/classifiers/cnn_realsyn_n500_s*/test_dx_probs.csv'

Each argument is a glob of test_dx_probs.csv files (one per seed, the same test images). The
probabilities are averaged over each arm's seeds, the argmax is the call, and the balanced
accuracy difference B - A gets a paired bootstrap 95% interval over test images (2,000 resamples,
seed 0), as `experiment`'s paired.dx_pooled does within one experiment. Per-class recall follows.
numpy only.
"""
import csv
import glob
import sys

import numpy as np


def load(pattern):
    files = sorted(glob.glob(pattern))
    if not files:
        sys.exit(f"dx_pair: no file matches {pattern}")
    total, ids, truth, classes = 0, None, None, None
    for f in files:
        rows = list(csv.reader(open(f)))
        cls = [c[2:] for c in rows[0][2:]]
        body = sorted(rows[1:])
        if ids is None:
            ids, classes = [r[0] for r in body], cls
        if [r[0] for r in body] != ids or cls != classes:
            sys.exit(f"dx_pair: {f} has other test images or classes than {files[0]}")
        truth = np.array([classes.index(r[1]) for r in body])
        total = total + np.array([[float(v) for v in r[2:]] for r in body])
    return truth, total / len(files), classes, len(files), ids


def balanced_accuracy(t, p, k):
    return np.mean([(p[t == c] == c).mean() for c in range(k) if (t == c).any()])


def main():
    ta, pa, classes, na, ids_a = load(sys.argv[1])
    tb, pb, classes_b, nb, ids_b = load(sys.argv[2])
    if ids_a != ids_b or classes != classes_b:
        sys.exit("dx_pair: the two arms were tested on other images or classes")
    ca, cb, k = pa.argmax(1), pb.argmax(1), len(classes)
    ba, bb = balanced_accuracy(ta, ca, k), balanced_accuracy(ta, cb, k)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(2000):
        i = rng.integers(0, len(ta), len(ta))
        diffs.append(balanced_accuracy(ta[i], cb[i], k) - balanced_accuracy(ta[i], ca[i], k))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    print(f"A: {sys.argv[1]} ({na} seeds)\nB: {sys.argv[2]} ({nb} seeds)")
    print(f"balanced accuracy A {ba:.3f}  B {bb:.3f}  B - A {bb - ba:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    for c, name in enumerate(classes):
        m = ta == c
        print(f"  {name:<6} n={m.sum():5d}  recall A {(ca[m] == c).mean():.2f}  B {(cb[m] == c).mean():.2f}")


if __name__ == "__main__":
    main()
