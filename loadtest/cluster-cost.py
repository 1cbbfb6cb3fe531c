#!/usr/bin/env python3
"""What cluster-wide limits cost: three `volley serve` workers on one Redis relay a
campaign to volley-sink, once with `[cluster] shared_limits = true` and once with
`false` (then each worker gets a third of the cap and of the rate, so the totals match),
alternating, in the same run; reports throughput, volley's CPU-s per 10k
messages (the three workers together) and Redis's CPU.

Usage: loadtest/cluster-cost.py [--messages 30000] [--rate 0] [--rounds 2] [--workers 3]
Needs: a release build (cargo build --release -p volley -p volley-loadtest) and Redis on
127.0.0.1:6379. Loopback only; every run is bounded by its message count and a timeout.
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release")
HZ = os.sysconf("SC_CLK_TCK")
TIMEOUT = 300


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def redis(*args):
    return subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", *args],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout


def redis_cpu():
    info = redis("INFO", "cpu")
    values = dict(
        line.split(":", 1) for line in info.splitlines() if line.startswith("used_cpu_")
    )
    return float(values.get("used_cpu_sys", 0)) + float(values.get("used_cpu_user", 0))


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read().decode()


def delivered(api):
    _, text = http("GET", f"http://{api}/metrics")
    for line in text.splitlines():
        if line.startswith("volley_deliveries_total{") and 'outcome="delivered"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def run(mode_shared, args, sink_port, work):
    prefix = f"volley-cost-{random.getrandbits(48):012x}"
    workers = []
    # The same total either way: the cluster's cap shared, or a third of it per worker;
    # and the rate likewise.
    cap = args.cap if mode_shared else max(1, args.cap // args.workers)
    rate = args.rate if mode_shared else args.rate // args.workers
    limits = f'[limits]\nglobal = "{rate}/s"\n' if rate else ""
    for i in range(args.workers):
        api = f"127.0.0.1:{free_port()}"
        conf = os.path.join(work, f"{prefix}-{i}.toml")
        with open(conf, "w") as f:
            f.write(
                f'[server]\nlisten = "{api}"\n'
                f'[queue]\nbackend = "redis"\nredis_prefix = "{prefix}"\n'
                f'[templates]\npath = "{os.path.join(REPO, "templates")}"\n'
                f'[smtp]\nhelo_name = "volley.load"\nmax_connections_per_site = {cap}\n'
                f'[relay]\nhost = "127.0.0.1:{sink_port}"\ntls = "none"\n'
                f"[cluster]\nshared_limits = {'true' if mode_shared else 'false'}\n{limits}"
            )
        log = open(os.path.join(work, f"{prefix}-{i}.log"), "w")
        p = subprocess.Popen(
            [os.path.join(BIN, "volley"), "serve", "--config", conf],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        workers.append((p, api))
    try:
        for _, api in workers:
            for _ in range(100):
                try:
                    if http("GET", f"http://{api}/healthz")[0] == 200:
                        break
                except OSError:
                    time.sleep(0.1)
        per = args.messages // args.workers
        campaigns = [
            {
                "template": "welcome",
                "from": "news@example.com",
                "recipients": [
                    {"to": f"u{w}-{i}@example.org", "vars": {"name": "N"}} for i in range(per)
                ],
            }
            for w in range(len(workers))
        ]
        total = per * len(workers)
        cpu0 = sum(cpu_seconds(p.pid) for p, _ in workers)
        r0 = redis_cpu()
        t0 = time.monotonic()
        for (_, api), body in zip(workers, campaigns):
            status, answer = http("POST", f"http://{api}/v1/campaigns", body)
            assert status == 202, answer
        done = 0
        while time.monotonic() - t0 < TIMEOUT:
            done = sum(delivered(api) for _, api in workers)
            if done >= total:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        cpu = sum(cpu_seconds(p.pid) for p, _ in workers) - cpu0
        rcpu = redis_cpu() - r0
        return {
            "shared_limits": mode_shared,
            "messages": total,
            "delivered": done,
            "messages_per_s": round(total / elapsed),
            "volley_cpu_s_per_10k": round(cpu / total * 10000, 3),
            "redis_cpu_s": round(rcpu, 2),
        }
    finally:
        for p, _ in workers:
            p.terminate()
        for p, _ in workers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        names = redis("--scan", "--pattern", f"{{{prefix}}}:*").split()
        for i in range(0, len(names), 500):
            redis("DEL", *names[i : i + 500])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--rate", type=int, default=0, help="[limits] global per second; 0 unlimited")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--cap", type=int, default=12, help="connections to the sink, all workers")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="volley-cost-")
    sink_port = free_port()
    sink = subprocess.Popen(
        [os.path.join(BIN, "volley-sink"), "--listen", f"127.0.0.1:{sink_port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        # The first run after start pays for cold caches (binaries paged in, the sink's
        # first connections): one small run, not counted; then the order alternates.
        warm = argparse.Namespace(**{**vars(args), "messages": max(args.workers, args.messages // 10)})
        run(True, warm, sink_port, work)
        results = []
        for i in range(args.rounds):
            for shared in (True, False) if i % 2 == 0 else (False, True):
                r = run(shared, args, sink_port, work)
                print(json.dumps(r), flush=True)
                results.append(r)
        on = [r["messages_per_s"] for r in results if r["shared_limits"]]
        off = [r["messages_per_s"] for r in results if not r["shared_limits"]]
        print(json.dumps({"ratio_shared_to_local": round(sum(on) / sum(off), 3)}))
    finally:
        sink.terminate()
        sink.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
