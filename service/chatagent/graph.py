"""The agent: a LangGraph StateGraph  load_memory → classify → (retrieve) → answer → persist."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph

from .knowledge import HANDOFF_INTENT, Hit, KnowledgeStore, QueryEncoder, detect_lang
from .llm import TEXTS, AnswerProvider, ExtractiveProvider, LLMError
from .masking import Masker
from .memory import Memory
from .metrics import Metrics
from .settings import Settings
from .store import MySQLStore, PendingQueue

log = logging.getLogger(__name__)

HANDOFF_OFFER = {
    "en": "\n\nIf this doesn't answer your question, I can connect you with a human agent.",
    "zh": "\n\n如果以上内容没有解决您的问题，我可以为您转接人工客服。",
}


@dataclass
class Services:
    """Everything a request needs; built in the app lifespan (or by the CLI), never module-global."""

    settings: Settings
    metrics: Metrics
    masker: Masker
    memory: Memory
    redis: Any | None
    store: MySQLStore | None
    pending: PendingQueue
    encoder: QueryEncoder
    knowledge: KnowledgeStore
    provider: AnswerProvider
    graph: Any = None


class TurnState(TypedDict, total=False):
    request_id: str
    session_id: str
    user_id: str | None
    message: str
    lang: str
    persist: bool
    history: list[dict[str, Any]] | None
    vector: Any
    intent: str
    confidence: float
    explicit_handoff: bool
    hits: list[Hit]
    answer: str
    provider: str
    llm_error: str | None
    stored: str


def build_graph(services: Services) -> Any:
    s = services
    extractive = ExtractiveProvider()

    async def load_memory(state: TurnState) -> dict[str, Any]:
        if state.get("history") is not None:  # stateless OpenAI call: history came with the request
            return {}
        history: list[dict[str, Any]] = []
        try:
            history = await s.memory.history(state["session_id"])
        except Exception as exc:
            log.error("session memory unavailable, answering without history: %s", exc)
        if not history and s.store is not None:
            # Redis expired or lost the session: MySQL still has the conversation.
            try:
                rows = await asyncio.to_thread(s.store.history, state["session_id"], s.settings.memory_max_turns * 2)
                history = rows or []
            except Exception as exc:
                log.warning("MySQL history unavailable: %s", exc)
        return {"history": history}

    async def classify(state: TurnState) -> dict[str, Any]:
        await s.knowledge.maybe_reload()
        started = time.perf_counter()
        vector = await s.encoder.encode(state["message"])
        s.metrics.retrieval_duration.observe(time.perf_counter() - started)
        kb = s.knowledge.kb
        if kb is None:
            intent, confidence, explicit = HANDOFF_INTENT, 0.0, False
        else:
            result = kb.classify(vector, s.settings.effective_intent_confidence)
            intent, confidence = result.name, result.confidence
            # The label "handoff" won on its own merit: the user asked for a person.
            explicit = intent == HANDOFF_INTENT and confidence >= s.settings.effective_intent_confidence
        get_stream_writer()({"meta": {"intent": intent, "confidence": confidence}})
        return {"vector": vector, "intent": intent, "confidence": confidence, "explicit_handoff": explicit}

    def route(state: TurnState) -> str:
        if state.get("explicit_handoff") or state.get("intent") == "greeting":
            return "answer"
        return "retrieve"

    async def retrieve(state: TurnState) -> dict[str, Any]:
        kb = s.knowledge.kb
        if kb is None:
            return {"hits": []}
        vector: np.ndarray = state["vector"]
        hits = kb.search(vector, s.settings.top_k, s.settings.effective_min_score)
        return {"hits": hits}

    async def answer(state: TurnState) -> dict[str, Any]:
        writer = get_stream_writer()
        hits = state.get("hits") or []
        lang = state["lang"]
        intent = state["intent"]
        history = state.get("history") or []
        parts: list[str] = []
        provider_name = s.provider.name
        llm_error = None
        if intent == HANDOFF_INTENT and not state.get("explicit_handoff"):
            intent = "unknown"  # low confidence: answer from passages or say we don't know
        try:
            async for token in s.provider.stream(state["message"], history, hits, lang, intent):
                parts.append(token)
                writer({"token": token})
        except LLMError as exc:
            llm_error = str(exc)
            s.metrics.llm_failures.labels(reason="stream" if parts else "unavailable").inc()
            log.error("LLM failed, falling back to extractive answer: %s", exc)
            provider_name = "extractive"
            if parts:
                parts.append("\n\n")
                writer({"token": "\n\n"})
            async for token in extractive.stream(state["message"], history, hits, lang, intent):
                parts.append(token)
                writer({"token": token})
        intent = state["intent"]
        if intent == HANDOFF_INTENT and hits:
            offer = HANDOFF_OFFER.get(lang, HANDOFF_OFFER["en"])
            parts.append(offer)
            writer({"token": offer})
        if not hits and intent != "greeting":
            s.metrics.handoffs.labels(reason="explicit" if state.get("explicit_handoff") else "no_answer").inc()
            if intent != HANDOFF_INTENT:
                intent = HANDOFF_INTENT
        elif intent == HANDOFF_INTENT:
            s.metrics.handoffs.labels(reason="low_confidence").inc()
        s.metrics.chat_turns.labels(intent=intent, provider=provider_name).inc()
        return {"answer": "".join(parts), "provider": provider_name, "llm_error": llm_error, "intent": intent}

    async def persist(state: TurnState) -> dict[str, Any]:
        if not state.get("persist", True):
            return {"stored": "none"}
        now = time.time()
        mask = s.masker
        sources = [{"id": h.id, "title": h.title, "score": h.score} for h in state.get("hits") or []]
        messages = [
            {"role": "user", "content": mask(state["message"]), "ts": now, "request_id": state["request_id"]},
            {
                "role": "assistant", "content": mask(state["answer"]), "ts": now, "request_id": state["request_id"],
                "intent": state["intent"], "sources": sources,
            },
        ]
        try:
            await s.memory.append(state["session_id"], messages)
            await s.memory.remember_request(state["request_id"], state["session_id"])
        except Exception as exc:
            log.error("session memory write failed: %s", exc)
        op = {
            "kind": "turn", "session_id": state["session_id"], "user_id": state.get("user_id"),
            "request_id": state["request_id"], "ts": now, "messages": messages,
        }
        return {"stored": await save_op(s, op)}

    g = StateGraph(TurnState)
    g.add_node("load_memory", load_memory)
    g.add_node("classify", classify)
    g.add_node("retrieve", retrieve)
    g.add_node("answer", answer)
    g.add_node("persist", persist)
    g.add_edge(START, "load_memory")
    g.add_edge("load_memory", "classify")
    g.add_conditional_edges("classify", route, {"retrieve": "retrieve", "answer": "answer"})
    g.add_edge("retrieve", "answer")
    g.add_edge("answer", "persist")
    g.add_edge("persist", END)
    return g.compile()


async def save_op(s: Services, op: dict[str, Any]) -> str:
    """Write to MySQL now, or queue it for the flusher; returns where it went."""
    if s.store is None:
        return "none"
    try:
        await asyncio.to_thread(s.store.apply, op)
        return "mysql"
    except Exception as exc:
        log.error("MySQL write failed, queued for replay: %s", exc)
        s.metrics.pending_writes.labels(kind=op["kind"]).inc()
        await s.pending.push(op)
        return "pending"


async def run_turn(s: Services, *, message: str, session_id: str, request_id: str, user_id: str | None = None,
                   history: list[dict[str, Any]] | None = None, persist: bool = True
                   ) -> AsyncIterator[tuple[str, Any]]:
    """Drive the graph, yielding ("meta", dict), ("token", str) as they happen and ("final", state) last."""
    state: TurnState = {
        "request_id": request_id, "session_id": session_id, "user_id": user_id, "message": message,
        "lang": detect_lang(message), "persist": persist, "history": history,
    }
    final: dict[str, Any] = dict(state)
    async for mode, chunk in s.graph.astream(state, stream_mode=["custom", "values"]):
        if mode == "custom":
            if "meta" in chunk:
                yield "meta", chunk["meta"]
            elif "token" in chunk:
                yield "token", chunk["token"]
        else:
            final = chunk
    yield "final", final


async def answer_once(s: Services, **kwargs: Any) -> dict[str, Any]:
    final: dict[str, Any] = {}
    async for kind, value in run_turn(s, **kwargs):
        if kind == "final":
            final = value
    return final


def no_answer_text(lang: str) -> str:
    return TEXTS.get(lang, TEXTS["en"])["no_hit"]
