"""Replicated MySQL (issue 12): CHATAGENT_MYSQL_HOSTS lists every server and writes go to the one
that is not read_only. A promotion (replica made writable, old primary gone or read-only) is followed
without a restart; writes made while no server takes them wait in the pending queue and are replayed
exactly once."""

from __future__ import annotations

import contextlib
import time

import pymysql
import pytest

from chatagent.settings import Settings

from .servers import free_port, wait_until


@contextlib.contextmanager
def read_only(mariadb):  # noqa: ANN001, ANN201
    def set_ro(value: int) -> None:
        with contextlib.closing(pymysql.connect(unix_socket=str(mariadb.socket), user="root")) as conn, \
                conn.cursor() as cur:
            cur.execute(f"SET GLOBAL read_only = {value}")

    set_ro(1)
    try:
        yield set_ro
    finally:
        set_ro(0)


def test_mysql_hosts_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATAGENT_MYSQL_HOSTS", "10.0.0.1:3307, 10.0.0.2")
    params = Settings(_env_file=None).mysql_params()
    assert params is not None and params["hosts"] == [("10.0.0.1", 3307), ("10.0.0.2", 3306)]
    assert Settings(_env_file=None).mysql_display().startswith("mysql://chatagent:***@10.0.0.1:3307,10.0.0.2:3306/")
    monkeypatch.setenv("CHATAGENT_MYSQL_HOSTS", "10.0.0.9")
    single = Settings(_env_file=None).mysql_params()
    assert single is not None and "hosts" not in single and single["host"] == "10.0.0.9"


def test_writes_follow_the_writable_server(client_factory, mariadb, redis_server) -> None:
    dead = free_port()  # a primary that is gone: nothing listens there
    client = client_factory(mysql_url=None, mysql_hosts=[f"127.0.0.1:{dead}", f"127.0.0.1:{mariadb.port}"],
                            mysql_user=mariadb.user, mysql_password=mariadb.password,
                            mysql_database=mariadb.database)
    store = client.app.state.services.store
    assert store.hosts == [("127.0.0.1", dead), ("127.0.0.1", mariadb.port)]
    first = client.post("/api/v1/chat", json={"message": "How do I track my order?"})
    assert first.status_code == 200
    sid = first.json()["session_id"]
    assert store._writable == 1, "the reachable, writable server takes the writes"
    wait_until(lambda: len(mariadb.query("SELECT id FROM messages WHERE conversation_id=%s", (sid,))) == 2)

    # No server takes writes (the surviving one is still a read-only replica): answers continue,
    # the turns wait in the pending queue; then the replica is promoted and they land once.
    store.close()  # pooled connections were made while it was writable
    with read_only(mariadb) as set_ro:
        assert client.get("/ready").status_code == 503
        rids = []
        for q in ["How much does shipping cost?", "Do you ship internationally?"]:
            resp = client.post("/api/v1/chat", json={"message": q, "session_id": sid})
            assert resp.status_code == 200, resp.text
            rids.append(resp.json()["request_id"])
        pending = f"{client.settings.redis_prefix}:pending"
        assert redis_server.client().llen(pending) == 2
        assert not mariadb.query("SELECT id FROM messages WHERE request_id=%s", (rids[0],))
        set_ro(0)  # the promotion
        wait_until(lambda: redis_server.client().llen(pending) == 0)
    for rid in rids:
        rows = mariadb.query("SELECT role FROM messages WHERE request_id=%s ORDER BY role", (rid,))
        assert [r["role"] for r in rows] == ["assistant", "user"], rows
    wait_until(lambda: client.get("/ready").status_code == 200)
