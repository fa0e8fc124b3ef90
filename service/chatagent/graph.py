"""The agent: the flow  classify → (retrieve) → answer, defined once (`Flow`) and compiled into a
LangGraph StateGraph, and the chat turn around it (`begin_turn`: session history, request-id claim;
`Turn`: runs the flow, stores the turn, and is the one place flow state becomes the API answer)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from .knowledge import (
    HANDOFF_INTENT,
    CacheLookup,
    CacheWrite,
    Hit,
    KnowledgeStore,
    QueryEncoder,
    detect_lang,
    retrieval_vector,
)
from .llm import AnswerProvider, ExtractiveProvider, LLMError, LLMStreamBroken
from .masking import Masker
from .memory import RateCheck
from .metrics import Metrics
from .sessions import SessionRepository, SessionsUnavailable
from .settings import Settings
from .store import MySQLStore, PendingQueue, Source, StoredMessage, TurnWrite
from .turns import Claim, TurnLedger, TurnResult, fingerprint

log = logging.getLogger(__name__)

HANDOFF_OFFER = {
    "en": "\n\nIf this doesn't answer your question, I can connect you with a human agent.",
    "zh": "\n\n如果以上内容没有解决您的问题，我可以为您转接人工客服。",
}

HandoffReason = Literal["explicit", "no_answer", "low_confidence"]


@dataclass
class Services:
    """Everything a request needs; built in the app lifespan (or by the CLI), never module-global."""

    settings: Settings
    metrics: Metrics
    masker: Masker
    redis: Any | None
    store: MySQLStore | None
    pending: PendingQueue
    sessions: SessionRepository
    turns: TurnLedger
    encoder: QueryEncoder
    knowledge: KnowledgeStore
    provider: AnswerProvider
    flow: Flow | None = None


class UnknownSession(LookupError):
    """A turn named a session that no backend knows."""


class TurnState(TypedDict, total=False):
    request_id: str
    session_id: str
    user_id: str | None
    message: str
    lang: str
    persist: bool
    fingerprint: str
    history: list[dict[str, Any]]
    # The message's embedding-cache entry, read with the request-id claim (absent: not read yet).
    cached_embedding: CacheLookup
    vector: Any
    # The message's new embedding for the shared cache, stored by the turn's append (persist).
    cache_write: CacheWrite | None
    # The classifier's intent when it is confident; None when it is not.
    label: str | None
    confidence: float
    # The user asked for a person ("转人工"): answered with a handoff, no retrieval.
    asked_for_human: bool
    hits: list[Hit]
    answer: str
    # Why a person is offered in this answer, if one is.
    handoff: HandoffReason | None
    # What the API reports: the label, or "handoff" whenever a person is offered.
    intent: str
    provider: str
    llm_error: str | None


Emit = Callable[[dict[str, Any]], None]
# A node gets None instead of an Emit when nobody listens (a one-shot turn).
Node = Callable[[TurnState, Emit | None], Awaitable[dict[str, Any]]]
Router = Callable[[TurnState], str]


@dataclass(frozen=True)
class Flow:
    """The turn's nodes and edges, defined once. Streamed turns run the compiled LangGraph graph
    (its stream writer carries meta and tokens as they happen); one-shot turns walk the same nodes
    and edges with `run`: LangGraph's Pregel loop (channels, task preparation, checkpoint bookkeeping
    per superstep) was 37 % of a cached turn's CPU and buys nothing for a three-node graph without a
    checkpointer whose every step is awaited in order. Both merge node updates into the state the same
    way (every key is a last-value channel), which tests/test_flow.py checks on every route."""

    nodes: dict[str, Node]
    first: str
    # node → next node (END finishes), or node → (router, router's answer → next node)
    edges: dict[str, str | tuple[Router, dict[str, str]]]
    graph: CompiledStateGraph

    @classmethod
    def define(cls, nodes: dict[str, Node], first: str,
               edges: dict[str, str | tuple[Router, dict[str, str]]]) -> Flow:
        g = StateGraph(TurnState)
        for name, node in nodes.items():
            g.add_node(name, _streaming(node))
        g.add_edge(START, first)
        for source, target in edges.items():
            if isinstance(target, str):
                g.add_edge(source, target)
            else:
                router, ends = target
                g.add_conditional_edges(source, router, ends)
        return cls(nodes, first, edges, g.compile())

    async def run(self, state: TurnState) -> dict[str, Any]:
        """The final state, without intermediate events."""
        values: dict[str, Any] = dict(state)
        name = self.first
        while name != END:
            values.update(await self.nodes[name](values, None))  # type: ignore[arg-type]
            target = self.edges[name]
            name = target if isinstance(target, str) else target[1][target[0](values)]  # type: ignore[arg-type]
        return values

    async def stream(self, state: TurnState) -> AsyncIterator[tuple[str, Any]]:
        """("custom", emitted chunk) as nodes emit, ("values", state) after each step."""
        async for mode, chunk in self.graph.astream(state, stream_mode=["custom", "values"]):
            yield mode, chunk


def _streaming(node: Node) -> Callable[[TurnState], Awaitable[dict[str, Any]]]:
    async def run(state: TurnState) -> dict[str, Any]:
        return await node(state, get_stream_writer())

    run.__name__ = getattr(node, "__name__", "node")
    return run


def build_flow(services: Services) -> Flow:
    s = services
    extractive = ExtractiveProvider()

    async def classify(state: TurnState, emit: Emit | None) -> dict[str, Any]:
        await s.knowledge.maybe_reload()
        started = time.perf_counter()
        cache_write = None
        if state.get("persist", True):
            # persist() hands the new embedding to the turn's append script: no round trip of its
            # own (a turn that fails before it is stored leaves it uncached, nothing worse).
            vector, cache_write = await s.encoder.encode_deferred(state["message"], state.get("cached_embedding"))
        else:
            vector = await s.encoder.encode(state["message"], state.get("cached_embedding"))
        s.metrics.retrieval_duration.observe(time.perf_counter() - started)
        kb = s.knowledge.kb
        threshold = s.settings.effective_intent_confidence
        label: str | None = None
        confidence = 0.0
        if kb is not None:
            result = kb.classify(vector, threshold)
            confidence = result.confidence
            # The KB names "handoff" both when that label won and when nothing was confident enough.
            if result.name != HANDOFF_INTENT or confidence >= threshold:
                label = result.name
        if emit is not None:
            emit({"meta": {"intent": label or HANDOFF_INTENT, "confidence": confidence}})
        return {"vector": vector, "cache_write": cache_write, "label": label, "confidence": confidence,
                "asked_for_human": label == HANDOFF_INTENT}

    def route(state: TurnState) -> str:
        if state["asked_for_human"] or state["label"] == "greeting":
            return "answer"
        return "retrieve"

    async def retrieve(state: TurnState, emit: Emit | None) -> dict[str, Any]:
        kb = s.knowledge.kb
        if kb is None:
            return {"hits": []}
        vector = await retrieval_vector(s.encoder, state["message"], state.get("history"), state["vector"])
        return {"hits": kb.search(vector, s.settings.top_k, s.settings.effective_min_score, state["lang"])}

    async def answer(state: TurnState, emit: Emit | None) -> dict[str, Any]:
        hits = state.get("hits") or []
        lang = state["lang"]
        label = state["label"]
        history = state.get("history") or []
        handoff: HandoffReason | None = None
        if state["asked_for_human"]:
            handoff = "explicit"
        elif not hits and label != "greeting":
            handoff = "no_answer"
        elif hits and label is None:
            handoff = "low_confidence"
        # Providers word a fixed reply from this: greeting, a requested handoff, or "no passage".
        reply_kind = HANDOFF_INTENT if handoff == "explicit" else (label or "unknown")
        parts: list[str] = []
        provider_name = s.provider.name
        llm_error = None
        args = (state["message"], history, hits, lang, reply_kind)
        try:
            if emit is None:
                parts.append(await s.provider.complete(*args))
            else:
                async for token in s.provider.stream(*args):
                    parts.append(token)
                    emit({"token": token})
        except LLMError as exc:
            llm_error = str(exc)
            broken = isinstance(exc, LLMStreamBroken)
            s.metrics.llm_failures.labels(reason="stream" if broken else "unavailable").inc()
            log.error("LLM failed, falling back to extractive answer: %s", exc)
            provider_name = "extractive"
            if emit is None:
                parts.append(await extractive.complete(*args))
            else:
                if parts:  # already sent: the fallback follows it
                    parts.append("\n\n")
                    emit({"token": "\n\n"})
                async for token in extractive.stream(*args):
                    parts.append(token)
                    emit({"token": token})
        if handoff == "low_confidence":
            offer = HANDOFF_OFFER.get(lang, HANDOFF_OFFER["en"])
            parts.append(offer)
            if emit is not None:
                emit({"token": offer})
        if handoff:
            s.metrics.handoffs.labels(reason=handoff).inc()
        intent = HANDOFF_INTENT if handoff else str(label)
        s.metrics.chat_turns.labels(intent=intent, provider=provider_name).inc()
        return {"answer": "".join(parts), "provider": provider_name, "llm_error": llm_error, "intent": intent,
                "handoff": handoff}

    return Flow.define(
        {"classify": classify, "retrieve": retrieve, "answer": answer},
        first="classify",
        edges={"classify": (route, {"retrieve": "retrieve", "answer": "answer"}), "retrieve": "answer",
               "answer": END},
    )


async def persist(s: Services, state: dict[str, Any], result: TurnResult) -> bool:
    """Store the answered turn (`result` is `result_of(state)`): session memory with its request-id
    record, and MySQL. True when the session memory has it (then a retry finds the record)."""
    if not state.get("persist", True):
        return False
    now = time.time()
    mask = s.masker
    # What is stored (and replayed to a retry) is masked, like everything else at rest.
    answer = mask(state["answer"])
    rid = state["request_id"]
    turn = TurnWrite(
        session_id=state["session_id"], user_id=state.get("user_id"), request_id=rid, ts=now,
        messages=[
            StoredMessage(role="user", content=mask(state["message"]), ts=now, request_id=rid),
            StoredMessage(role="assistant", content=answer, ts=now, request_id=rid, intent=state["intent"],
                          sources=result.sources),
        ],
    )
    remembered, _ = await s.sessions.add_turn(turn, replace(result, answer=answer).record(state["fingerprint"]),
                                              state.get("cache_write"))
    return remembered


def result_of(state: dict[str, Any]) -> TurnResult:
    """The one translation from graph state to what every endpoint answers."""
    return TurnResult(
        request_id=state["request_id"], session_id=state["session_id"], answer=state["answer"],
        intent=state["intent"], confidence=state.get("confidence"),
        sources=[Source(id=h.id, title=h.title, score=h.score) for h in state.get("hits") or []],
    )


@dataclass
class Turn:
    """A chat turn about to run, or the earlier answer to the same request id (a retry)."""

    services: Services
    state: TurnState
    claim: Claim | None = None
    replay: TurnResult | None = None
    remembered: bool = False

    @property
    def session_id(self) -> str:
        return self.replay.session_id if self.replay else self.state["session_id"]

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """("meta", dict), ("token", str) as they happen, then ("final", TurnResult)."""
        if self.replay is not None:
            r = self.replay
            yield "meta", {"intent": r.intent, "confidence": r.confidence, "replayed": True}
            yield "token", r.answer
            yield "final", r
            return
        final: dict[str, Any] = dict(self.state)
        async with self._claimed():
            async for mode, chunk in self._flow.stream(self.state):
                if mode == "custom":
                    if "meta" in chunk:
                        yield "meta", chunk["meta"]
                    elif "token" in chunk:
                        yield "token", chunk["token"]
                else:
                    final = chunk
            result = result_of(final)
            self.remembered = await persist(self.services, final, result)
        yield "final", result

    async def result(self) -> TurnResult:
        """The answer without intermediate events (cheaper: no streaming, no Pregel loop)."""
        if self.replay is not None:
            return self.replay
        async with self._claimed():
            final = await self._flow.run(self.state)
            result = result_of(final)
            self.remembered = await persist(self.services, final, result)
        return result

    @property
    def _flow(self) -> Flow:
        assert self.services.flow is not None, "build_services sets the flow"
        return self.services.flow

    @contextlib.asynccontextmanager
    async def _claimed(self) -> AsyncIterator[None]:
        """Holds the request-id claim while the turn runs; gives it back if the turn was not stored."""
        self.remembered = False
        try:
            yield
        finally:
            if self.claim is not None:
                await self.services.turns.end(self.claim, answered=self.remembered)


async def begin_turn(s: Services, *, message: str, session_id: str | None, request_id: str,
                     identity: str | None = None, user_id: str | None = None,
                     history: list[dict[str, Any]] | None = None, persist: bool = True,
                     must_exist: bool = False, rate: RateCheck | None = None) -> Turn:
    """Prepare a turn: the session's history (unless given) and the claim on `request_id`.

    `session_id` None starts a new session. `must_exist` raises UnknownSession when no backend
    knows `session_id`. Raises RequestIdConflict / TurnInFlight (turns.py) for a reused request id.
    A retry of an answered request gets a Turn that replays the stored answer. Stateless turns
    (`persist` False) store nothing, so they need no claim. `rate` is hit on the claim's round
    trip (RateLimited when refused); only persisted turns take one.
    """
    if rate is not None and not persist:
        raise ValueError("a rate check rides on the request-id claim; stateless turns have none")
    fp = fingerprint(identity, session_id, message)
    state: TurnState = {
        "request_id": request_id, "session_id": session_id or os.urandom(16).hex(), "user_id": user_id,
        "message": message, "lang": detect_lang(message), "persist": persist, "history": history or [],
        "fingerprint": fp,
    }
    read_history = history is None and session_id is not None
    if not persist:
        if read_history:
            state["history"] = await _history(s, session_id, None, must_exist)  # type: ignore[arg-type]
        return Turn(s, state)
    begun = await s.turns.begin(request_id, fp, session_id if read_history else None,
                                s.encoder.shared_key(message), rate)
    if begun.looked_up:
        state["cached_embedding"] = CacheLookup(begun.cached)
    if read_history:
        try:
            state["history"] = await _history(s, session_id, begun.history, must_exist)  # type: ignore[arg-type]
        except UnknownSession:
            if isinstance(begun.outcome, Claim):
                await s.turns.end(begun.outcome, answered=False)
            raise
    if isinstance(begun.outcome, TurnResult):
        return Turn(s, state, replay=begun.outcome)
    return Turn(s, state, claim=begun.outcome)


async def _history(s: Services, session_id: str, in_memory: list[dict[str, Any]] | None,
                   must_exist: bool) -> list[dict[str, Any]]:
    """The session's recent messages: memory's copy when it has one, else the repository's answer
    ("Redis, else MySQL"). Raises UnknownSession when `must_exist` and no backend knows the session."""
    limit = s.settings.memory_max_turns * 2
    if in_memory:
        return in_memory[-limit:]
    try:
        history = await s.sessions.read(session_id, limit)
    except SessionsUnavailable as exc:
        log.error("session history unavailable, answering without it: %s", exc.__cause__ or exc)
        return []
    if history is None:
        if must_exist:
            raise UnknownSession(session_id)
        return []
    return history
