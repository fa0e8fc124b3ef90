"""/ready under dependency outages, and no lost turns while MySQL is down."""

from __future__ import annotations

import json
import time

import pytest

from .servers import wait_until


def test_ready_ok_with_all_dependencies(client) -> None:
    resp = client.get("/ready")
    assert resp.status_code == 200, resp.text
    checks = resp.json()["checks"]
    assert set(checks) == {"redis", "mysql", "knowledge_base"}
    assert checks["mysql"]["schema_version"] >= 1
    assert checks["knowledge_base"]["chunks"] == 69


def test_ready_503_when_redis_stops_and_recovers(client, redis_server) -> None:
    redis_server.stop()
    try:
        resp = client.get("/ready")
        assert resp.status_code == 503
        body = resp.json()
        assert body["checks"]["redis"]["ok"] is False and body["checks"]["mysql"]["ok"] is True
        # a chat turn still answers (no history, no rate limit) instead of failing
        chat = client.post("/api/v1/chat", json={"message": "How do I track my order?"})
        assert chat.status_code == 200
        assert chat.json()["sources"][0]["id"] == "orders-track-en"
    finally:
        redis_server.start()
    wait_until(lambda: client.get("/ready").status_code == 200)


def test_mysql_outage_loses_no_turn(client, mariadb, redis_server) -> None:
    sid = client.post("/api/v1/chat", json={"message": "How do I track my order?"}).json()["session_id"]
    mariadb.stop()
    try:
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["mysql"]["ok"] is False
        turns = []
        for q in ["How much does shipping cost?", "Do you ship internationally?"]:
            resp = client.post("/api/v1/chat", json={"message": q, "session_id": sid})
            assert resp.status_code == 200, resp.text
            turns.append(resp.json()["request_id"])
        rid = turns[-1]
        fb = client.post("/api/v1/feedback", json={"request_id": rid, "score": 4})
        assert fb.status_code == 202 and fb.json()["stored"] == "pending"
        pending_key = f"{client.settings.redis_prefix}:pending"
        queued = [json.loads(x) for x in redis_server.client().lrange(pending_key, 0, -1)]
        assert [op["kind"] for op in queued] == ["turn", "turn", "feedback"]
        # the conversation is intact in Redis meanwhile
        history = client.get(f"/api/v1/sessions/{sid}").json()["messages"]
        assert len(history) == 6
        assert "chatagent_pending_writes_total" in client.get("/metrics").text
    finally:
        mariadb.start()
    wait_until(lambda: redis_server.client().llen(f"{client.settings.redis_prefix}:pending") == 0)
    rows = mariadb.query("SELECT request_id, role FROM messages WHERE conversation_id=%s ORDER BY id", (sid,))
    assert len(rows) == 6 and rows[-1]["request_id"] == turns[-1]
    assert mariadb.query("SELECT score FROM feedback WHERE request_id=%s", (turns[-1],)) == [{"score": 4}]
    wait_until(lambda: client.get("/ready").status_code == 200)


def test_replay_is_idempotent(client, mariadb) -> None:
    import asyncio

    from chatagent.store import WRITE_OP, MySQLStore

    store = MySQLStore(client.app.state.services.store.params)
    now = time.time()
    # the JSON a pending queue holds (also what earlier releases queued)
    op = WRITE_OP.validate_json(json.dumps({
        "kind": "turn", "session_id": "idem-1", "user_id": None, "request_id": "idem-req-1", "ts": now,
        "messages": [{"role": "user", "content": "a", "ts": now, "request_id": "idem-req-1"},
                     {"role": "assistant", "content": "b", "ts": now, "request_id": "idem-req-1"}]}))
    store.apply(op)
    store.apply(op)  # a replay after a flusher crash must not duplicate rows
    assert mariadb.query("SELECT COUNT(*) AS n FROM messages WHERE request_id='idem-req-1'") == [{"n": 2}]
    asyncio.run(asyncio.sleep(0))


