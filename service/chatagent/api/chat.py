"""Native chat API: one-shot JSON and Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from ..graph import Services, run_turn
from .deps import SESSION_ID_PATTERN, clean_text, get_services, guard

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["chat"], dependencies=[Depends(guard)])


class ChatRequest(BaseModel):
    message: Annotated[str, AfterValidator(clean_text)] = Field(
        min_length=1, max_length=100_000, description="The user's message"
    )
    session_id: str | None = Field(
        None, pattern=SESSION_ID_PATTERN, description="Continue this session (as returned earlier); omit to start one"
    )
    user_id: Annotated[str | None, AfterValidator(clean_text)] = Field(None, max_length=128)


class Source(BaseModel):
    id: str
    title: str
    score: float


class ChatResponse(BaseModel):
    answer: str
    session_id: str
    intent: str
    sources: list[Source]
    request_id: str


def sources_of(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": h.id, "title": h.title, "score": h.score} for h in state.get("hits") or []]


async def session_known(services: Services, session_id: str) -> bool:
    """True unless every backend positively says the session does not exist."""
    errors = 0
    try:
        if await services.memory.exists(session_id):
            return True
    except Exception:
        errors += 1
    if services.store is not None:
        try:
            if await asyncio.to_thread(services.store.history, session_id, 1) is not None:
                return True
        except Exception:
            errors += 1
    return errors > 0


async def prepare(request: Request, body: ChatRequest, services: Services) -> tuple[str, str]:
    message = body.message.strip()
    if not message:
        raise RequestValidationError(
            [{"type": "string_too_short", "loc": ("body", "message"), "msg": "message is empty", "input": body.message}]
        )
    if len(message) > services.settings.max_message_chars:
        raise RequestValidationError(
            [{
                "type": "string_too_long", "loc": ("body", "message"),
                "msg": f"message longer than {services.settings.max_message_chars} characters",
                "input": f"<{len(message)} characters>",
            }]
        )
    if body.session_id:
        if not await session_known(services, body.session_id):
            raise HTTPException(status_code=404, detail=f"unknown session {body.session_id}")
        session_id = body.session_id
    else:
        session_id = uuid.uuid4().hex
    return message, session_id


@router.post("/chat", response_model=ChatResponse)
async def chat(request: Request, body: ChatRequest, services: Services = Depends(get_services)) -> ChatResponse:
    message, session_id = await prepare(request, body, services)
    request_id = request.state.request_id
    final: dict[str, Any] = {}
    async for kind, value in run_turn(services, message=message, session_id=session_id, request_id=request_id,
                                      user_id=body.user_id):
        if kind == "final":
            final = value
    return ChatResponse(
        answer=final["answer"], session_id=session_id, intent=final["intent"],
        sources=[Source(**s) for s in sources_of(final)], request_id=request_id,
    )


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


@router.post(
    "/chat/stream",
    responses={200: {"content": {"text/event-stream": {}}, "description": "meta, token…, sources, done (or error)"}},
)
async def chat_stream(request: Request, body: ChatRequest, services: Services = Depends(get_services)
                      ) -> StreamingResponse:
    message, session_id = await prepare(request, body, services)
    request_id = request.state.request_id

    async def events() -> AsyncIterator[str]:
        try:
            async for kind, value in run_turn(services, message=message, session_id=session_id,
                                              request_id=request_id, user_id=body.user_id):
                if kind == "meta":
                    yield sse("meta", {"request_id": request_id, "session_id": session_id, **value})
                elif kind == "token":
                    yield sse("token", {"text": value})
                elif kind == "final":
                    yield sse("sources", {"sources": sources_of(value)})
                    yield sse("done", {"request_id": request_id, "session_id": session_id,
                                       "intent": value["intent"], "answer": value["answer"]})
        except Exception:
            # Headers are gone already; the failure can only be reported in-band.
            log.exception("stream failed request_id=%s", request_id)
            services.metrics.errors.labels(route="/api/v1/chat/stream").inc()
            yield sse("error", {"request_id": request_id, "message": "internal error; please retry"})

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
