"""FastAPI dependencies: services, bearer auth, per-key rate limiting."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from ..graph import Services
from ..memory import RateCheck
from ..metrics import Metrics
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
        return await self.retry_after(identity)

    async def retry_after(self, identity: str) -> float:
        stats = await self.strategy.get_window_stats(self.item, identity)
        return max(1.0, stats.reset_time - time.time())

    def check(self, identity: str) -> RateCheck | None:
        """The hit as a chat turn takes it in its opening Redis call: the counter `limits` keeps for
        `identity`, named by the storage itself. None when the counters are in-process."""
        bridge = getattr(self.storage, "bridge", None)  # limits' Redis storages only
        if bridge is None:
            return None
        return RateCheck(key=bridge.prefixed_key(self.item.key_for(identity)),
                         limit=self.item.amount, expiry=self.item.get_expiry())


def too_many(retry_after: float, detail: str = "rate limit exceeded") -> HTTPException:
    return HTTPException(status_code=429, detail=detail, headers={"Retry-After": str(int(math.ceil(retry_after)))})


async def charge(limiter: RateLimiter, who: str, metrics: Metrics) -> HTTPException | None:
    """One hit for `who`: the 429 to answer when refused, None when allowed."""
    try:
        retry_after = await limiter.hit(who)
    except Exception as exc:  # Redis trouble: fail open rather than refuse every customer
        log.warning("rate limiter unavailable, allowing request: %s", exc)
        return None
    if retry_after is None:
        return None
    metrics.rate_limited.inc()
    return too_many(retry_after)


async def refused(limiter: RateLimiter, who: str, metrics: Metrics) -> HTTPException:
    """The 429 for a hit that a turn's opening was refused."""
    metrics.rate_limited.inc()
    try:
        return too_many(await limiter.retry_after(who))
    except Exception as exc:
        log.warning("rate limiter unavailable for Retry-After: %s", exc)
        return too_many(limiter.item.get_expiry())


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
    return identify(credentials, services)


def identify(credentials: HTTPAuthorizationCredentials | None, services: Services) -> str | None:
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


def rate_subject(request: Request, identity: str | None) -> str:
    return identity or "ip:" + (request.client.host if request.client else "unknown")


async def guard(
    request: Request,
    identity: str | None = Depends(authenticate),
    services: Services = Depends(get_services),
) -> str | None:
    limiter: RateLimiter | None = request.app.state.limiter
    if limiter is None:
        return identity
    refusal = await charge(limiter, rate_subject(request, identity), services.metrics)
    if refusal is not None:
        raise refusal
    return identity


@dataclass(frozen=True)
class Caller:
    """An authenticated chat-turn caller, and the rate-limit hit its turn still owes."""

    identity: str | None
    # Taken in the turn's opening Redis call; None when already charged (or no limit).
    rate: RateCheck | None
    subject: str


# The chat-turn routes read the bearer credentials inside `turn_caller` (FastAPI resolves and
# cache-keys every dependency per request); their schema names the same security scheme.
BEARER_SECURITY: dict[str, Any] = {"security": [{bearer.scheme_name: []}]}


async def turn_caller(request: Request) -> Caller:
    """`guard` for the chat-turn routes, one dependency layer: auth now, the rate-limit hit deferred
    to the turn's opening Redis call (one round trip fewer). Until the turn settles it (see
    `settle`), a 422 on the way (body or message) is charged by the validation handler through
    `owed_charge`, so every authenticated request counts, in the same order (429 before 422), as
    with `guard`."""
    services: Services = request.app.state.services
    identity = identify(await bearer(request), services)
    limiter: RateLimiter | None = request.app.state.limiter
    subject = rate_subject(request, identity)
    if limiter is None:
        return Caller(identity, None, subject)
    rate = limiter.check(subject)
    if rate is None:  # in-process counters: no round trip to save
        refusal = await charge(limiter, subject, services.metrics)
        if refusal is not None:
            raise refusal
        return Caller(identity, None, subject)
    request.state.rate_owed = subject
    return Caller(identity, rate, subject)


def settle(request: Request) -> None:
    """The turn takes the hit from here on (its opening Redis call)."""
    request.state.rate_owed = None


async def owed_charge(request: Request) -> HTTPException | None:
    """A request that ends before its turn's opening (a 422) pays its deferred hit here."""
    who = getattr(request.state, "rate_owed", None)
    if who is None:
        return None
    settle(request)
    return await charge(request.app.state.limiter, who, request.app.state.services.metrics)


def valid_session_id(value: str) -> bool:
    return bool(_SESSION_RE.match(value))


def clean_text(value: Any) -> Any:
    """Drop what no layer below can store or embed: NULs and lone surrogates from JSON escapes."""
    if isinstance(value, str):
        return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return value
