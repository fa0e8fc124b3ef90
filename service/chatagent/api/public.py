"""Public web chat: anonymous browser sessions without an API key, for the /chat/ page and the widget.

Only this router is public. Each browser session gets a signed, expiring token bound to one session
id; requests must come from a listed Origin (CORS for the widget on a shop's site, same-origin for
the page); per-session and per-address rate limits live in Redis so every worker and app host
shares them. The bearer-key API (/api/v1, /v1) is unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ..graph import Services, begin_turn
from ..public_tokens import PublicTokens, TokenError
from ..settings import Settings
from . import sessions
from .chat import checked_message, stream_turn
from .deps import SESSION_ID_PATTERN, RateLimiter, clean_text, get_services

log = logging.getLogger(__name__)

PREFIX = "/api/public/v1"
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")

bearer = HTTPBearer(auto_error=False, description="Public session token from POST /api/public/v1/sessions")


@dataclass
class PublicSessions:
    """Per-app state of the public chat, built in the lifespan."""

    tokens: PublicTokens
    per_session: RateLimiter
    per_address: RateLimiter


def build_state(settings: Settings) -> PublicSessions:
    assert settings.public_token_secret is not None  # Settings refuses public mode without one
    return PublicSessions(
        tokens=PublicTokens(settings.public_token_secret.get_secret_value(), settings.public_token_ttl_seconds),
        per_session=RateLimiter(settings.public_rate_limit_session, settings,
                                f"{settings.redis_prefix}:public:session"),
        per_address=RateLimiter(settings.public_rate_limit_address, settings,
                                f"{settings.redis_prefix}:public:address"),
    )


class OriginGuard:
    """CORS for the listed origins on the public prefix only, and a refusal of any other Origin.

    CORS alone only stops a browser from reading the answer; the request would still be served, so an
    unlisted Origin is refused before it reaches a route. State-changing requests must carry an Origin
    (browsers always send one on POST); same-origin GETs may omit it and still need a token.
    """

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.origins = frozenset(origins)
        self.cors = CORSMiddleware(
            app, allow_origins=list(origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"], max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        origin = dict(scope.get("headers") or []).get(b"origin", b"").decode("latin-1")
        if origin and origin not in self.origins:
            await _refuse(send, 403, "origin not allowed")
            return
        if not origin and scope["method"] not in ("GET", "HEAD"):
            await _refuse(send, 403, "Origin header required")
            return
        await self.cors(scope, receive, send)


async def _refuse(send: Send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def client_address(request: Request) -> str:
    """The browser's address. Over TCP, uvicorn already replaced the peer with X-Forwarded-For when the
    peer is a trusted proxy (CHATAGENT_FORWARDED_ALLOW_IPS). Over the unix socket there is no peer
    address, and only the web server's group can connect, so nginx's X-Real-IP is the client."""
    if request.client and request.client.host:
        return request.client.host
    return request.headers.get("x-real-ip", "unknown")


async def get_public(request: Request) -> PublicSessions:  # async: no thread-pool hop (deps.get_services)
    return request.app.state.public


async def _limit(limiter: RateLimiter, identity: str, what: str, services: Services) -> None:
    try:
        retry_after = await limiter.hit(identity)
    except Exception as exc:  # Redis trouble: fail open like the bearer API; nginx's limit_req still applies
        log.warning("public rate limiter unavailable, allowing request: %s", exc)
        return
    if retry_after is not None:
        services.metrics.rate_limited.inc()
        raise HTTPException(status_code=429, detail=f"rate limit exceeded for this {what}",
                            headers={"Retry-After": str(int(math.ceil(retry_after)))})


async def per_address(request: Request, public: PublicSessions = Depends(get_public),
                      services: Services = Depends(get_services)) -> None:
    await _limit(public.per_address, "ip:" + client_address(request), "address", services)


async def session_of(
    session_id: Annotated[str, Path(pattern=SESSION_ID_PATTERN)],
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    public: PublicSessions = Depends(get_public),
    services: Services = Depends(get_services),
) -> str:
    """The session id of the path, once the token proves this browser holds it."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        services.metrics.auth_failures.inc()
        raise HTTPException(status_code=401, detail="missing session token",
                            headers={"WWW-Authenticate": 'Bearer realm="chatagent-public"'})
    try:
        token = public.tokens.verify(credentials.credentials)
    except TokenError as exc:
        services.metrics.auth_failures.inc()
        raise HTTPException(status_code=401, detail=exc.reason,
                            headers={"WWW-Authenticate": 'Bearer realm="chatagent-public", error="invalid_token"'}
                            ) from exc
    if token.session_id != session_id:
        raise HTTPException(status_code=403, detail="token belongs to another session")
    await _limit(public.per_session, "session:" + session_id, "session", services)
    return session_id


router = APIRouter(prefix=PREFIX, tags=["public"], dependencies=[Depends(per_address)])


class NewSession(BaseModel):
    session_id: str
    token: str
    expires_at: int = Field(description="Unix time after which the token is refused")


class PublicMessage(BaseModel):
    message: Annotated[str, AfterValidator(clean_text)] = Field(min_length=1, max_length=100_000)


@router.post("/sessions", response_model=NewSession, status_code=201)
async def new_session(public: PublicSessions = Depends(get_public)) -> NewSession:
    issued = public.tokens.issue()
    return NewSession(session_id=issued.session_id, token=issued.token, expires_at=issued.expires_at)


@router.get("/sessions/{session_id}", response_model=sessions.SessionHistory)
async def history(session_id: str = Depends(session_of),
                  services: Services = Depends(get_services)) -> sessions.SessionHistory:
    try:
        return await sessions.get_session(session_id, services)
    except HTTPException as exc:
        if exc.status_code != 404:
            raise
        return sessions.SessionHistory(session_id=session_id, messages=[])  # issued, nothing said yet


@router.post(
    "/sessions/{session_id}/stream",
    responses={200: {"content": {"text/event-stream": {}}, "description": "meta, token…, sources, done (or error)"}},
)
async def stream(request: Request, body: PublicMessage, session_id: str = Depends(session_of),
                 services: Services = Depends(get_services)) -> StreamingResponse:
    message = checked_message(body.message, services.settings.max_message_chars)
    turn = await begin_turn(services, message=message, session_id=session_id, request_id=request.state.request_id,
                            identity="public")
    return stream_turn(services, turn, request.state.request_id)


def install(app: FastAPI, settings: Settings) -> None:
    """Adds the public router and its Origin/CORS guard (called only when public mode is on)."""
    bad = [o for o in settings.public_allowed_origins if not _ORIGIN.match(o)]
    if bad:
        raise ValueError(f"CHATAGENT_PUBLIC_ALLOWED_ORIGINS: not scheme://host[:port]: {bad}")
    app.include_router(router)
    app.add_middleware(OriginGuard, origins=settings.public_allowed_origins)
