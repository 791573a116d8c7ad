#!/usr/bin/env python3
"""Self time per operator from a chrome trace written by `lesionflow bench --profile FILE`.
Usage: scripts/profile_ops.py trace.json [top_n]"""
import json
import sys
from collections import defaultdict


def main():
    events = [e for e in json.load(open(sys.argv[1])) if e.get("ph") == "X"]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
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
    print(f"{'op':45s} {'self ms':>10s} {'%':>6s} {'calls':>7s}")
    for name, t in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{name[:45]:45s} {t / 1e3:10.1f} {100 * t / total:6.1f} {count[name]:7d}")
    print(f"{'total (top-level)':45s} {total / 1e3:10.1f}")


if __name__ == "__main__":
    main()
