#!/usr/bin/env python3
"""Layer rule of docs/architecture.md, checked over the #include lines of the tree.

A file may include headers of its own layer or of lower layers; in the "tasks" layer the
modules are siblings and may not include each other (they meet in the pipeline). Exit status 1
and one line per violation (file:line: what it includes and why that is not allowed).

  python3 scripts/check_layers.py            # check the tree
  python3 scripts/check_layers.py --self-test  # the checker finds planted violations
"""
import os
import re
import sys

# Lowest first. A module is a directory under src/ (or a header group under include/lesionflow).
LAYERS = [
    ("core", ["src/core", "src/io", "src/pch_torch.h",
              "include/lesionflow/status.h", "include/lesionflow/log.h", "include/lesionflow/io.h",
              "include/lesionflow/jsonl.h", "include/lesionflow/runtime.h",
              "include/lesionflow/stop.h", "include/lesionflow/parallel.h",
              "include/lesionflow/scratch.h"]),
    ("domain", ["src/data", "src/concepts", "src/text", "src/report", "src/eval", "include/lesionflow"]),
    ("nn", ["src/flow", "src/models"]),
    ("train", ["src/train"]),
    ("tasks", ["src/adapters", "src/classify", "src/synth"]),
    ("pipeline", ["src/pipeline", "include/lesionflow/pipeline.h"]),
    ("app", ["tools", "bench", "tests"]),
]
SIBLINGS_ONLY_DOWN = {"tasks"}  # modules of these layers may not include each other

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def locate(path):
    """(layer index, layer name, module) of a repository path, or None."""
    best = None
    for i, (name, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if path == p or path.startswith(p + "/"):
                if best is None or len(p) > len(best[2]):
                    best = (i, name, p)
    return best


def resolve(root, src_file, inc):
    """Repository path of a quoted include, or None (system/third party)."""
    cands = [os.path.join(os.path.dirname(src_file), inc), os.path.join("include", inc), os.path.join("src", inc)]
    for c in cands:
        c = os.path.normpath(c)
        if os.path.exists(os.path.join(root, c)):
            return c
    return None


def check(root, includes):
    """includes: {file: [(line_no, repo_path_of_included)]} -> list of violation strings."""
    bad = []
    for f, incs in sorted(includes.items()):
        me = locate(f)
        if me is None:
            continue
        for line, target in incs:
            it = locate(target)
            if it is None:
                continue
            if it[0] > me[0]:
                bad.append(f"{f}:{line}: includes {target} ({it[1]} layer) from the lower {me[1]} layer")
            elif it[0] == me[0] and me[1] in SIBLINGS_ONLY_DOWN and it[2] != me[2]:
                bad.append(f"{f}:{line}: includes {target}: {me[2]} and {it[2]} are siblings in the {me[1]} layer "
                           "(share through a lower layer, or combine them in src/pipeline)")
    return bad


def scan(root):
    includes = {}
    for top in ("src", "include", "tools", "bench", "tests"):
        for dp, _, files in os.walk(os.path.join(root, top)):
            for fn in files:
                if not fn.endswith((".h", ".hpp", ".cpp", ".cc")):
                    continue
                full = os.path.join(dp, fn)
                rel = os.path.relpath(full, root)
                incs = []
                with open(full, encoding="utf-8", errors="replace") as fh:
                    for n, text in enumerate(fh, 1):
                        m = INCLUDE.match(text)
                        if m:
                            t = resolve(root, rel, m.group(1))
                            if t:
                                incs.append((n, t))
                includes[rel] = incs
    return includes


def self_test(root):
    planted = {
        "src/data/planted.cpp": [(3, "src/train/generator.h")],      # domain -> train: up
        "src/classify/planted.cpp": [(4, "src/synth/synth.h")],       # tasks sibling
        "src/models/planted.cpp": [(5, "include/lesionflow/io.h")],   # nn -> core: fine
        "src/pipeline/planted.cpp": [(6, "src/classify/classifier.h")],  # pipeline -> tasks: fine
    }
    bad = check(root, planted)
    assert len(bad) == 2, bad
    assert bad[0].startswith("src/classify/planted.cpp:4") and "siblings" in bad[0], bad
    assert bad[1].startswith("src/data/planted.cpp:3") and "lower domain layer" in bad[1], bad
    print("check_layers self-test: planted violations found, allowed includes accepted")


def main():
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if "--self-test" in sys.argv:
        self_test(root)
        return 0
    includes = scan(root)
    bad = check(root, includes)
    for b in bad:
        print(b)
    n = sum(len(v) for v in includes.values())
    print(f"check_layers: {len(includes)} files, {n} project includes, {len(bad)} violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
