"""The one-shot walk of the flow (`Flow.run`) and the compiled LangGraph graph (streamed turns) end a
turn in the same state on every route, and the streamed events carry what the JSON answer says."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
import pytest

from chatagent.app import build_services, close_services
from chatagent.graph import begin_turn
from chatagent.metrics import Metrics

MESSAGES = [
    "hello",  # greeting: no retrieval
    "转人工",  # the user asks for a person: no retrieval
    "I need an invoice for my order",  # classify → retrieve → answer
    "What is the airspeed velocity of an unladen swallow?",  # nothing found: handoff offer
]


def comparable(state: dict[str, Any]) -> dict[str, Any]:
    out = dict(state)
    out["vector"] = np.asarray(out["vector"]).tolist()
    return out


@pytest.mark.parametrize("message", MESSAGES)
def test_run_and_langgraph_end_in_the_same_state(settings_factory, message: str) -> None:
    async def scenario() -> None:
        services = await build_services(settings_factory(), Metrics())
        try:
            assert services.flow is not None
            turn = await begin_turn(services, message=message, session_id=None, request_id=uuid.uuid4().hex,
                                    persist=False)
            direct = await services.flow.run(turn.state)
            graph = await services.flow.graph.ainvoke(turn.state)
            assert comparable(direct) == comparable(graph)
            assert direct["answer"] and direct["intent"]

            events = [(kind, value) async for kind, value in turn.events()]
            kinds = [kind for kind, _ in events]
            assert kinds[0] == "meta" and kinds[-1] == "final" and "token" in kinds
            final = events[-1][1]
            assert "".join(v for k, v in events if k == "token") == final.answer == direct["answer"]
            assert final.intent == direct["intent"]
            assert [s.id for s in final.sources] == [h.id for h in direct.get("hits") or []]
        finally:
            await close_services(services)

    asyncio.run(scenario())
