"""The live knowledge base of a running service, swapped for a new version when `current` moves."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from .build import resolve_kb_dir
from .embedders import Embedder
from .errors import KBError
from .index import KnowledgeBase

log = logging.getLogger(__name__)


class KnowledgeStore:
    """Holds the live KnowledgeBase and swaps in a new version when `current` moves (checked at most every N s)."""

    def __init__(self, kb_dir: Path, embedder: Embedder, interval: float = 5.0, metrics: Any | None = None) -> None:
        self.kb_dir = kb_dir
        self.embedder = embedder
        self.interval = interval
        self.metrics = metrics
        self.kb: KnowledgeBase | None = None
        self.error: str | None = None
        self._stamp: tuple[str, int] | None = None
        self._checked = 0.0
        self._lock = asyncio.Lock()

    def _current_stamp(self) -> tuple[str, int] | None:
        path = resolve_kb_dir(self.kb_dir)
        try:
            return str(path), (path / "manifest.json").stat().st_mtime_ns
        except OSError:
            return None

    def load_now(self) -> None:
        stamp = self._current_stamp()
        self._checked = time.monotonic()
        if stamp is None:
            self.error = f"no knowledge base at {self.kb_dir} (run `chatagent kb build SRC --out {self.kb_dir}`)"
            self._stamp = None
            return
        if stamp == self._stamp:
            return
        try:
            kb = KnowledgeBase.load(self.kb_dir, self.embedder)
        except (KBError, OSError, ValueError, RuntimeError) as exc:
            # Keep serving the previous version; /ready reports the refusal.
            self.error = str(exc)
            self._stamp = stamp
            log.error("knowledge base refused: %s", exc)
            if self.metrics is not None:
                self.metrics.kb_reloads.labels(result="refused").inc()
            return
        self.kb, self._stamp, self.error = kb, stamp, None
        log.info("knowledge base loaded: version=%s chunks=%s", kb.version, kb.manifest.get("count"))
        if self.metrics is not None:
            self.metrics.kb_reloads.labels(result="loaded").inc()
            self.metrics.kb_chunks.set(kb.count)

    async def maybe_reload(self) -> None:
        if time.monotonic() - self._checked < self.interval:
            return
        async with self._lock:
            if time.monotonic() - self._checked < self.interval:
                return
            await asyncio.to_thread(self.load_now)
