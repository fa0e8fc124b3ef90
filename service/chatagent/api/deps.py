"""FastAPI dependencies: services, bearer auth, per-key rate limiting."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from ..graph import Services
from ..redis_conn import limits_storage
from ..settings import Settings

log = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, description="API key from CHATAGENT_API_KEYS")

SESSION_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
_SESSION_RE = re.compile(SESSION_ID_PATTERN)


# async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
# request (7 % of a cached chat turn's CPU) for an attribute read.
async def get_services(request: Request) -> Services:
    return request.app.state.services


class RateLimiter:
    """`limits` moving window, in Redis when configured so every Gunicorn worker shares the counters."""

    def __init__(self, spec: str, settings: Settings, prefix: str) -> None:
        self.item: RateLimitItem = parse(spec)
        self.prefix = prefix
        storage = limits_storage(settings)
        if storage is not None:
            uri, options = storage
            self.storage: Storage = storage_from_string(
                uri, implementation="redispy", key_prefix=f"{prefix}:ratelimit", **options,
            )
        else:
            self.storage = MemoryStorage()
        self.strategy = MovingWindowRateLimiter(self.storage)

    async def hit(self, identity: str) -> float | None:
        """None when allowed, else seconds until the next request would be allowed."""
        if await self.strategy.hit(self.item, identity):
            return None
        stats = await self.strategy.get_window_stats(self.item, identity)
        return max(1.0, stats.reset_time - time.time())


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=401, detail=detail,
        headers={"WWW-Authenticate": 'Bearer realm="chatagent"'},
    )


async def authenticate(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    services: Services = Depends(get_services),
) -> str | None:
    """Returns an opaque identity for the key (None when auth is off)."""
    keys = services.settings.api_keys
    if not keys:
        return None
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        services.metrics.auth_failures.inc()
        raise _unauthorized("missing bearer API key")
    presented = credentials.credentials.encode("utf-8", "surrogateescape")
    matched = False
    # Compare against every key so timing does not reveal which key (or how many) exist.
    for key in keys:
        matched |= hmac.compare_digest(presented, key.get_secret_value().encode("utf-8"))
    if not matched:
        services.metrics.auth_failures.inc()
        raise _unauthorized("invalid API key")
    return "key:" + hashlib.sha256(presented).hexdigest()[:16]


async def guard(
    request: Request,
    identity: str | None = Depends(authenticate),
    services: Services = Depends(get_services),
) -> str | None:
    limiter: RateLimiter | None = request.app.state.limiter
    if limiter is None:
        return identity
    who = identity or "ip:" + (request.client.host if request.client else "unknown")
    try:
        retry_after = await limiter.hit(who)
    except Exception as exc:  # Redis trouble: fail open rather than refuse every customer
        log.warning("rate limiter unavailable, allowing request: %s", exc)
        return identity
    if retry_after is not None:
        services.metrics.rate_limited.inc()
        raise HTTPException(
            status_code=429, detail="rate limit exceeded",
            headers={"Retry-After": str(int(math.ceil(retry_after)))},
        )
    return identity


def valid_session_id(value: str) -> bool:
    return bool(_SESSION_RE.match(value))


def clean_text(value: Any) -> Any:
    """Drop what no layer below can store or embed: NULs and lone surrogates from JSON escapes."""
    if isinstance(value, str):
        return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return value
