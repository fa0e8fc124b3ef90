"""Session history and deletion, and feedback on answers."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, Field

from ..graph import Services, save_op
from .deps import SESSION_ID_PATTERN, clean_text, get_services, guard

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["sessions"], dependencies=[Depends(guard)])

SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN, description="Session id returned by /api/v1/chat")]


class HistoryMessage(BaseModel):
    role: str
    content: str
    ts: float | None = None
    request_id: str | None = None
    intent: str | None = None


class SessionHistory(BaseModel):
    session_id: str
    messages: list[HistoryMessage]


@router.get("/sessions/{session_id}", response_model=SessionHistory)
async def get_session(session_id: SessionId, services: Services = Depends(get_services)) -> SessionHistory:
    messages: list[dict[str, Any]] = []
    found = False
    try:
        if await services.memory.exists(session_id):
            messages, found = await services.memory.history(session_id), True
    except Exception as exc:
        log.warning("session memory unavailable: %s", exc)
    if not found and services.store is not None:
        # Redis forgets after its TTL; MySQL keeps the full conversation.
        try:
            rows = await asyncio.to_thread(services.store.history, session_id, services.settings.max_history_messages)
        except Exception as exc:
            log.warning("MySQL unavailable for history: %s", exc)
            rows = None
        if rows is not None:
            messages, found = rows, True
    if not found:
        raise HTTPException(status_code=404, detail=f"unknown session {session_id}")
    return SessionHistory(
        session_id=session_id,
        messages=[HistoryMessage(**{k: m.get(k) for k in HistoryMessage.model_fields}) for m in messages],
    )


@router.delete("/sessions/{session_id}", status_code=204, response_class=Response,
               responses={404: {"description": "unknown session"}})
async def delete_session(session_id: SessionId, services: Services = Depends(get_services)) -> Response:
    deleted = False
    try:
        deleted = await services.memory.delete(session_id)
    except Exception as exc:
        log.warning("session memory unavailable for delete: %s", exc)
    if services.store is not None:
        try:
            in_mysql = await asyncio.to_thread(services.store.history, session_id, 1) is not None
        except Exception:
            in_mysql = True  # cannot tell: queue the delete so it happens when MySQL is back
        if in_mysql:
            await save_op(services, {"kind": "delete", "session_id": session_id, "ts": time.time()})
            deleted = True
    if not deleted:
        raise HTTPException(status_code=404, detail=f"unknown session {session_id}")
    return Response(status_code=204)


class FeedbackRequest(BaseModel):
    request_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="request_id of the answer rated")
    score: int = Field(ge=1, le=5, description="Rating from 1 (bad) to 5 (good)")
    comment: Annotated[str | None, AfterValidator(clean_text)] = Field(None, max_length=2000)


class FeedbackResponse(BaseModel):
    request_id: str
    stored: str


@router.post("/feedback", response_model=FeedbackResponse, status_code=202)
async def feedback(body: FeedbackRequest, services: Services = Depends(get_services)) -> FeedbackResponse:
    known: bool | None = None
    try:
        known = await services.memory.request_session(body.request_id) is not None
    except Exception as exc:
        log.warning("session memory unavailable for feedback: %s", exc)
    if not known and services.store is not None:
        try:
            known = await asyncio.to_thread(services.store.request_exists, body.request_id)
        except Exception:
            known = None if not known else known
    if known is False:
        raise HTTPException(status_code=404, detail=f"unknown request_id {body.request_id}")
    if known is None:
        raise HTTPException(status_code=503, detail="cannot verify request_id right now; retry later",
                            headers={"Retry-After": "5"})
    op = {
        "kind": "feedback", "request_id": body.request_id, "score": body.score,
        "comment": services.masker(body.comment) if body.comment else None, "ts": time.time(),
    }
    stored = await save_op(services, op)
    services.metrics.feedback.labels(score=str(body.score)).inc()
    return FeedbackResponse(request_id=body.request_id, stored=stored)
