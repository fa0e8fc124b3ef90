"""Public web chat sessions: tokens, Origin/CORS, rate limits shared through Redis, bearer API unchanged."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from chatagent.app import create_app
from chatagent.public_tokens import PublicTokens, TokenError
from chatagent.settings import Settings

PAGE = "https://chat.example.test"
SHOP = "https://shop.example.test"
SECRET = "s3cret-" + "x" * 32
API_KEY = "server-key-" + "k" * 30


@pytest.fixture
def public_factory(settings_factory) -> Iterator[Any]:  # noqa: ANN001
    """Apps in public mode; `address` is the peer TestClient reports, so two apps sharing a Redis
    prefix are two workers (or app hosts) seeing the same or different browsers."""
    stack = contextlib.ExitStack()

    def make(address: str = "203.0.113.7", settings: Settings | None = None, **overrides: Any) -> TestClient:
        values: dict[str, Any] = {
            "public_enabled": True, "public_token_secret": SECRET, "public_allowed_origins": f"{PAGE},{SHOP}",
            "api_keys": API_KEY,
        }
        values.update(overrides)
        settings = settings or settings_factory(**values)
        client = stack.enter_context(TestClient(create_app(settings), client=(address, 40000),
                                                raise_server_exceptions=False))
        client.settings = settings  # type: ignore[attr-defined]
        return client

    yield make
    stack.close()


def open_session(client: TestClient, origin: str = PAGE) -> dict[str, Any]:
    resp = client.post("/api/public/v1/sessions", headers={"Origin": origin})
    assert resp.status_code == 201, resp.text
    return resp.json()


def say(client: TestClient, session: dict[str, Any], message: str, origin: str = PAGE) -> list[tuple[str, dict]]:
    resp = client.post(f"/api/public/v1/sessions/{session['session_id']}/stream", json={"message": message},
                       headers={"Origin": origin, "Authorization": f"Bearer {session['token']}"})
    assert resp.status_code == 200, resp.text
    events = []
    for block in resp.text.strip().split("\n\n"):
        event, data = block.split("\n")
        events.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_tokens_bind_session_and_expire() -> None:
    tokens = PublicTokens(SECRET, ttl_seconds=600)
    issued = tokens.issue(now=1000)
    assert tokens.verify(issued.token, now=1599).session_id == issued.session_id
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(issued.token, now=1600)
    with pytest.raises(TokenError, match="invalid"):
        PublicTokens("another-" + SECRET, 600).verify(issued.token, now=1000)
    head, _, sig = issued.token.rpartition(".")
    with pytest.raises(TokenError, match="invalid"):
        tokens.verify(head + "." + sig[::-1], now=1000)
    with pytest.raises(ValueError):
        PublicTokens("short", 600)


def test_public_mode_needs_secret_and_origins(settings_factory) -> None:  # noqa: ANN001
    with pytest.raises(ValidationError, match="PUBLIC_TOKEN_SECRET"):
        settings_factory(public_enabled=True, public_allowed_origins=PAGE)
    with pytest.raises(ValidationError, match="PUBLIC_ALLOWED_ORIGINS"):
        settings_factory(public_enabled=True, public_token_secret=SECRET)
    with pytest.raises(ValueError, match="scheme://host"):
        create_app(settings_factory(public_enabled=True, public_token_secret=SECRET,
                                    public_allowed_origins="https://shop.example.test/"))


def test_public_routes_absent_unless_enabled(client_factory) -> None:  # noqa: ANN001
    client = client_factory()
    assert client.post("/api/public/v1/sessions", headers={"Origin": PAGE}).status_code == 404


def test_conversation_without_api_key(public_factory) -> None:  # noqa: ANN001
    client = public_factory()
    session = open_session(client)
    events = say(client, session, "How do I return an item?")
    names = [e for e, _ in events]
    assert names[0] == "meta" and names[-2:] == ["sources", "done"] and names.count("token") > 1
    assert events[-2][1]["sources"], "the answer cites the knowledge base"
    assert events[-1][1]["session_id"] == session["session_id"]
    zh = say(client, session, "怎么退货")
    assert "退" in zh[-1][1]["answer"]
    handoff = say(client, session, "转人工")
    assert handoff[-1][1]["intent"] == "handoff"
    resp = client.get(f"/api/public/v1/sessions/{session['session_id']}",
                      headers={"Authorization": f"Bearer {session['token']}"})  # same-origin GET: no Origin
    assert resp.status_code == 200
    assert [m["role"] for m in resp.json()["messages"]] == ["user", "assistant"] * 3
    assert resp.json()["messages"][1]["sources"] == events[-2][1]["sources"]
    # The server-to-server API still wants its bearer key.
    assert client.post("/api/v1/chat", json={"message": "hi"}).status_code == 401
    assert client.post("/api/v1/chat", json={"message": "hi"},
                       headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert client.post("/api/v1/chat", json={"message": "hi"},
                       headers={"Authorization": f"Bearer {session['token']}"}).status_code == 401


def test_new_session_has_empty_history(public_factory) -> None:  # noqa: ANN001
    client = public_factory()
    session = open_session(client)
    resp = client.get(f"/api/public/v1/sessions/{session['session_id']}",
                      headers={"Authorization": f"Bearer {session['token']}"})
    assert resp.status_code == 200 and resp.json()["messages"] == []


def test_origin_is_checked_and_cors_only_for_listed(public_factory) -> None:  # noqa: ANN001
    client = public_factory()
    refused = client.post("/api/public/v1/sessions", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and refused.json()["detail"] == "origin not allowed"
    assert "access-control-allow-origin" not in refused.headers
    assert client.post("/api/public/v1/sessions").status_code == 403  # POST without any Origin
    preflight = client.options("/api/public/v1/sessions", headers={
        "Origin": SHOP, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == SHOP
    evil_preflight = client.options("/api/public/v1/sessions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert evil_preflight.status_code == 403
    session = open_session(client, origin=SHOP)
    resp = client.post(f"/api/public/v1/sessions/{session['session_id']}/stream", json={"message": "hello"},
                       headers={"Origin": SHOP, "Authorization": f"Bearer {session['token']}"})
    assert resp.headers["access-control-allow-origin"] == SHOP
    # The bearer API is not opened to browsers by the public mode.
    assert "access-control-allow-origin" not in client.post(
        "/api/v1/chat", json={"message": "hi"}, headers={"Origin": SHOP}).headers


def test_tokens_refused_expired_forged_or_on_another_session(public_factory) -> None:  # noqa: ANN001
    client = public_factory()
    mine, other = open_session(client), open_session(client)
    url = f"/api/public/v1/sessions/{other['session_id']}"
    assert client.get(url).status_code == 401
    wrong = client.get(url, headers={"Authorization": f"Bearer {mine['token']}"})
    assert wrong.status_code == 403 and "another session" in wrong.json()["detail"]
    expired = PublicTokens(SECRET, 3600).issue(other["session_id"], ttl=-1).token
    resp = client.get(url, headers={"Authorization": f"Bearer {expired}"})
    assert resp.status_code == 401 and resp.json()["detail"] == "token expired"
    forged = PublicTokens("not-the-" + SECRET, 3600).issue(other["session_id"]).token
    assert client.get(url, headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {other['token']}"}).status_code == 200


def test_message_size_limit(public_factory) -> None:  # noqa: ANN001
    client = public_factory(max_message_chars=50)
    session = open_session(client)
    resp = client.post(f"/api/public/v1/sessions/{session['session_id']}/stream", json={"message": "a" * 51},
                       headers={"Origin": PAGE, "Authorization": f"Bearer {session['token']}"})
    assert resp.status_code == 422 and resp.json()["fields"] == ["message"]


def test_rate_limits_per_session_and_per_address_shared_in_redis(public_factory, settings_factory) -> None:  # noqa: ANN001
    settings = settings_factory(
        public_enabled=True, public_token_secret=SECRET, public_allowed_origins=PAGE,
        public_rate_limit_session="3/minute", public_rate_limit_address="8/minute",
        redis_prefix="t" + uuid.uuid4().hex[:10],
    )
    # Two apps on one Redis prefix = two workers or app hosts; the third sees another address.
    worker_a = public_factory(address="198.51.100.1", settings=settings)
    worker_b = public_factory(address="198.51.100.1", settings=settings)
    elsewhere = public_factory(address="198.51.100.2", settings=settings)

    session = open_session(worker_a)  # address count 1
    auth = {"Authorization": f"Bearer {session['token']}"}
    url = f"/api/public/v1/sessions/{session['session_id']}"
    codes = [worker_a.get(url, headers=auth).status_code, worker_b.get(url, headers=auth).status_code,
             worker_a.get(url, headers=auth).status_code, worker_b.get(url, headers=auth).status_code]
    assert codes == [200, 200, 200, 429]  # address count 5
    limited = worker_b.get(url, headers=auth)
    assert limited.json()["detail"] == "rate limit exceeded for this session"
    assert int(limited.headers["retry-after"]) >= 1
    assert worker_b.post("/api/public/v1/sessions", headers={"Origin": PAGE}).status_code == 201  # 7
    assert worker_a.post("/api/public/v1/sessions", headers={"Origin": PAGE}).status_code == 201  # 8
    blocked = worker_b.post("/api/public/v1/sessions", headers={"Origin": PAGE})
    assert blocked.status_code == 429 and blocked.json()["detail"] == "rate limit exceeded for this address"
    fresh = open_session(elsewhere)
    assert say(elsewhere, fresh, "How long does delivery take?")[-1][0] == "done"


def test_unix_socket_peer_uses_the_proxy_address(public_factory, settings_factory) -> None:  # noqa: ANN001
    from chatagent.api.public import client_address
    from starlette.requests import Request

    over_socket = Request({"type": "http", "client": None, "headers": [(b"x-real-ip", b"192.0.2.9")]})
    assert client_address(over_socket) == "192.0.2.9"
    over_tcp = Request({"type": "http", "client": ("10.0.0.5", 1234), "headers": [(b"x-real-ip", b"192.0.2.9")]})
    assert client_address(over_tcp) == "10.0.0.5"
