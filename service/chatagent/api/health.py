"""Liveness, readiness and Prometheus metrics: no auth, no rate limit (nginx restricts /metrics)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from ..graph import Services
from ..llm import OpenAIProvider
from .deps import get_services

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def _check(name: str, coro: Any, timeout: float = 3.0) -> tuple[str, dict[str, Any]]:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(coro, timeout)
        result: dict[str, Any] = {"ok": True}
        if detail:
            result.update(detail)
    except Exception as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000]}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return name, result


@router.get("/ready", responses={503: {"description": "a dependency is unavailable; see checks"}})
async def ready(services: Services = Depends(get_services)) -> JSONResponse:
    s = services

    async def redis_check() -> dict[str, Any]:
        await s.redis.ping()
        return {}

    async def mysql_check() -> dict[str, Any]:
        version = await asyncio.to_thread(s.store.schema_version)  # type: ignore[union-attr]
        if version < 1:
            raise RuntimeError("schema not migrated; run `chatagent db migrate`")
        return {"schema_version": version, "pending_writes": await s.pending.size()}

    async def kb_check() -> dict[str, Any]:
        await s.knowledge.maybe_reload()
        kb = s.knowledge.kb
        if kb is None:
            raise RuntimeError(s.knowledge.error or "knowledge base not loaded")
        detail: dict[str, Any] = {"version": kb.version, "chunks": kb.count, "embedder": kb.manifest["embedder"]}
        if s.knowledge.error:  # a newer version was refused; the old one still serves
            detail["warning"] = s.knowledge.error
        return detail

    checks = []
    if s.redis is not None:
        checks.append(_check("redis", redis_check()))
    if s.store is not None:
        checks.append(_check("mysql", mysql_check()))
    checks.append(_check("knowledge_base", kb_check(), timeout=30))
    if isinstance(s.provider, OpenAIProvider):
        checks.append(_check("llm", s.provider.check()))
    results = dict(await asyncio.gather(*checks))
    ok = all(r["ok"] for r in results.values())
    return JSONResponse({"status": "ready" if ok else "not_ready", "checks": results}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
async def metrics(services: Services = Depends(get_services)) -> Response:
    body, content_type = await asyncio.to_thread(services.metrics.render)
    return Response(body, media_type=content_type)
