"""Session memory: a per-session message list in Redis (trimmed, with TTL), or in-process without Redis,
and the per-request-id turn records that make a retried turn replay instead of running twice."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import NoScriptError

from .store import StoredMessage

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from .knowledge import CacheWrite


@dataclass(frozen=True)
class RateCheck:
    """One hit on a moving-window rate limit, taken with the turn's opening (one Redis call)."""

    key: str  # the counter's full Redis key (the one `limits` uses for the same limit and subject)
    limit: int
    expiry: int  # window, seconds


# limits' own moving-window script, as a function of its KEYS and ARGV: a hit folded into the turn's
# opening counts on the same list, by the same rule, as a hit through `limits` on the other routes.
_ACQUIRE_MOVING_WINDOW = (
    "local function acquire_moving_window(KEYS, ARGV)\n"
    + (resources.files("limits") / "resources" / "redis" / "lua_scripts" / "acquire_moving_window.lua").read_text()
    + "\nend\n"
)

# KEYS: the request id's record, the session's list, the prefetched cache key, the rate counter;
# the record's key again for each one not asked: Redis checks every KEYS entry against the app user's
# ACL key patterns (redis_app_key_patterns), which a placeholder in the app's own key space passes
# and "" may not. ARGV: our pending claim, its lease (ms), now, rate limit, window (s).
# Replies {allowed, the record when the claim is someone else's, the history, the cached value};
# refused by the rate limit, {false} and nothing else is touched, the claim included.
_OPEN_TURN = _ACQUIRE_MOVING_WINDOW + """
if KEYS[4] ~= KEYS[1] and not acquire_moving_window({KEYS[4]}, {ARGV[3], ARGV[4], ARGV[5], 1}) then
    return {false}
end
local current = false
if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    current = redis.call('get', KEYS[1])
end
local history = {}
if KEYS[2] ~= KEYS[1] then
    history = redis.call('lrange', KEYS[2], 0, -1)
end
local cached = false
if KEYS[3] ~= KEYS[1] then
    cached = redis.call('get', KEYS[3])
end
return {1, current, history, cached}
"""

# KEYS: the session's list, the request id's record, the turn's new cache entry (the record's key
# again when there is none, see _OPEN_TURN). ARGV: messages kept, TTL (s), the record, the cache
# entry's TTL (s) and value, the messages. A script is atomic like MULTI/EXEC, with one command and
# reply instead of six; the cache entry rides along instead of costing a round trip of its own.
_APPEND = """
redis.call('rpush', KEYS[1], unpack(ARGV, 6))
redis.call('ltrim', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('expire', KEYS[1], ARGV[2])
redis.call('set', KEYS[2], ARGV[3], 'EX', ARGV[2])
if KEYS[3] ~= KEYS[2] then
    redis.call('set', KEYS[3], ARGV[5], 'EX', ARGV[4])
end
return 1
"""


@dataclass(frozen=True)
class TurnOpening:
    """What a turn reads from session memory before it runs, fetched together (one Redis round trip)."""

    # The request id's record when the claim was not ours (None: we hold the claim now).
    existing: str | None
    # The session's messages, oldest first, when a session was named ([] when memory has none).
    history: list[dict[str, Any]] | None = None
    # The value under the prefetched cache key (the query embedding), when one was asked for.
    cached: bytes | None = None
    # The rate-limit check refused the turn (nothing else in the opening counts then).
    limited: bool = False


class Memory(Protocol):
    async def history(self, session_id: str) -> list[dict[str, Any]]: ...

    async def append(self, session_id: str, messages: list[StoredMessage], request_id: str, record: str,
                     cache: CacheWrite | None = None) -> None:
        """Append to the history and store the turn's record under its request id, atomically; and
        `cache`, the turn's new entry for the shared embedding cache (only memory that is that cache,
        Redis, is given one)."""

    async def exists(self, session_id: str) -> bool: ...

    async def delete(self, session_id: str) -> bool: ...

    async def claim_turn(self, request_id: str, pending: str, lease: float) -> str | None:
        """Store `pending` for `lease` seconds unless a record exists; returns the existing record."""

    async def open_turn(self, request_id: str, pending: str, lease: float, session_id: str | None,
                        prefetch: str | None, rate: RateCheck | None = None) -> TurnOpening:
        """`claim_turn`, plus the session's history, the value under the `prefetch` key and a hit on
        the `rate` limit. Only memory that holds the rate counters (Redis) is given a `rate`."""

    async def renew_turn(self, request_id: str, pending: str, lease: float) -> bool:
        """Extend our claim; False when the request id no longer holds `pending`."""

    async def release_turn(self, request_id: str, pending: str) -> None: ...

    async def turn_record(self, request_id: str) -> str | None: ...

    async def ping(self) -> None: ...


