"""OpenAI-compatible `/v1/chat/completions` and `/v1/models`, so the official SDKs work unchanged."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..graph import Services, begin_turn
from .chat import SSE_HEADERS
from .deps import clean_text, get_services, guard, valid_session_id

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(guard)])


class OAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(max_length=32)
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = Field(None, max_length=200)
    messages: list[OAIMessage] = Field(min_length=1, max_length=200)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)


def text_of(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return clean_text(content)
    parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return clean_text("".join(p for p in parts if isinstance(p, str)))


def _invalid(loc: tuple[Any, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": None}])


def _usage(prompt: str, answer: str) -> dict[str, int]:
    # Rough counts: no tokenizer is bundled; clients mostly display these.
    p, c = max(1, len(prompt) // 4), max(1, len(answer) // 4)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


@router.get("/models")
async def list_models(services: Services = Depends(get_services)) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": services.settings.model_name, "object": "model", "created": 0, "owned_by": "chatagent"}],
    }


@router.post("/chat/completions", responses={200: {"content": {"text/event-stream": {}}}})
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest,
    services: Services = Depends(get_services),
    identity: str | None = Depends(guard),
    x_session_id: str | None = Header(None, max_length=256),
) -> Any:
    user_positions = [i for i, m in enumerate(body.messages) if m.role == "user"]
    if not user_positions:
        raise _invalid(("body", "messages"), "messages must contain at least one user message")
    last = user_positions[-1]
    question = text_of(body.messages[last].content).strip()
    if not question:
        raise _invalid(("body", "messages", last, "content"), "the last user message is empty")
    if len(question) > services.settings.max_message_chars:
        raise _invalid(("body", "messages", last, "content"),
                       f"message longer than {services.settings.max_message_chars} characters")

    raw_session = x_session_id or body.user
    if raw_session:
        # Arbitrary `user` strings (e-mails…) are hashed rather than stored as ids.
        session_id = raw_session if valid_session_id(raw_session) else "u-" + hashlib.sha256(
            raw_session.encode("utf-8", "replace")).hexdigest()[:32]
        history, persist = None, True
    else:
        session_id = "stateless-" + uuid.uuid4().hex
        history = [
            {"role": m.role, "content": text_of(m.content)}
            for m in body.messages[:last] if m.role in ("user", "assistant")
        ]
        persist = False

    request_id = request.state.request_id
    completion_id = "chatcmpl-" + request_id
    created = int(time.time())
    model = body.model or services.settings.model_name
    headers = {"X-Session-Id": session_id} if persist else {}
    turn = await begin_turn(services, message=question, session_id=session_id, request_id=request_id,
                            identity=identity, user_id=body.user, history=history, persist=persist)

    if not body.stream:
        answer = (await turn.result()).answer
        return JSONResponse(
            {
                "id": completion_id, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": None,
                "choices": [{
                    "index": 0, "message": {"role": "assistant", "content": answer, "refusal": None},
                    "logprobs": None, "finish_reason": "stop",
                }],
                "usage": _usage(question, answer),
            },
            headers=headers,
        )

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        data = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        answer = ""
        try:
            async for kind, value in turn.events():
                if kind == "token":
                    answer += value
                    yield chunk({"content": value})
        except Exception:
            services.metrics.errors.labels(route="/v1/chat/completions").inc()
            error = {"error": {"message": "internal error; please retry", "type": "server_error", "code": None}}
            yield f"data: {json.dumps(error)}\n\n"
            return
        yield chunk({}, "stop")
        if include_usage:
            usage = {
                "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None, "choices": [], "usage": _usage(question, answer),
            }
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
