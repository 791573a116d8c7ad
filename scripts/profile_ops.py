#!/usr/bin/env python3
"""Self time per operator from a chrome trace written by `lesionflow bench --profile FILE`.
Usage: scripts/profile_ops.py trace.json [top_n] [--shapes]
--shapes: one row per operator and input shapes (the trace's args.shapes)."""
import json
import sys
from collections import defaultdict


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    by_shape = "--shapes" in sys.argv
    events = [e for e in json.load(open(args[0])) if e.get("ph") == "X"]
    top = int(args[1]) if len(args) > 1 else 30
    for e in events:
        if by_shape:
            shapes = [s for s in e.get("args", {}).get("shapes", []) if s]
            e["name"] = e["name"] + " " + str(shapes)
    by_tid = defaultdict(list)
    for e in events:
        by_tid[e["tid"]].append(e)
    self_t, count = defaultdict(float), defaultdict(int)
    total = 0.0
    for evs in by_tid.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [end, name, child_time]
        def pop():
            end, name, child = stack.pop()
            return name, child
        for e in evs:
            start, end = e["ts"], e["ts"] + e["dur"]
            while stack and stack[-1][0] <= start:
                _ = stack.pop()
            if stack:
                stack[-1][2] += e["dur"]
            else:
                total += e["dur"]
            stack.append([end, e["name"], 0.0])
            e["_frame"] = stack[-1]
        for e in evs:
            self_t[e["name"]] += e["dur"] - e["_frame"][2]
            count[e["name"]] += 1
    w = 90 if by_shape else 45
    print(f"{'op':{w}s} {'self ms':>10s} {'%':>6s} {'calls':>7s}")
    for name, t in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{name[:w]:{w}s} {t / 1e3:10.1f} {100 * t / total:6.1f} {count[name]:7d}")
    print(f"{'total (top-level)':{w}s} {total / 1e3:10.1f}")


if __name__ == "__main__":
    main()
