"""Redis clients: a plain URL, or the primary that Redis Sentinel names (issue 12).

Through Sentinel, redis-py's `master_for` asks the sentinels for the primary's address whenever it
opens a connection, and drops a connection that finds a demoted primary (READONLY); the app therefore
follows a failover without a restart. Everything the app keeps in Redis (sessions, turn claims, the
pending queue, the embedding cache, rate limits) goes through the clients made here."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from .settings import Settings

TIMEOUTS: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2}


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def make_redis(settings: Settings) -> aioredis.Redis | None:
    """The app's Redis client; None when no Redis is configured."""
    if settings.redis_sentinels:
        sentinel = Sentinel(
            settings.sentinel_addresses(),
            sentinel_kwargs={"username": settings.redis_sentinel_username,
                             "password": _secret(settings.redis_sentinel_password), **TIMEOUTS},
            **TIMEOUTS,
        )
        return sentinel.master_for(
            settings.redis_sentinel_service, username=settings.redis_username,
            password=_secret(settings.redis_password), db=settings.redis_db, health_check_interval=15,
            # A PING on every new connection: one that lands on a node no longer primary fails there.
            check_connection=True,
        )
    if settings.redis_url:
        return aioredis.from_url(settings.redis_url, health_check_interval=15, **TIMEOUTS)
    return None


def limits_storage(settings: Settings) -> tuple[str, dict[str, Any]] | None:
    """URI and options for a `limits` storage that shares the app's Redis (None: in-memory)."""
    if settings.redis_sentinels:
        auth = ""
        if settings.redis_username or settings.redis_password:
            auth = (quote(settings.redis_username or "", safe="") + ":"
                    + quote(_secret(settings.redis_password) or "", safe="") + "@")
        uri = f"async+redis+sentinel://{auth}{','.join(settings.redis_sentinels)}/{settings.redis_sentinel_service}"
        return uri, {
            "use_replicas": False, "db": settings.redis_db, **TIMEOUTS,
            "sentinel_kwargs": {"username": settings.redis_sentinel_username,
                                "password": _secret(settings.redis_sentinel_password), **TIMEOUTS},
        }
    if settings.redis_url:
        scheme, rest = settings.redis_url.split("://", 1)
        uri = {"redis": "async+redis", "rediss": "async+rediss", "unix": "async+redis+unix"}.get(scheme, scheme)
        return f"{uri}://{rest}", dict(TIMEOUTS)
    return None
