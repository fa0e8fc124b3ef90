"""Query embeddings with a cache: Redis when configured (shared by workers), else an in-process LRU."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .embedders import Embedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheLookup:
    """The shared cache's value for a text's key, read ahead (with the turn's claim, graph.begin_turn)."""

    raw: bytes | None


class QueryEncoder:
    """Query embeddings with a cache: Redis when configured (shared by workers), else an in-process LRU."""

    def __init__(self, embedder: Embedder, redis: Any | None = None, prefix: str = "chatagent",
                 size: int = 2048, ttl: int = 86400, metrics: Any | None = None) -> None:
        self.embedder = embedder
        self.redis = redis
        self.prefix = prefix
        self.size = size
        self.ttl = ttl
        self.metrics = metrics
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()

    def cache_key(self, text: str) -> str:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
        return f"{self.prefix}:emb:{self.embedder.kind}:{self.embedder.model}:{self.embedder.dim}:{digest}"

    def shared_key(self, text: str) -> str | None:
        """The key to read ahead for `text`, when the cache is shared (Redis)."""
        return self.cache_key(text) if self.redis is not None else None

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.embedding_cache.labels(result=result).inc()

    async def encode(self, text: str, lookup: CacheLookup | None = None) -> np.ndarray:
        """`lookup`: the cache was already read for `text` (Redis only)."""
        key = self.cache_key(text)
        if self.redis is not None:
            try:
                raw = lookup.raw if lookup is not None else await self.redis.get(key)
                if raw is not None and len(raw) == 4 * self.embedder.dim:
                    self._count("hit")
                    return np.frombuffer(raw, dtype=np.float32).copy()
            except Exception as exc:  # cache trouble must never fail a chat turn
                log.warning("embedding cache read failed: %s", exc)
        elif key in self._lru:
            self._lru.move_to_end(key)
            self._count("hit")
            return self._lru[key]
        self._count("miss")
        vector = (await asyncio.to_thread(self.embedder.embed_queries, [text]))[0]
        if self.redis is not None:
            try:
                await self.redis.set(key, vector.astype(np.float32).tobytes(), ex=self.ttl)
            except Exception as exc:
                log.warning("embedding cache write failed: %s", exc)
        else:
            self._lru[key] = vector
            while len(self._lru) > self.size:
                self._lru.popitem(last=False)
        return vector