def test_history_comes_from_mysql_while_redis_is_down(client, redis_server, mariadb) -> None:
    sid = client.post("/api/v1/chat", json={"message": "How do I track my order?"}).json()["session_id"]
    redis_server.stop()
    try:
        history = client.get(f"/api/v1/sessions/{sid}")
        assert history.status_code == 200
        assert [m["content"] for m in history.json()["messages"]][:1] == ["How do I track my order?"]
        # a session neither backend can vouch for is not called unknown while Redis cannot answer
        mariadb.stop()
        try:
            down = client.get("/api/v1/sessions/never-seen-1")
            assert down.status_code == 503 and down.headers["retry-after"]
            turn = client.post("/api/v1/chat", json={"message": "How much does shipping cost?", "session_id": sid})
            assert turn.status_code == 200 and turn.json()["session_id"] == sid
        finally:
            mariadb.start()
    finally:
        redis_server.start()
    wait_until(lambda: client.get("/ready").status_code == 200)


def test_turns_survive_redis_forgetting_its_scripts(client, redis_server) -> None:
    # The turn's opening and append are Redis scripts called by digest; a restarted Redis (empty
    # script cache) must cost a reload, not a turn.
    first = client.post("/api/v1/chat", json={"message": "How long does delivery take?"})
    assert first.status_code == 200
    redis_server.client().script_flush()
    sid = first.json()["session_id"]
    second = client.post("/api/v1/chat", json={"message": "And returns?", "session_id": sid})
    assert second.status_code == 200
    stored = redis_server.client().lrange(f"{client.settings.redis_prefix}:session:{sid}", 0, -1)
    assert len(stored) == 4


def _turn(session_id: str, request_id: str, content: str, ts: float):
    from chatagent.store import StoredMessage, TurnWrite

    return TurnWrite(session_id=session_id, request_id=request_id, ts=ts, messages=[
        StoredMessage(role="user", content=content, ts=ts, request_id=request_id),
        StoredMessage(role="assistant", content=content[::-1], ts=ts, request_id=request_id, intent="returns")])


def test_batch_is_one_transaction_even_across_queries(client, mariadb) -> None:
    import pymysql

    from chatagent.store import MAX_QUERY_CHARS, FeedbackWrite, MySQLStore

    store = MySQLStore(client.app.state.services.store.params)
    now = time.time()
    tricky = "退货; DROP TABLE messages; -- 'quoted' \"double\" back\\slash %s {} \x00end"
    # A statement that fails after others already ran in the same multi-statement query: nothing of
    # the batch stays, and the error reaches the caller (which queues the batch for a replay).
    bad = [_turn("batch-1", "batch-req-1", tricky, now), FeedbackWrite(request_id="batch-req-1", score=1000, ts=now),
           _turn("batch-1", "batch-req-2", "after", now)]
    with pytest.raises(pymysql.err.DataError):
        store.apply(*bad)
    assert mariadb.query("SELECT COUNT(*) AS n FROM messages WHERE conversation_id='batch-1'") == [{"n": 0}]
    assert mariadb.query("SELECT COUNT(*) AS n FROM conversations WHERE id='batch-1'") == [{"n": 0}]
    # The same store goes on (the failed connection was dropped); text comes back byte for byte.
    store.apply(_turn("batch-1", "batch-req-1", tricky, now))
    rows = mariadb.query("SELECT role, content FROM messages WHERE conversation_id='batch-1' ORDER BY id")
    assert [r["content"] for r in rows] == [tricky, tricky[::-1]]
    # A batch larger than one query (30 turns x 2 x 40,000 characters ~ 2.4 M) still commits whole.
    big = [_turn("batch-2", f"batch-big-{i}", f"{i:02d}" + "字" * 40_000, now) for i in range(30)]
    assert sum(len(m.content) for t in big for m in t.messages) > 2 * MAX_QUERY_CHARS
    store.apply(*big)
    got = mariadb.query("SELECT COUNT(*) AS n, SUM(CHAR_LENGTH(content)) AS chars FROM messages "
                        "WHERE conversation_id='batch-2'")
    assert got[0]["n"] == 60 and int(got[0]["chars"]) == 60 * 40_002
    store.close()
