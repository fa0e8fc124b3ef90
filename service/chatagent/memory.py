"""Session memory: a per-session message list in Redis (trimmed, with TTL), or in-process without Redis."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any, Protocol


class Memory(Protocol):
    async def history(self, session_id: str) -> list[dict[str, Any]]: ...

    async def append(self, session_id: str, messages: list[dict[str, Any]]) -> None: ...

    async def exists(self, session_id: str) -> bool: ...

    async def delete(self, session_id: str) -> bool: ...

    async def remember_request(self, request_id: str, session_id: str) -> None: ...

    async def request_session(self, request_id: str) -> str | None: ...

    async def ping(self) -> None: ...


class RedisMemory:
    def __init__(self, redis: Any, prefix: str, max_turns: int, ttl: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_messages = max_turns * 2  # a turn is the user message plus the answer
        self.ttl = ttl

    def key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.key(session_id), 0, -1)
        return [json.loads(item) for item in raw]

    async def append(self, session_id: str, messages: list[dict[str, Any]]) -> None:
        key = self.key(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *[json.dumps(m, ensure_ascii=False) for m in messages])
            pipe.ltrim(key, -self.max_messages, -1)
            pipe.expire(key, self.ttl)
            await pipe.execute()

    async def exists(self, session_id: str) -> bool:
        return bool(await self.redis.exists(self.key(session_id)))

    async def delete(self, session_id: str) -> bool:
        return bool(await self.redis.delete(self.key(session_id)))

    async def remember_request(self, request_id: str, session_id: str) -> None:
        await self.redis.set(f"{self.prefix}:request:{request_id}", session_id, ex=self.ttl)

    async def request_session(self, request_id: str) -> str | None:
        value = await self.redis.get(f"{self.prefix}:request:{request_id}")
        return value.decode() if isinstance(value, bytes) else value

    async def ping(self) -> None:
        await self.redis.ping()


class InProcessMemory:
    """Development fallback: lives and dies with one worker process, so not for multi-worker deployments."""

    def __init__(self, max_turns: int, ttl: int, max_sessions: int = 10000) -> None:
        self.max_messages = max_turns * 2
        self.ttl = ttl
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, tuple[float, list[dict[str, Any]]]] = OrderedDict()
        self._requests: OrderedDict[str, str] = OrderedDict()

    def _live(self, session_id: str) -> list[dict[str, Any]] | None:
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._sessions[session_id]
            return None
        return entry[1]

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        return list(self._live(session_id) or [])

    async def append(self, session_id: str, messages: list[dict[str, Any]]) -> None:
        items = (self._live(session_id) or []) + messages
        self._sessions[session_id] = (time.monotonic() + self.ttl, items[-self.max_messages :])
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    async def exists(self, session_id: str) -> bool:
        return self._live(session_id) is not None

    async def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    async def remember_request(self, request_id: str, session_id: str) -> None:
        self._requests[request_id] = session_id
        while len(self._requests) > self.max_sessions * 4:
            self._requests.popitem(last=False)

    async def request_session(self, request_id: str) -> str | None:
        return self._requests.get(request_id)

    async def ping(self) -> None:
        return None
