#!/usr/bin/env python3
"""Added latency of the bearer-token check, per HTTP request, at concurrency 1.

Two API processes of the same binary over one database: A with `--auth none`,
B with `--auth tokens` and a bootstrap admin token. One keep-alive client
calls `GET /v1/promises/{name}` on each in alternating blocks (so drift hits
both alike) and prints the median and p99 of each side and their difference.

    benchmarks/token-check.py FULFIL_BINARY [REQUESTS_PER_BLOCK] [BLOCKS]
"""
import http.client, json, os, secrets, socket, statistics, subprocess, sys, time

binary = sys.argv[1]
per_block = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
blocks = int(sys.argv[3]) if len(sys.argv) > 3 else 10
db = "postgres://postgres@127.0.0.1:5432/fulfil_token_bench"
token = "fulfil-bench-" + secrets.token_urlsafe(32)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(auth, port):
    env = dict(os.environ, DATABASE_URL=db, FULFIL_NATS_PREFIX="tokenbench",
               FULFIL_AUTH=auth, FULFIL_HTTP_ADDR=f"127.0.0.1:{port}",
               FULFIL_GRPC_ADDR=f"127.0.0.1:{free_port()}", RUST_LOG="warn")
    if auth == "tokens":
        env["FULFIL_BOOTSTRAP_TOKEN"] = token
    return subprocess.Popen([binary, "serve", "--roles", "api"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(port):
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"API on {port} never became ready")


subprocess.run([binary, "migrate", "--database-url", db, "--create-database"],
               check=True, stdout=subprocess.DEVNULL)
pa, pb = free_port(), free_port()
procs = [start("none", pa), start("tokens", pb)]
try:
    wait_ready(pa); wait_ready(pb)
    promise = "apiVersion: fulfil.dev/v1\nkind: Promise\nmetadata: {name: bench-read, version: 1.0.0, owner: platform}\nspec:\n  api: {type: object}\n  workflow:\n    steps: [{id: a, uses: noop}]\n"
    c = http.client.HTTPConnection("127.0.0.1", pb)
    c.request("PUT", "/v1/promises/bench-read", promise, {"Authorization": f"Bearer {token}"})
    r = c.getresponse(); r.read()
    assert r.status in (200, 201), r.status
    sides = {"A none": (pa, {}), "B tokens": (pb, {"Authorization": f"Bearer {token}"})}
    conns = {k: http.client.HTTPConnection("127.0.0.1", p) for k, (p, _) in sides.items()}
    lat = {k: [] for k in sides}
    for block in range(blocks + 1):
        for k, (_, headers) in sides.items():
            conn = conns[k]
            for _ in range(per_block):
                t = time.perf_counter()
                conn.request("GET", "/v1/promises/bench-read", headers=headers)
                resp = conn.getresponse(); resp.read()
                if resp.status != 200:
                    sys.exit(f"{k}: status {resp.status}")
                if block:  # the first block warms both up and is not counted
                    lat[k].append((time.perf_counter() - t) * 1000)
    out = {}
    for k, xs in lat.items():
        xs.sort()
        out[k] = {"n": len(xs), "median_ms": statistics.median(xs),
                  "p99_ms": xs[int(len(xs) * 0.99)], "mean_ms": statistics.fmean(xs)}
        print(f"{k:<9} n {len(xs)}  median {out[k]['median_ms']:.4f} ms  "
              f"p99 {out[k]['p99_ms']:.4f} ms  mean {out[k]['mean_ms']:.4f} ms")
    added = out["B tokens"]["median_ms"] - out["A none"]["median_ms"]
    print(f"added by the token check: {added:.4f} ms per request (median)")
    print(json.dumps(out))
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=10)
