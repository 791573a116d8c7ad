#!/usr/bin/env python3
"""Bounded load test of `lesionflow serve` (loopback only; fixed request counts; stops by itself).

    python3 scripts/serve_load.py [--lf build/lesionflow] [--clients 4] [--captions 200]
                                  [--generates 5] [--n 4] [--steps 12] [--out result.json]

Starts the server on a free loopback port with the shipped model, warms it up (two rounds of
CLIENTS concurrent generate requests), then runs
CLIENTS clients at once. Each client sends CAPTIONS /v1/caption requests with GENERATES
/v1/generate requests (N images each) spread evenly among them, so the load has the same mix from
start to end. A last burst sends 2 x queue generate requests at once to check that a full queue
answers 503 with Retry-After (the intended errors). The server's RSS is sampled every 0.1 s.

Checks (exit 1 if any fails): no error other than the burst's 503s, every response is the JSON
the API documents, and the mean RSS of the last quarter of the run is within 10% of the first
quarter's. Prints p50/p99 latency per endpoint, images/s and the RSS numbers; --out writes them.
"""
import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

COLOURS = ["white", "red", "light brown", "dark brown", "blue-gray", "black"]
DX = ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def post(base, path, body, timeout=300):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, data, headers = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, data, headers = e.code, e.read(), e.headers
    return status, json.loads(data), headers, time.perf_counter() - t0


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lf", default="build/lesionflow")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--captions", type=int, default=200, help="per client")
    ap.add_argument("--generates", type=int, default=5, help="per client")
    ap.add_argument("--n", type=int, default=4, help="images per generate request")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--queue", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="server --threads (0 = all cores)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([a.lf, "--threads", str(a.threads), "serve", "--port", str(port),
                               "--queue", str(a.queue)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    failures = []
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/v1/health", timeout=1).read()
                break
            except Exception:
                if server.poll() is not None:
                    sys.exit("serve exited: " + server.stderr.read().decode()[-2000:])
                time.sleep(0.1)
        else:
            sys.exit("serve did not answer /v1/health within 60 s")
        # Warm-up: two rounds of CLIENTS generate requests at once, so that the server's worker
        # threads have each made images (their allocator arenas grow once, not during the run).
        for r in range(2):
            ws = [threading.Thread(target=post, args=(base, "/v1/generate",
                                                      {"dx": "nv", "n": a.n, "steps": a.steps,
                                                       "seed": 10 * r + k}))
                  for k in range(a.clients)]
            for w in ws:
                w.start()
            for w in ws:
                w.join()

        rss, stop = [], threading.Event()

        def sampler():
            while not stop.is_set():
                rss.append(rss_kb(server.pid))
                time.sleep(0.1)

        lat = {"caption": [], "generate": []}
        images, no_lesion = [0], [0]
        lock = threading.Lock()

        def client(k):
            rnd = random.Random(k)
            every = max(1, a.captions // max(1, a.generates))
            for i in range(a.captions):
                body = {"dx": rnd.choice(DX), "age": rnd.randrange(5, 95),
                        "sex": rnd.choice(["male", "female"]),
                        "colours": rnd.sample(COLOURS, rnd.randrange(1, 4)),
                        "asymmetry": rnd.randrange(3), "variant": rnd.randrange(100)}
                st, j, _, dt = post(base, "/v1/caption", body)
                with lock:
                    lat["caption"].append(dt)
                    if st != 200 or "caption" not in j:
                        failures.append(f"caption: HTTP {st} {j}")
                if i % every == every - 1 and i // every < a.generates:
                    g = {"dx": body["dx"], "colours": body["colours"], "n": a.n,
                         "steps": a.steps, "seed": 1000 * k + i}
                    while True:
                        st, j, h, dt = post(base, "/v1/generate", g)
                        if st != 503:
                            break
                        time.sleep(min(1.0, float(h.get("Retry-After", "1"))))
                    with lock:
                        lat["generate"].append(dt)
                        if st != 200 or len(j.get("images", [])) != a.n:
                            failures.append(f"generate: HTTP {st} {str(j)[:200]}")
                        else:
                            images[0] += a.n
                            for im in j["images"]:
                                if not im["png_base64"].startswith("iVBORw0KGgo") or \
                                        "ok" not in im["measured"]:
                                    failures.append("generate: an image without PNG/measurement")
                                elif not im["measured"]["ok"]:
                                    no_lesion[0] += 1

        th = threading.Thread(target=sampler)
        th.start()
        t0 = time.perf_counter()
        cs = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
        for c in cs:
            c.start()
        for c in cs:
            c.join()
        wall = time.perf_counter() - t0
        stop.set()
        th.join()

        # Burst: 2 x queue generate requests at once; the ones above the queue get 503.
        burst = []

        def one(i):
            st, j, h, _ = post(base, "/v1/generate", {"dx": "mel", "n": a.n, "steps": a.steps, "seed": i})
            with lock:
                burst.append((st, h.get("Retry-After"), j))

        bs = [threading.Thread(target=one, args=(i,)) for i in range(2 * a.queue)]
        for b in bs:
            b.start()
        for b in bs:
            b.join()
        n503 = sum(1 for st, _, _ in burst if st == 503)
        for st, ra, j in burst:
            if st == 503 and (not ra or "error" not in j):
                failures.append("503 without Retry-After or JSON error")
            elif st not in (200, 503):
                failures.append(f"burst: HTTP {st} {j}")
        health = json.loads(urllib.request.urlopen(base + "/v1/health", timeout=5).read())
        if health.get("status") != "ok":
            failures.append("not healthy after the load")
    finally:
        server.terminate()
        code = server.wait(timeout=30)
    if code != 0:
        failures.append(f"serve exited with {code} on SIGTERM")

    q = max(1, len(rss) // 4)
    first, last = statistics.mean(rss[:q]), statistics.mean(rss[-q:])
    res = {
        "clients": a.clients, "caption_requests": len(lat["caption"]),
        "generate_requests": len(lat["generate"]), "images_per_request": a.n, "steps": a.steps,
        "wall_seconds": round(wall, 2), "images_per_second": round(images[0] / wall, 3),
        "caption_p50_ms": round(1000 * pct(lat["caption"], 0.5), 2),
        "caption_p99_ms": round(1000 * pct(lat["caption"], 0.99), 2),
        "generate_p50_s": round(pct(lat["generate"], 0.5), 3),
        "generate_p99_s": round(pct(lat["generate"], 0.99), 3),
        "burst_requests": len(burst), "burst_503": n503,
        "rss_first_quarter_mb": round(first / 1024, 1), "rss_last_quarter_mb": round(last / 1024, 1),
        "rss_change": round(last / first - 1, 4),
        "rss_quarters_mb": [round(statistics.mean(rss[i * q:(i + 1) * q]) / 1024, 1) for i in range(4)],
        "images_where_measurement_found_no_lesion": no_lesion[0], "errors": failures[:20], "n_errors": len(failures),
        "cpu": os.cpu_count(),
    }
    if abs(res["rss_change"]) > 0.10:
        failures.append(f"RSS changed by {100 * res['rss_change']:.1f}% (limit 10%)")
        res["n_errors"] = len(failures)
    if n503 == 0:
        failures.append("the burst of 2 x queue requests got no 503")
        res["n_errors"] = len(failures)
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    if failures:
        print("FAILED:", *failures[:10], sep="\n  ")
        sys.exit(1)


if __name__ == "__main__":
    main()
