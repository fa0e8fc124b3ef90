"""Session history: Redis holds the recent turns of a live session, MySQL the whole conversation.

Every read of a session goes through `SessionRepository.read` ("Redis, else MySQL"); every write goes
to Redis and to MySQL, or to the pending queue while MySQL is down, so no turn is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from .knowledge import CacheWrite
from .memory import Memory
from .metrics import Metrics
from .store import MySQLStore, PendingQueue, SessionDelete, TurnWrite, WriteOp

log = logging.getLogger(__name__)

Stored = Literal["mysql", "pending", "none"]


class SessionsUnavailable(RuntimeError):
    """Neither Redis nor MySQL could say whether the session exists."""


class GroupCommit:
    """Concurrent writes of one worker share one MySQL transaction: while a batch is being written,
    the next one gathers, so under load a commit (and its log flush) serves many turns, and a lone
    write goes out at once."""

    def __init__(self, store: MySQLStore, max_batch: int = 64) -> None:
        self.store = store
        self.max_batch = max_batch
        self._waiting: list[tuple[WriteOp, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, op: WriteOp) -> None:
        """Returns once `op` is committed; raises what the batch's transaction raised."""
        done = asyncio.get_running_loop().create_future()
        done.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if the caller left
        self._waiting.append((op, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        # shield: a caller that goes away (client disconnect) must not cancel the write itself
        await asyncio.shield(done)

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            try:
                await asyncio.to_thread(self.store.apply, *[op for op, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)


@dataclass
class SessionRepository:
    memory: Memory
    store: MySQLStore | None
    pending: PendingQueue
    metrics: Metrics

    def __post_init__(self) -> None:
        self._mysql = GroupCommit(self.store) if self.store is not None else None

    async def read(self, session_id: str, limit: int) -> list[dict[str, Any]] | None:
        """The last `limit` messages, oldest first; None when no backend knows the session.

        Raises SessionsUnavailable when the answer depends on a backend that is down.
        """
        memory_down = False
        try:
            messages = await self.memory.history(session_id)
            if messages:
                return messages[-limit:]
        except Exception as exc:
            log.warning("session memory unavailable: %s", exc)
            memory_down = True
        if self.store is None:
            if memory_down:
                raise SessionsUnavailable(session_id)
            return None
        # Redis forgets after its TTL (or lost the data); MySQL keeps the full conversation.
        try:
            rows = await asyncio.to_thread(self.store.history, session_id, limit)
        except Exception as exc:
            raise SessionsUnavailable(session_id) from exc
        if rows is None and memory_down:
            # MySQL may not have it yet (a write queued during an outage) while Redis cannot answer.
            raise SessionsUnavailable(session_id)
        return rows

    async def add_turn(self, turn: TurnWrite, record: str, cache: CacheWrite | None = None) -> tuple[bool, Stored]:
        """Append both messages to the session memory together with the turn's record (see turns.py)
        and `cache` (the turn's new embedding, memory.py), then store the turn in MySQL. Returns
        (kept in memory, where MySQL's copy went)."""
        remembered = False
        try:
            await self.memory.append(turn.session_id, turn.messages, turn.request_id, record, cache)
            remembered = True
        except Exception as exc:
            log.error("session memory write failed: %s", exc)
        return remembered, await self.save(turn)

    async def delete(self, session_id: str) -> bool:
        """Forget the session everywhere; False when no backend had it."""
        deleted = False
        try:
            deleted = await self.memory.delete(session_id)
        except Exception as exc:
            log.warning("session memory unavailable for delete: %s", exc)
        if self.store is not None:
            try:
                in_mysql = await asyncio.to_thread(self.store.history, session_id, 1) is not None
            except Exception:
                in_mysql = True  # cannot tell: queue the delete so it happens when MySQL is back
            if in_mysql:
                await self.save(SessionDelete(session_id=session_id, ts=time.time()))
                deleted = True
        return deleted

    async def save(self, op: WriteOp) -> Stored:
        """Write to MySQL now, or queue it for the flusher; returns where it went."""
        if self._mysql is None:
            return "none"
        try:
            await self._mysql.write(op)
            return "mysql"
        except Exception as exc:
            log.error("MySQL write failed, queued for replay: %s", exc)
            self.metrics.pending_writes.labels(kind=op.kind).inc()
            await self.pending.push(op)
            return "pending"