# Compare-and-act on a claim: only the holder of `pending` may extend or drop it.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisMemory:
    def __init__(self, redis: Any, prefix: str, max_turns: int, ttl: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.max_messages = max_turns * 2  # a turn is the user message plus the answer
        self.ttl = ttl
        self._open = redis.register_script(_OPEN_TURN)
        self._append = redis.register_script(_APPEND)

    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA straight through the client: redis-py's Script call and its `evalsha` wrappers
        (argument deprecation checks) were 1.5 % of a cached turn's CPU. After a NOSCRIPT (a Redis
        restart) the Script call loads the script again."""
        try:
            return await self.redis.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await script(keys=keys, args=args)

    def key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.key(session_id), 0, -1)
        return [json.loads(item) for item in raw]

    def turn_key(self, request_id: str) -> str:
        return f"{self.prefix}:turn:{request_id}"

    async def append(self, session_id: str, messages: list[StoredMessage], request_id: str, record: str,
                     cache: CacheWrite | None = None) -> None:
        record_key = self.turn_key(request_id)
        await self._call(self._append, [self.key(session_id), record_key, cache.key if cache else record_key],
                         [self.max_messages, self.ttl, record, cache.ttl if cache else 0, cache.value if cache else b"",
                          *[m.model_dump_json(exclude_none=True) for m in messages]])

    async def exists(self, session_id: str) -> bool:
        return bool(await self.redis.exists(self.key(session_id)))

    async def delete(self, session_id: str) -> bool:
        return bool(await self.redis.delete(self.key(session_id)))

    async def claim_turn(self, request_id: str, pending: str, lease: float) -> str | None:
        key = self.turn_key(request_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, pending, nx=True, px=int(lease * 1000))
            pipe.get(key)
            claimed, current = await pipe.execute()
        if claimed:
            return None
        if current is None:  # the other claim expired between SET and GET: try again
            return await self.claim_turn(request_id, pending, lease)
        return current.decode() if isinstance(current, bytes) else current

    async def open_turn(self, request_id: str, pending: str, lease: float, session_id: str | None,
                        prefetch: str | None, rate: RateCheck | None = None) -> TurnOpening:
        # Each round trip costs a cached turn ~8 % of its CPU (socket write, wake-up, parse): the
        # rate limit, the claim, the history and the embedding are one script call instead of four
        # round trips (or one pipeline of five commands and replies to pack and parse).
        record = self.turn_key(request_id)
        reply = await self._call(
            self._open,
            [record, self.key(session_id) if session_id is not None else record, prefetch or record,
             rate.key if rate is not None else record],
            [pending, int(lease * 1000), time.time(), rate.limit if rate else 0, rate.expiry if rate else 0],
        )
        if not reply[0]:
            return TurnOpening(None, limited=True)
        _, current, history, cached = reply  # Lua's false arrives as None (RESP2) or False (RESP3)
        return TurnOpening(
            current.decode() if isinstance(current, bytes) else None,
            [json.loads(item) for item in history] if session_id is not None else None,
            (cached or None) if prefetch is not None else None,
        )

    async def renew_turn(self, request_id: str, pending: str, lease: float) -> bool:
        return bool(await self.redis.eval(_RENEW, 1, self.turn_key(request_id), pending, int(lease * 1000)))

    async def release_turn(self, request_id: str, pending: str) -> None:
        await self.redis.eval(_RELEASE, 1, self.turn_key(request_id), pending)

    async def turn_record(self, request_id: str) -> str | None:
        value = await self.redis.get(self.turn_key(request_id))
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
        self._turns: OrderedDict[str, tuple[float, str]] = OrderedDict()

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

    async def append(self, session_id: str, messages: list[StoredMessage], request_id: str, record: str,
                     cache: CacheWrite | None = None) -> None:
        if cache is not None:
            # Without Redis the query encoder keeps its own LRU and never hands a write on.
            raise ValueError("in-process memory holds no shared embedding cache")
        items = (self._live(session_id) or []) + [m.model_dump(exclude_none=True) for m in messages]
        self._sessions[session_id] = (time.monotonic() + self.ttl, items[-self.max_messages :])
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        self._set_turn(request_id, record, self.ttl)

    def _set_turn(self, request_id: str, value: str, ttl: float) -> None:
        self._turns[request_id] = (time.monotonic() + ttl, value)
        self._turns.move_to_end(request_id)
        while len(self._turns) > self.max_sessions * 4:
            self._turns.popitem(last=False)

    async def exists(self, session_id: str) -> bool:
        return self._live(session_id) is not None

    async def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    async def turn_record(self, request_id: str) -> str | None:
        entry = self._turns.get(request_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    async def claim_turn(self, request_id: str, pending: str, lease: float) -> str | None:
        current = await self.turn_record(request_id)
        if current is None:
            self._set_turn(request_id, pending, lease)
        return current

    async def open_turn(self, request_id: str, pending: str, lease: float, session_id: str | None,
                        prefetch: str | None, rate: RateCheck | None = None) -> TurnOpening:
        # No shared cache lives here: the query encoder keeps its own LRU without Redis; nor rate
        # counters (without Redis the limiter keeps them in the worker and is asked directly).
        if rate is not None:
            raise ValueError("in-process memory holds no rate-limit counters")
        existing = await self.claim_turn(request_id, pending, lease)
        return TurnOpening(existing, await self.history(session_id) if session_id is not None else None)

    async def renew_turn(self, request_id: str, pending: str, lease: float) -> bool:
        if await self.turn_record(request_id) != pending:
            return False
        self._set_turn(request_id, pending, lease)
        return True

    async def release_turn(self, request_id: str, pending: str) -> None:
        if await self.turn_record(request_id) == pending:
            del self._turns[request_id]

    async def ping(self) -> None:
        return None
