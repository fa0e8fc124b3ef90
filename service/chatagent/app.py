"""App factory and lifespan: builds every service once per worker and tears it down on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import logging.handlers
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import faiss
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import chat, health, openai_compat, public, sessions
from .api.deps import RateLimiter, owed_charge
from .graph import Services, UnknownSession, build_flow
from .knowledge import KnowledgeStore, QueryEncoder, build_kb, make_embedder, read_manifest
from .llm import AnswerProvider, ExtractiveProvider, OpenAIProvider
from .masking import Masker, MaskingFilter
from .memory import InProcessMemory, Memory, RedisMemory
from .metrics import Metrics
from .redis_conn import make_redis
from .sessions import SessionRepository
from .settings import Settings
from .store import MySQLStore, PendingQueue
from .turns import RequestIdConflict, TurnInFlight, TurnLedger

log = logging.getLogger("chatagent")
access_log = logging.getLogger("chatagent.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{8,64}$")


# ----------------------------------------------------------------------------------------- logging


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Both handlers (stderr, the log file) share this formatter: one json.dumps per record.
        line = getattr(record, "json_line", None)
        if line is None:
            line = record.json_line = self._format(record)
        return line

    def _format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(settings: Settings) -> None:
    masker = Masker(settings.mask_pii, settings.mask_kinds)
    formatter: logging.Formatter = (
        JsonFormatter() if settings.log_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if settings.log_file:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        # WatchedFileHandler reopens after logrotate moves the file; no copytruncate needed.
        handlers.append(logging.handlers.WatchedFileHandler(settings.log_file, encoding="utf-8"))
    logger = logging.getLogger("chatagent")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(MaskingFilter(masker))
        logger.addHandler(handler)
    logger.setLevel(settings.log_level.upper())
    logger.propagate = False


# -------------------------------------------------------------------------------------- middleware


class RequestContextMiddleware:
    """Request id, Prometheus request metrics, one JSON access-log line per request, and the body
    limit: bodies over `max_bytes` are refused with 413 before any parsing happens (one ASGI layer
    and one pass over the headers for all of it; the 413 is counted and logged like any answer)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, enabled_log: bool, max_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.enabled_log = enabled_log
        self.max_bytes = max_bytes
        # (method, route, status) → its request counter and duration histogram: prometheus_client's
        # labels() validates and locks on every call. Bounded by the routes × methods × statuses seen.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def _read_body(self, declared: bytes | None, receive: Receive, send: Send) -> Receive | None:
        """The whole body, read ahead and handed on by a replaying `receive`; None after a 413."""
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send)
                return None
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _refuse(self, send: Send) -> None:
        payload = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    def _observe(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.metrics.requests.labels(method, route, str(status)),
                                              self.metrics.request_duration.labels(method, route))
        children[0].inc()
        children[1].observe(elapsed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        declared: bytes | None = None
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
            elif name == b"content-length":
                declared = value
        # os.urandom(16).hex() is uuid4().hex's randomness without building a UUID object.
        request_id = incoming if _REQUEST_ID.match(incoming) else os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = list(message.get("headers", [])) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            replay = await self._read_body(declared, receive, send_wrapper)
            if replay is not None:
                await self.app(scope, replay, send_wrapper)
        finally:
            route = scope.get("route")
            # Label by route template, never the raw path: ids in paths would explode cardinality.
            route_label = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            self._observe(scope["method"], route_label, status, elapsed)
            if status >= 500:
                self.metrics.errors.labels(route=route_label).inc()
            if self.enabled_log:
                client = scope.get("client")
                access_log.info(
                    "%s %s %s", scope["method"], scope["path"], status,
                    extra={"fields": {
                        "request_id": request_id, "method": scope["method"], "path": scope["path"],
                        "route": route_label, "status": status, "duration_ms": round(elapsed * 1000, 2),
                        "client": client[0] if client else None,
                    }},
                )


# --------------------------------------------------------------------------------------- lifespan


async def build_services(settings: Settings, metrics: Metrics) -> Services:
    redis_client = make_redis(settings)
    memory: Memory = (
        RedisMemory(redis_client, settings.redis_prefix, settings.memory_max_turns, settings.memory_ttl_seconds)
        if redis_client is not None
        else InProcessMemory(settings.memory_max_turns, settings.memory_ttl_seconds)
    )
    params = settings.mysql_params()
    store = MySQLStore(params, settings.mysql_connect_timeout) if params else None
    # One query at a time per request: FAISS's OpenMP fan-out only adds thread wake-ups (measured
    # 5 ms per search on a busy 2-core host vs 0.05 ms single-threaded); workers give the parallelism.
    faiss.omp_set_num_threads(1)
    embedder = await asyncio.to_thread(make_embedder, settings)
    if settings.kb_source and not _has_kb(settings.kb_dir):
        log.info("building knowledge base from %s into %s", settings.kb_source, settings.kb_dir)
        await asyncio.to_thread(build_kb, settings.kb_source, settings.kb_dir, embedder)
    knowledge = KnowledgeStore(settings.kb_dir, embedder, settings.kb_reload_interval, metrics)
    await asyncio.to_thread(knowledge.load_now)
    encoder = QueryEncoder(embedder, redis_client, settings.redis_prefix, settings.embed_cache_size,
                           settings.embed_cache_ttl_seconds, metrics, settings.embed_batch_max)
    provider: AnswerProvider = ExtractiveProvider()
    if settings.llm_provider == "openai":
        if not settings.llm_base_url:
            raise RuntimeError("CHATAGENT_LLM_PROVIDER=openai needs CHATAGENT_LLM_BASE_URL")
        provider = OpenAIProvider(
            settings.llm_base_url, settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
            settings.llm_model, settings.llm_timeout, settings.llm_max_retries, settings.llm_temperature,
            settings.llm_max_tokens,
        )
    pending = PendingQueue(redis_client, settings.redis_prefix)
    services = Services(
        settings=settings, metrics=metrics, masker=Masker(settings.mask_pii, settings.mask_kinds),
        redis=redis_client, store=store, pending=pending,
        sessions=SessionRepository(memory, store, pending, metrics),
        turns=TurnLedger(memory, store, settings.turn_lease_seconds, settings.turn_wait_seconds),
        encoder=encoder, knowledge=knowledge, provider=provider,
    )
    services.flow = build_flow(services)
    return services


def _has_kb(path: Path) -> bool:
    try:
        read_manifest(path)
        return True
    except Exception:
        return False


async def close_services(services: Services) -> None:
    if isinstance(services.provider, OpenAIProvider):
        await services.provider.aclose()
    if services.redis is not None:
        with contextlib.suppress(Exception):
            await services.redis.aclose()
    if services.store is not None:
        services.store.close()


SHUTDOWN_SECONDS = 10.0


async def finish_within(seconds: float, what: str,
                        *steps: Awaitable[object] | Callable[[], Awaitable[object]] | None) -> None:
    """Run the shutdown steps one after another, giving up (with a warning) once `seconds` have
    passed; unlike wait_for, asyncio.wait never blocks on a step that ignores cancellation."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    for step in steps:
        if step is None:
            continue
        # A step given as a function is called only when its turn comes: a coroutine made up front
        # and never reached (the deadline passed, the loop went away) is reported "never awaited".
        task = asyncio.ensure_future(step() if callable(step) else step)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
        if not done:
            log.warning("shutdown: %s did not finish within %.0fs; leaving it", what, seconds)
            return
        if not task.cancelled() and task.exception() is not None:
            log.warning("shutdown: %s failed: %s", what, task.exception())


async def flush_pending_forever(services: Services) -> None:
    """Replays writes queued during a MySQL outage; every worker runs one, a Redis lock keeps them apart."""
    assert services.store is not None
    while True:
        await asyncio.sleep(services.settings.pending_flush_interval)
        try:
            if await services.pending.size():
                flushed = await services.pending.flush(services.store)
                if flushed:
                    services.metrics.pending_flushed.inc(flushed)
                    log.info("replayed %d queued writes into MySQL", flushed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("pending writes not flushed yet: %s", exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings)
        services = await build_services(settings, metrics)
        app.state.services = services
        app.state.limiter = (
            RateLimiter(settings.rate_limit, settings, settings.redis_prefix)
            if settings.rate_limit_enabled else None
        )
        app.state.public = public.build_state(settings) if settings.public_enabled else None
        flusher = asyncio.create_task(flush_pending_forever(services)) if services.store is not None else None
        log.info(
            "chatagent ready: embedder=%s provider=%s redis=%s mysql=%s auth=%s",
            settings.embedder, settings.llm_provider, settings.redis_display(),
            settings.mysql_display(), "on" if settings.auth_enabled else "OFF (no CHATAGENT_API_KEYS)",
        )
        try:
            yield
        finally:
            # Bounded: a worker that cannot finish shutting down (a Redis or MySQL peer that never
            # answers) would hold up gunicorn's restart of it and every release that waits for it.
            if flusher is not None:
                flusher.cancel()
            await finish_within(SHUTDOWN_SECONDS, "close services", flusher,
                                functools.partial(close_services, services))

    app = FastAPI(
        title="chatagent", version="0.1.0", lifespan=lifespan,
        description="Customer-service chat API: native JSON/SSE endpoints and an OpenAI-compatible surface.",
        # Metrics are Prometheus (metrics.py) and nothing installs an OpenTelemetry SDK; FastAPI's
        # native telemetry would still look for a configured provider (environment reads) per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.include_router(health.router)
    app.include_router(chat.router)
    app.include_router(sessions.router)
    app.include_router(openai_compat.router)
    if settings.public_enabled:
        public.install(app, settings)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        refusal = await owed_charge(request)
        if refusal is not None:  # over the limit: the 429 comes first, as when the hit came first
            return await http_error(request, refusal)
        errors = jsonable_encoder(exc.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")})
        fields = [".".join(str(p) for p in e.get("loc", ())[1:]) or str(e.get("loc", [""])[0]) for e in errors]
        return JSONResponse(
            {"detail": errors, "error": "validation_error", "fields": fields}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.detail}
        if request.url.path.startswith("/v1/"):
            # The OpenAI SDK reads `error.message`; keep `detail` for everyone else.
            body["error"] = {"message": str(exc.detail), "type": "invalid_request_error", "code": exc.status_code}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(UnknownSession)
    async def unknown_session(request: Request, exc: UnknownSession) -> JSONResponse:
        return await http_error(request, StarletteHTTPException(404, f"unknown session {exc}"))

    @app.exception_handler(RequestIdConflict)
    async def request_id_conflict(request: Request, exc: RequestIdConflict) -> JSONResponse:
        return await http_error(request, StarletteHTTPException(
            409, f"request id {exc} was already used for a different request"))

    @app.exception_handler(TurnInFlight)
    async def turn_in_flight(request: Request, exc: TurnInFlight) -> JSONResponse:
        return await http_error(request, StarletteHTTPException(
            503, f"request {exc} is still being answered; retry later", headers={"Retry-After": "5"}))

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": "internal error", "request_id": getattr(request.state, "request_id", None)},
                            status_code=500)

    app.add_middleware(RequestContextMiddleware, metrics=metrics, enabled_log=settings.access_log,
                       max_bytes=settings.max_body_bytes)
    return app
