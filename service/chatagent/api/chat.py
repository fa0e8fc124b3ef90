"""Native chat API: one-shot JSON and Server-Sent Events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, Field

from ..graph import Services, Turn, begin_turn
from ..store import Source
from ..turns import RateLimited
from .deps import BEARER_SECURITY, SESSION_ID_PATTERN, Caller, clean_text, refused, settle, turn_caller

log = logging.getLogger(__name__)

# Auth and the rate limit come with each route's `turn_caller` (one dependency, solved once).
router = APIRouter(prefix="/api/v1", tags=["chat"])


class ChatRequest(BaseModel):
    message: Annotated[str, AfterValidator(clean_text)] = Field(
        min_length=1, max_length=100_000, description="The user's message"
    )
    session_id: str | None = Field(
        None, pattern=SESSION_ID_PATTERN, description="Continue this session (as returned earlier); omit to start one"
    )
    user_id: Annotated[str | None, AfterValidator(clean_text)] = Field(None, max_length=128)


class ChatResponse(BaseModel):
    answer: str
    session_id: str
    intent: str
    sources: list[Source]
    request_id: str


def checked_message(raw: str, max_chars: int) -> str:
    """The message as answered: stripped, non-empty and within the size limit (422 otherwise)."""
    message = raw.strip()
    if not message:
        raise RequestValidationError(
            [{"type": "string_too_short", "loc": ("body", "message"), "msg": "message is empty", "input": raw}]
        )
    if len(message) > max_chars:
        raise RequestValidationError(
            [{
                "type": "string_too_long", "loc": ("body", "message"),
                "msg": f"message longer than {max_chars} characters",
                "input": f"<{len(message)} characters>",
            }]
        )
    return message


async def begin(request: Request, body: ChatRequest, services: Services, caller: Caller) -> Turn:
    message = checked_message(body.message, services.settings.max_message_chars)
    settle(request)
    try:
        return await begin_turn(services, message=message, session_id=body.session_id, must_exist=True,
                                request_id=request.state.request_id, identity=caller.identity,
                                user_id=body.user_id, rate=caller.rate)
    except RateLimited:
        raise await refused(request.app.state.limiter, caller.subject, services.metrics) from None


@router.post("/chat", response_model=ChatResponse, openapi_extra=BEARER_SECURITY)
async def chat(request: Request, body: ChatRequest, caller: Caller = Depends(turn_caller)) -> Response:
    services: Services = request.app.state.services
    result = await (await begin(request, body, services, caller)).result()
    # Serialised here by pydantic-core: returned as a model, FastAPI would validate it again against
    # response_model and encode it through jsonable_encoder + json.dumps (response_model stays for the
    # schema). Constructed without validation: TurnResult's fields are already these types.
    body_json = ChatResponse.model_construct(answer=result.answer, session_id=result.session_id, intent=result.intent,
                                             sources=result.sources, request_id=result.request_id).model_dump_json()
    return Response(body_json, media_type="application/json")


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


@router.post(
    "/chat/stream",
    responses={200: {"content": {"text/event-stream": {}}, "description": "meta, token…, sources, done (or error)"}},
    openapi_extra=BEARER_SECURITY,
)
async def chat_stream(request: Request, body: ChatRequest,
                      caller: Caller = Depends(turn_caller)) -> StreamingResponse:
    services: Services = request.app.state.services
    turn = await begin(request, body, services, caller)
    return stream_turn(services, turn, request.state.request_id)


def stream_turn(services: Services, turn: Turn, request_id: str) -> StreamingResponse:
    """One turn as Server-Sent Events: meta, token…, sources, done (or error)."""
    session_id = turn.session_id

    async def events() -> AsyncIterator[str]:
        try:
            async for kind, value in turn.events():
                if kind == "meta":
                    yield sse("meta", {"request_id": request_id, "session_id": session_id, **value})
                elif kind == "token":
                    yield sse("token", {"text": value})
                elif kind == "final":
                    yield sse("sources", {"sources": [s.model_dump() for s in value.sources]})
                    yield sse("done", {"request_id": request_id, "session_id": session_id,
                                       "intent": value.intent, "answer": value.answer})
        except Exception:
            # Headers are gone already; the failure can only be reported in-band.
            log.exception("stream failed request_id=%s", request_id)
            services.metrics.errors.labels(route="/api/v1/chat/stream").inc()
            yield sse("error", {"request_id": request_id, "message": "internal error; please retry"})

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
