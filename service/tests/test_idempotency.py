"""A retried request id (nginx `proxy_next_upstream` to another instance) is answered once, stored once."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest

from chatagent.app import create_app
from chatagent.turns import fingerprint

from .servers import LiveServer


def rid() -> str:
    return "retry-" + uuid.uuid4().hex


def history_len(redis_server, client, session_id: str) -> int:  # noqa: ANN001
    return redis_server.client().llen(f"{client.settings.redis_prefix}:session:{session_id}")


def stored_rows(mariadb, request_id: str) -> list[dict]:  # noqa: ANN001
    return mariadb.query("SELECT conversation_id, role FROM messages WHERE request_id=%s ORDER BY id", (request_id,))


def test_retried_new_session_turn_replays_the_answer(client, redis_server, mariadb) -> None:
    request_id = rid()
    first = client.post("/api/v1/chat", json={"message": "How do I return an item?"},
                        headers={"X-Request-ID": request_id})
    again = client.post("/api/v1/chat", json={"message": "How do I return an item?"},
                        headers={"X-Request-ID": request_id})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert first.json()["request_id"] == request_id
    sid = first.json()["session_id"]
    assert history_len(redis_server, client, sid) == 2
    assert stored_rows(mariadb, request_id) == [{"conversation_id": sid, "role": "user"},
                                                {"conversation_id": sid, "role": "assistant"}]
    # the retry did not open a second conversation either
    assert client.get(f"/api/v1/sessions/{sid}").json()["messages"][1]["request_id"] == request_id


def test_retry_on_stream_and_openai_endpoints_does_not_append_again(client, redis_server, mariadb) -> None:
    sid = client.post("/api/v1/chat", json={"message": "How long does delivery take?"}).json()["session_id"]
    request_id = rid()
    body = {"message": "How much does shipping cost?", "session_id": sid}
    first = client.post("/api/v1/chat", json=body, headers={"X-Request-ID": request_id}).json()
    raw = client.post("/api/v1/chat/stream", json=body, headers={"X-Request-ID": request_id}).text
    events = [(b.split("\n")[0][7:], json.loads(b.split("\n")[1][6:])) for b in raw.strip().split("\n\n")]
    assert [e for e, _ in events] == ["meta", "token", "sources", "done"]
    done = events[-1][1]
    assert (done["answer"], done["session_id"], done["intent"]) == (first["answer"], sid, first["intent"])
    assert events[-2][1]["sources"] == first["sources"]
    assert history_len(redis_server, client, sid) == 4
    assert len(stored_rows(mariadb, request_id)) == 2

    oai_id = rid()
    oai = {"model": "chatagent", "messages": [{"role": "user", "content": "How do I get an invoice?"}]}
    headers = {"X-Request-ID": oai_id, "X-Session-Id": sid}
    a = client.post("/v1/chat/completions", json=oai, headers=headers).json()
    b = client.post("/v1/chat/completions", json=oai, headers=headers).json()
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert "[invoices-request-en]" in a["choices"][0]["message"]["content"]
    assert history_len(redis_server, client, sid) == 6
    assert len(stored_rows(mariadb, oai_id)) == 2


def test_reused_request_id_for_another_question_is_refused(client, mariadb) -> None:
    request_id = rid()
    assert client.post("/api/v1/chat", json={"message": "How do I return an item?"},
                       headers={"X-Request-ID": request_id}).status_code == 200
    other = client.post("/api/v1/chat", json={"message": "How do I track my order?"},
                        headers={"X-Request-ID": request_id})
    assert other.status_code == 409 and request_id in other.json()["detail"]
    assert len(stored_rows(mariadb, request_id)) == 2


def test_malformed_request_id_is_replaced_not_trusted(client) -> None:
    a = client.post("/api/v1/chat", json={"message": "hello"}, headers={"X-Request-ID": "bad id!"}).json()
    b = client.post("/api/v1/chat", json={"message": "hello"}, headers={"X-Request-ID": "bad id!"}).json()
    assert a["request_id"] != "bad id!" and a["request_id"] != b["request_id"]
    assert a["session_id"] != b["session_id"]


@pytest.fixture
def two_instances(settings_factory, fake_llm):  # noqa: ANN001, ANN201
    """Two app instances sharing Redis and MariaDB, answering through a slow LLM."""
    settings = settings_factory(llm_provider="openai", llm_base_url=fake_llm["url"], llm_max_retries=0)
    fake_llm.update(mode="slow", delay=1.5)
    fake_llm["requests"].clear()
    try:
        with LiveServer(create_app(settings)) as a, LiveServer(create_app(settings)) as b:
            yield a, b, settings
    finally:
        fake_llm["mode"] = "ok"


def test_retry_while_first_attempt_is_in_flight_is_answered_once(two_instances, fake_llm, redis_server,
                                                                  mariadb) -> None:
    a, b, settings = two_instances
    request_id = rid()
    body = {"message": "How do I cancel an order?"}
    results: dict[str, httpx.Response] = {}

    def post(name: str, url: str) -> None:
        results[name] = httpx.post(url + "/api/v1/chat", json=body, headers={"X-Request-ID": request_id}, timeout=30)

    first = threading.Thread(target=post, args=("a", a.url))
    first.start()
    time.sleep(0.5)  # the first attempt is waiting for the LLM now
    post("b", b.url)
    first.join()
    assert results["a"].status_code == results["b"].status_code == 200
    assert results["a"].json() == results["b"].json()
    assert "FAKE-LLM" in results["a"].json()["answer"]
    assert len(fake_llm["requests"]) == 1  # instance b never ran the turn
    sid = results["a"].json()["session_id"]
    assert redis_server.client().llen(f"{settings.redis_prefix}:session:{sid}") == 2
    assert len(stored_rows(mariadb, request_id)) == 2


def test_retry_takes_over_when_the_first_attempt_died(client_factory, redis_server, mariadb) -> None:
    client = client_factory(turn_lease_seconds=0.5)
    request_id = rid()
    message = "How do I track my order?"
    # A worker claimed this request id and died before answering: its lease is never renewed.
    dead = json.dumps({"state": "pending", "fp": fingerprint(None, None, message), "token": "dead-worker"})
    redis_server.client().set(f"{client.settings.redis_prefix}:turn:{request_id}", dead, px=500)
    started = time.monotonic()
    resp = client.post("/api/v1/chat", json={"message": message}, headers={"X-Request-ID": request_id})
    assert resp.status_code == 200, resp.text
    assert time.monotonic() - started >= 0.3  # it waited for the lease instead of answering twice at once
    assert resp.json()["sources"][0]["id"] == "orders-track-en"
    assert len(stored_rows(mariadb, request_id)) == 2


def test_retry_with_redis_down_is_answered_from_mysql(client, redis_server, mariadb) -> None:
    request_id = rid()
    redis_server.stop()
    try:
        first = client.post("/api/v1/chat", json={"message": "How do I get an invoice?"},
                            headers={"X-Request-ID": request_id})
        again = client.post("/api/v1/chat", json={"message": "How do I get an invoice?"},
                            headers={"X-Request-ID": request_id})
    finally:
        redis_server.start()
    assert first.status_code == again.status_code == 200
    assert again.json()["answer"] == first.json()["answer"]
    assert again.json()["session_id"] == first.json()["session_id"]
    assert again.json()["sources"] == first.json()["sources"]
    assert len(stored_rows(mariadb, request_id)) == 2
