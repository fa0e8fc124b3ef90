"""Session history and deletion, and feedback on answers."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, Field

from ..graph import Services
from ..sessions import SessionsUnavailable
from ..store import FeedbackWrite, Source
from .deps import SESSION_ID_PATTERN, clean_text, get_services, guard

router = APIRouter(prefix="/api/v1", tags=["sessions"], dependencies=[Depends(guard)])

SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN, description="Session id returned by /api/v1/chat")]


class HistoryMessage(BaseModel):
    role: str
    content: str
    ts: float | None = None
    request_id: str | None = None
    intent: str | None = None
    sources: list[Source] | None = Field(None, description="Cited entries (while Redis keeps the session)")


class SessionHistory(BaseModel):
    session_id: str
    messages: list[HistoryMessage]


@router.get("/sessions/{session_id}", response_model=SessionHistory,
            responses={404: {"description": "unknown session"}, 503: {"description": "history unavailable"}})
async def get_session(session_id: SessionId, services: Services = Depends(get_services)) -> SessionHistory:
    try:
        messages = await services.sessions.read(session_id, services.settings.max_history_messages)
    except SessionsUnavailable:
        raise HTTPException(status_code=503, detail="session history unavailable; retry later",
                            headers={"Retry-After": "5"}) from None
    if messages is None:
        raise HTTPException(status_code=404, detail=f"unknown session {session_id}")
    return SessionHistory(
        session_id=session_id,
        messages=[HistoryMessage(**{k: m.get(k) for k in HistoryMessage.model_fields}) for m in messages],
    )


@router.delete("/sessions/{session_id}", status_code=204, response_class=Response,
               responses={404: {"description": "unknown session"}})
async def delete_session(session_id: SessionId, services: Services = Depends(get_services)) -> Response:
    if not await services.sessions.delete(session_id):
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
    known = await services.turns.answered(body.request_id)
    if known is False:
        raise HTTPException(status_code=404, detail=f"unknown request_id {body.request_id}")
    if known is None:
        raise HTTPException(status_code=503, detail="cannot verify request_id right now; retry later",
                            headers={"Retry-After": "5"})
    stored = await services.sessions.save(FeedbackWrite(
        request_id=body.request_id, score=body.score,
        comment=services.masker(body.comment) if body.comment else None, ts=time.time(),
    ))
    services.metrics.feedback.labels(score=str(body.score)).inc()
    return FeedbackResponse(request_id=body.request_id, stored=stored)
