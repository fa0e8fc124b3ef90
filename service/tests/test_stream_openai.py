"""SSE framing and the official `openai` SDK over real HTTP (uvicorn on loopback)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from chatagent.app import create_app

from .servers import LiveServer


@pytest.fixture
def live(settings_factory):  # noqa: ANN001, ANN201
    settings = settings_factory(api_keys="sk-live-1")
    with LiveServer(create_app(settings)) as server:
        server.settings = settings
        yield server


def parse_sse(raw: str) -> list[tuple[str, dict]]:
    events = []
    assert raw.endswith("\n\n")
    for block in raw.strip("\n").split("\n\n"):
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ") and len(lines) == 2, block
        events.append((lines[0][7:], json.loads(lines[1][6:])))
    return events


def test_sse_framing(live) -> None:
    with httpx.Client(base_url=live.url, headers={"Authorization": "Bearer sk-live-1"}) as http:
        with http.stream("POST", "/api/v1/chat/stream", json={"message": "How do I cancel an order?"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers["x-accel-buffering"] == "no"
            assert resp.headers["cache-control"] == "no-cache"
            raw = "".join(resp.iter_text())
    events = parse_sse(raw)
    names = [e for e, _ in events]
    assert names[0] == "meta" and names[-2:] == ["sources", "done"]
    assert set(names[1:-2]) == {"token"} and len(names) > 5
    meta, done = events[0][1], events[-1][1]
    assert meta["intent"] == "orders" and meta["request_id"] == done["request_id"]
    assert "".join(d["text"] for e, d in events if e == "token") == done["answer"]
    assert events[-2][1]["sources"][0]["id"] == "orders-cancel-en"
    # the streamed turn is a normal session afterwards
    history = httpx.get(f"{live.url}/api/v1/sessions/{done['session_id']}",
                        headers={"Authorization": "Bearer sk-live-1"}).json()
    assert history["messages"][1]["content"] == done["answer"]


def test_openai_sdk_plain_and_streaming(live, redis_server) -> None:
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="sk-live-1", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["chatagent"]

    plain = client.chat.completions.create(
        model="chatagent", messages=[{"role": "user", "content": "How do I get an invoice?"}]
    )
    assert plain.object == "chat.completion"
    assert plain.choices[0].finish_reason == "stop"
    assert "[invoices-request-en]" in plain.choices[0].message.content
    assert plain.usage.total_tokens > 0

    stream = client.chat.completions.create(
        model="chatagent", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "be nice"}, {"role": "user", "content": "How do I get an invoice?"}],
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert len({c.id for c in chunks}) == 1


def test_openai_raw_stream_ends_with_done(live) -> None:
    with httpx.Client(base_url=live.url, headers={"Authorization": "Bearer sk-live-1"}) as http:
        resp = http.post("/v1/chat/completions", json={
            "model": "chatagent", "stream": True, "messages": [{"role": "user", "content": "hello"}]})
    blocks = resp.text.split("\n\n")
    assert blocks[-1] == "" and blocks[-2] == "data: [DONE]"
    assert all(b.startswith("data: {") for b in blocks[:-2])
    last = json.loads(blocks[-3][6:])
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"


def test_openai_session_header_keeps_memory(live, redis_server) -> None:
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="sk-live-1", max_retries=0,
                           default_headers={"X-Session-Id": "sdk-session-1"})
    for q in ["How long does delivery take?", "Do you ship internationally?"]:
        client.chat.completions.create(model="chatagent", messages=[{"role": "user", "content": q}])
    key = f"{live.settings.redis_prefix}:session:sdk-session-1"
    assert redis_server.client().llen(key) == 4
    # without header or user: stateless, nothing stored
    before = set(redis_server.client().keys(f"{live.settings.redis_prefix}:session:*"))
    openai.OpenAI(base_url=live.url + "/v1", api_key="sk-live-1").chat.completions.create(
        model="chatagent", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                                     {"role": "user", "content": "How do I cancel an order?"}])
    assert set(redis_server.client().keys(f"{live.settings.redis_prefix}:session:*")) == before


def test_openai_sdk_rejects_bad_key(live) -> None:
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_concurrent_turns_are_all_stored(live, mariadb, redis_server) -> None:
    import asyncio

    questions = ["How do I track my order?", "退款多久到账？", "How do I get an invoice?", "hello"] * 6

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": "Bearer sk-live-1"},
                                     timeout=30) as http:
            resps = await asyncio.gather(*(http.post("/api/v1/chat", json={"message": q}) for q in questions))
        assert all(r.status_code == 200 for r in resps)
        return [r.json() for r in resps]

    bodies = asyncio.run(run())
    for body in bodies:
        rows = mariadb.query("SELECT conversation_id, role FROM messages WHERE request_id=%s ORDER BY id",
                             (body["request_id"],))
        assert rows == [{"conversation_id": body["session_id"], "role": "user"},
                        {"conversation_id": body["session_id"], "role": "assistant"}]
        key = f"{live.settings.redis_prefix}:session:{body['session_id']}"
        assert redis_server.client().llen(key) == 2
