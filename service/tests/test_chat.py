"""Chat endpoint against real Redis and MariaDB (hash embedder over the sample KB)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient


def ask(client: TestClient, message: str, **extra: object) -> dict:
    resp = client.post("/api/v1/chat", json={"message": message, **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_chat_cites_the_returns_entry_and_persists(client, redis_server, mariadb) -> None:
    body = ask(client, "How do I return an item?", user_id="u-1")
    assert set(body) == {"answer", "session_id", "intent", "sources", "request_id"}
    assert body["intent"] == "returns"
    assert body["sources"][0]["id"] == "returns-how-to-en"
    assert "[returns-how-to-en]" in body["answer"]
    assert "Request return" in body["answer"]  # text comes from the KB entry itself
    # memory in Redis under this app's prefix
    r = redis_server.client()
    key = f"{client.settings.redis_prefix}:session:{body['session_id']}"
    stored = [json.loads(x) for x in r.lrange(key, 0, -1)]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert r.ttl(key) > 0
    # and a conversation with two messages in MariaDB
    rows = mariadb.query("SELECT role, intent, request_id FROM messages WHERE conversation_id=%s ORDER BY id",
                         (body["session_id"],))
    assert [(x["role"], x["request_id"]) for x in rows] == [("user", body["request_id"]),
                                                             ("assistant", body["request_id"])]
    conv = mariadb.query("SELECT user_id FROM conversations WHERE id=%s", (body["session_id"],))
    assert conv == [{"user_id": "u-1"}]


def test_chinese_question_gets_chinese_entry(client) -> None:
    body = ask(client, "退款多久到账？")
    assert body["sources"][0]["id"] == "refunds-time-zh"
    assert "到账" in body["answer"]


def test_multi_turn_memory_and_history(client, redis_server) -> None:
    first = ask(client, "How long does delivery take?")
    sid = first["session_id"]
    second = ask(client, "How much does shipping cost?", session_id=sid)
    third = ask(client, "How do I reset my password?", session_id=sid)
    assert second["session_id"] == third["session_id"] == sid
    assert third["sources"][0]["id"] == "accounts-reset-password-en"
    history = client.get(f"/api/v1/sessions/{sid}").json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"] * 3
    assert history["messages"][2]["content"] == "How much does shipping cost?"
    assert history["messages"][5]["request_id"] == third["request_id"]


def test_memory_is_trimmed_to_last_turns(client_factory, redis_server) -> None:
    client = client_factory(memory_max_turns=2)
    sid = ask(client, "How do I cancel an order?")["session_id"]
    for q in ["What payment methods do you accept?", "Can I pay in instalments?", "How do I use a coupon?"]:
        ask(client, q, session_id=sid)
    key = f"{client.settings.redis_prefix}:session:{sid}"
    assert redis_server.client().llen(key) == 4
    msgs = client.get(f"/api/v1/sessions/{sid}").json()["messages"]
    assert msgs[0]["content"] == "Can I pay in instalments?"


def test_unknown_session_is_404(client) -> None:
    resp = client.post("/api/v1/chat", json={"message": "hi", "session_id": "does-not-exist-123"})
    assert resp.status_code == 404
    assert client.get("/api/v1/sessions/does-not-exist-123").status_code == 404
    assert client.delete("/api/v1/sessions/does-not-exist-123").status_code == 404


def test_delete_session_removes_redis_and_mysql(client, redis_server, mariadb) -> None:
    sid = ask(client, "How do I track my order?")["session_id"]
    assert client.delete(f"/api/v1/sessions/{sid}").status_code == 204
    assert client.get(f"/api/v1/sessions/{sid}").status_code == 404
    assert redis_server.client().exists(f"{client.settings.redis_prefix}:session:{sid}") == 0
    assert mariadb.query("SELECT COUNT(*) AS n FROM messages WHERE conversation_id=%s", (sid,))[0]["n"] == 0


def test_validation_errors_name_the_field(client_factory) -> None:
    client = client_factory(max_message_chars=50)
    missing = client.post("/api/v1/chat", json={"session_id": "x"})
    assert missing.status_code == 422
    assert "message" in missing.json()["fields"]
    too_long = client.post("/api/v1/chat", json={"message": "x" * 51})
    assert too_long.status_code == 422 and too_long.json()["fields"] == ["message"]
    blank = client.post("/api/v1/chat", json={"message": "   "})
    assert blank.status_code == 422 and blank.json()["fields"] == ["message"]
    bad_sid = client.post("/api/v1/chat", json={"message": "hi", "session_id": "../../etc"})
    assert bad_sid.status_code == 422 and bad_sid.json()["fields"] == ["session_id"]
    not_json = client.post("/api/v1/chat", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 422


def test_body_size_limit(client_factory) -> None:
    client = client_factory(max_body_bytes=1024)
    resp = client.post("/api/v1/chat", json={"message": "a" * 5000})
    assert resp.status_code == 413
    assert "1024" in resp.json()["detail"]


def test_handoff_on_unknown_question(client, mariadb) -> None:
    body = ask(client, "What is the airspeed velocity of an unladen swallow?")
    assert body["intent"] == "handoff"
    assert body["sources"] == []
    assert "human agent" in body["answer"]
    rows = mariadb.query("SELECT intent FROM messages WHERE request_id=%s AND role='assistant'", (body["request_id"],))
    assert rows == [{"intent": "handoff"}]


def test_intent_routing(client) -> None:
    assert ask(client, "hello")["intent"] == "greeting"
    human = ask(client, "转人工")
    assert human["intent"] == "handoff" and "人工客服" in human["answer"]
    assert ask(client, "I need an invoice for my order")["intent"] == "invoices"
    assert ask(client, "my payment failed")["intent"] == "payments"


def test_feedback_is_stored(client, mariadb) -> None:
    rid = ask(client, "How do I get an invoice?")["request_id"]
    resp = client.post("/api/v1/feedback", json={"request_id": rid, "score": 5, "comment": "call me 13812345678"})
    assert resp.status_code == 202 and resp.json()["stored"] == "mysql"
    rows = mariadb.query("SELECT score, comment FROM feedback WHERE request_id=%s", (rid,))
    assert rows == [{"score": 5, "comment": "call me 138****5678"}]
    assert client.post("/api/v1/feedback", json={"request_id": "nope-nope-1", "score": 3}).status_code == 404
    assert client.post("/api/v1/feedback", json={"request_id": rid, "score": 9}).status_code == 422


def test_health_and_request_id_header(client) -> None:
    resp = client.get("/health")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    assert len(resp.headers["x-request-id"]) == 32
    echoed = client.get("/health", headers={"X-Request-Id": "abcdef123456"})
    assert echoed.headers["x-request-id"] == "abcdef123456"


def test_history_survives_redis_loss(client_factory, fake_llm, redis_server) -> None:
    # With the LLM provider the history sent upstream shows what memory the agent had.
    fake_llm["mode"] = "ok"
    client = client_factory(llm_provider="openai", llm_base_url=fake_llm["url"])
    sid = ask(client, "How do I cancel an order?")["session_id"]
    redis_server.client().delete(f"{client.settings.redis_prefix}:session:{sid}")
    fake_llm["requests"].clear()
    ask(client, "How do I get an invoice?", session_id=sid)
    sent = fake_llm["requests"][-1]["messages"]
    assert sent[1] == {"role": "user", "content": "How do I cancel an order?"}
    assert sent[2]["role"] == "assistant" and sent[-1]["content"] == "How do I get an invoice?"


def test_handoff_reasons_are_counted_apart(client) -> None:
    def handoffs(reason: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f'chatagent_handoffs_total{{reason="{reason}"}}'):
                return float(line.split()[-1])
        return 0.0

    asked, unanswered = handoffs("explicit"), handoffs("no_answer")
    assert ask(client, "转人工")["intent"] == "handoff"
    assert (handoffs("explicit"), handoffs("no_answer")) == (asked + 1, unanswered)
    assert ask(client, "What is the airspeed velocity of an unladen swallow?")["intent"] == "handoff"
    assert (handoffs("explicit"), handoffs("no_answer")) == (asked + 1, unanswered + 1)
    assert ask(client, "How do I return an item?")["intent"] == "returns"
    assert (handoffs("explicit"), handoffs("no_answer")) == (asked + 1, unanswered + 1)
