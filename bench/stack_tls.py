#!/usr/bin/env python3
"""Chat throughput through nginx over TLS vs the same request straight to Gunicorn's socket.

Runs a small load generator *on the stack host* (over SSH, as root, so it can read the API key
from /etc/chatagent/chatagent.env and reach /run/chatagent/gunicorn.sock) and prints requests/s and
latency percentiles for both paths.

    .venv/bin/python bench/stack_tls.py [--host 10.213.0.61] [--requests 200] [--concurrency 4]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REMOTE = r'''
import http.client, json, socket, ssl, statistics, sys, threading, time
N, C, SERVER_NAME = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
env = dict(l.split("=", 1) for l in open("/etc/chatagent/chatagent.env").read().splitlines() if "=" in l and not l.startswith("#"))
key = env["CHATAGENT_API_KEYS"].split(",")[0]
body = json.dumps({"message": "How long does delivery take?"})
headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json", "Host": SERVER_NAME}

class UnixConn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

def make(kind):
    if kind == "tls":
        ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, timeout=60)
    return UnixConn(env.get("CHATAGENT_BIND", "unix:/run/chatagent/gunicorn.sock")[5:])

def run(kind):
    lat, errors, limited, lock, todo = [], [0], [0], threading.Lock(), [N]
    def worker():
        conn = make(kind)
        while True:
            with lock:
                if todo[0] == 0: return
                todo[0] -= 1
            t = time.perf_counter()
            try:
                conn.request("POST", "/api/v1/chat", body, headers); r = conn.getresponse(); r.read()
                ok = r.status == 200
                if r.status == 429:
                    limited[0] += 1
            except Exception:
                ok = False; conn.close(); conn = make(kind)
            with lock:
                (lat.append(time.perf_counter() - t) if ok else None)
                errors[0] += 0 if ok else 1
    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(C)]
    [t.start() for t in threads]; [t.join() for t in threads]
    wall = time.perf_counter() - start
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
    print(json.dumps({"path": kind, "requests": N, "ok": len(lat), "errors": errors[0], "rate_limited_429": limited[0], "rps": round(len(lat) / wall, 1),
                      "p50_ms": round(pct(0.5), 1), "p95_ms": round(pct(0.95), 1), "p99_ms": round(pct(0.99), 1)}))

try:
    socket.create_connection(("127.0.0.1", 443), timeout=2).close()
    kinds = ("gunicorn", "tls", "gunicorn", "tls")
except OSError:
    print(json.dumps({"note": "nothing listens on 443 (nginx not deployed): direct Gunicorn only"}))
    kinds = ("gunicorn", "gunicorn")
for kind in kinds:
    run(kind)
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="10.213.0.61")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--server-name", default="localhost", help="Host header / nginx server_name")
    args = parser.parse_args()
    key = subprocess.run([sys.executable, str(ROOT / "scripts" / "testhost"), "key"], check=True,
                         capture_output=True, text=True).stdout.strip()
    proc = subprocess.run(
        ["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
         f"root@{args.host}", "python3", "-", str(args.requests), str(args.concurrency), args.server_name],
        input=REMOTE, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    import json
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for note in [row.pop("note") for row in rows if "note" in row]:
        print(note)
    rows = [row for row in rows if row]
    # The first round of each path warms up caches (embedding cache in Redis, TLS sessions); report the second.
    final = {row["path"]: row for row in rows}
    for row in rows:
        print(f"{row['path']:9s} ok={row['ok']}/{row['requests']} errors={row['errors']} (429: {row['rate_limited_429']}) {row['rps']:7.1f} req/s  "
              f"p50={row['p50_ms']} ms p95={row['p95_ms']} ms p99={row['p99_ms']} ms")
    if "tls" in final and "gunicorn" in final and final["gunicorn"]["rps"]:
        print(f"nginx+TLS / direct gunicorn throughput: {final['tls']['rps'] / final['gunicorn']['rps']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
