"""Query embeddings: turns that arrive together share one model call, and get the vectors they
would have got alone."""

from __future__ import annotations

import asyncio

import numpy as np

from chatagent.knowledge import HashEmbedder, QueryEncoder


class CountingEmbedder(HashEmbedder):
    def __init__(self) -> None:
        super().__init__(64)
        self.calls: list[int] = []

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return super().embed_queries(texts)


def test_concurrent_queries_are_embedded_together_and_identically() -> None:
    texts = [f"how long does delivery take to city {i}" for i in range(10)]
    embedder = CountingEmbedder()
    encoder = QueryEncoder(embedder, max_batch=4)

    async def scenario() -> list[np.ndarray]:
        return await asyncio.gather(*(encoder.encode(t) for t in texts))

    vectors = asyncio.run(scenario())
    alone = HashEmbedder(64).embed_queries(texts)
    assert np.array_equal(np.vstack(vectors), alone)
    assert sum(embedder.calls) == len(texts)
    assert max(embedder.calls) <= 4 and len(embedder.calls) < len(texts)


def test_a_lone_query_is_embedded_at_once_and_cached() -> None:
    embedder = CountingEmbedder()
    encoder = QueryEncoder(embedder)
    first = asyncio.run(encoder.encode("where is my parcel"))
    again = asyncio.run(encoder.encode("where is my parcel"))
    assert embedder.calls == [1]
    assert np.array_equal(first, again)
