"""Bearer API keys and the Redis-shared rate limit."""

from __future__ import annotations

from fastapi.testclient import TestClient

from chatagent.app import create_app


def test_auth_required_when_keys_configured(client_factory) -> None:
    client = client_factory(api_keys="key-one,key-two")
    missing = client.post("/api/v1/chat", json={"message": "hi"})
    assert missing.status_code == 401 and missing.json()["detail"] == "missing bearer API key"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = client.post("/api/v1/chat", json={"message": "hi"}, headers={"Authorization": "Bearer key-three"})
    assert wrong.status_code == 401
    basic = client.get("/v1/models", headers={"Authorization": "Basic a2V5LW9uZQ=="})
    assert basic.status_code == 401
    for key in ("key-one", "key-two"):
        ok = client.post("/api/v1/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
    # liveness, readiness and metrics stay open for probes and the nginx-restricted scraper
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert "chatagent_auth_failures_total 3.0" in client.get("/metrics").text


def test_json_list_of_keys(settings_factory) -> None:
    settings = settings_factory(api_keys='["a-key", "b-key"]')
    assert [k.get_secret_value() for k in settings.api_keys] == ["a-key", "b-key"]


def test_auth_off_without_keys(client) -> None:
    assert client.post("/api/v1/chat", json={"message": "hello"}).status_code == 200


def test_rate_limit_shared_between_workers(settings_factory, redis_server) -> None:
    # Two app instances stand in for two Gunicorn workers: the counter lives in Redis.
    settings = settings_factory(api_keys="k1,k2", rate_limit="3/minute")
    headers = {"Authorization": "Bearer k1"}
    with TestClient(create_app(settings)) as w1, TestClient(create_app(settings)) as w2:
        assert w1.post("/api/v1/chat", json={"message": "hello"}, headers=headers).status_code == 200
        assert w2.post("/api/v1/chat", json={"message": "hello"}, headers=headers).status_code == 200
        assert w1.get("/v1/models", headers=headers).status_code == 200
        refused = w2.post("/api/v1/chat", json={"message": "hello"}, headers=headers)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["detail"] == "rate limit exceeded"
        # another key has its own budget
        assert w2.get("/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
    keys = redis_server.client().keys(f"{settings.redis_prefix}:ratelimit*")
    assert keys, "rate-limit counters must live in Redis"


def test_rate_limit_per_ip_without_keys(client_factory) -> None:
    client = client_factory(rate_limit="2/minute")
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models").status_code == 200
    resp = client.get("/v1/models")
    assert resp.status_code == 429 and "retry-after" in resp.headers
    assert client.get("/health").status_code == 200  # probes are never limited


def test_chat_turn_takes_its_rate_limit_hit_in_its_opening_redis_call(client_factory, redis_server) -> None:
    # The turn's hit rides on the request-id claim's Redis call (no `limits` call): it must count on
    # the same Redis list as the standalone limiter, refuse the turn before it claims or stores
    # anything, and answer the same 429 JSON.
    client = client_factory(api_keys="k1", rate_limit="3/minute")
    prefix = client.settings.redis_prefix
    headers = {"Authorization": "Bearer k1"}
    for _ in range(3):
        assert client.post("/api/v1/chat", json={"message": "hello"}, headers=headers).status_code == 200
    refused = client.post("/api/v1/chat", json={"message": "hello"},
                          headers=headers | {"X-Request-ID": "refused-turn-0001"})
    assert refused.status_code == 429
    assert refused.json() == {"detail": "rate limit exceeded"}
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert client.post("/api/v1/chat/stream", json={"message": "hello"}, headers=headers).status_code == 429
    assert client.get("/v1/models", headers=headers).status_code == 429  # one budget for every route
    r = redis_server.client()
    assert not r.exists(f"{prefix}:turn:refused-turn-0001"), "a refused turn must give its claim back"
    counters = r.keys(f"{prefix}:ratelimit:*")
    assert len(counters) == 1 and r.llen(counters[0]) == 3
    assert "chatagent_rate_limited_total 3.0" in client.get("/metrics").text


def test_chat_turns_within_an_app_user_limited_to_its_key_prefix(client_factory, redis_server) -> None:
    # Deployments may narrow the app user's ACL key patterns to the app's prefix
    # (redis_app_key_patterns): Redis checks every KEYS entry of a script against them, so the
    # turn's scripts must name no key outside it (an empty placeholder would get NOPERM).
    prefix = "acl" + redis_server.client().execute_command("ACL", "GENPASS", "32").decode()[:8]
    redis_server.client().execute_command("ACL", "SETUSER", f"{prefix}-app", "on", f">{prefix}-pw",
                                          f"~{prefix}:*", "&*", "+@all")
    port = redis_server.url.rsplit(":", 1)[1]
    client = client_factory(redis_url=f"redis://{prefix}-app:{prefix}-pw@127.0.0.1:{port}",
                            redis_prefix=prefix, rate_limit="100/minute")
    first = client.post("/api/v1/chat", json={"message": "How do I track my order?"})
    assert first.status_code == 200, first.text
    session = first.json()["session_id"]
    again = client.post("/api/v1/chat", json={"message": "How do I track my order?", "session_id": session})
    assert again.status_code == 200, again.text
    assert client.post("/api/v1/chat", json={"message": "How do I track my order?"}).status_code == 200
    assert redis_server.client().llen(f"{prefix}:session:{session}") == 4
    # Each turn really ran its opening script (a refused script fails open: answered, not counted).
    counters = redis_server.client().keys(f"{prefix}:ratelimit:*")
    assert len(counters) == 1 and redis_server.client().llen(counters[0]) == 3


def test_invalid_chat_requests_count_against_the_limit_and_get_429_first(client_factory) -> None:
    # As when the hit came before body validation: a 422 costs a hit, and over the limit a bad
    # request is answered 429, not 422.
    client = client_factory(rate_limit="2/minute")
    assert client.post("/api/v1/chat", json={"message": "   "}).status_code == 422  # empty after strip
    assert client.post("/api/v1/chat", json={"nothing": 1}).status_code == 422  # body validation
    over = client.post("/api/v1/chat", json={"nothing": 1})
    assert over.status_code == 429 and over.json()["detail"] == "rate limit exceeded"
    assert client.post("/api/v1/chat", json={"message": "hello"}).status_code == 429


def test_unknown_session_counts_against_the_limit(client_factory) -> None:
    client = client_factory(rate_limit="2/minute")
    assert client.post("/api/v1/chat", json={"message": "hi", "session_id": "no-such-session"}).status_code == 404
    assert client.post("/api/v1/chat", json={"message": "hello"}).status_code == 200
    assert client.post("/api/v1/chat", json={"message": "hello"}).status_code == 429


def test_chat_rate_limit_without_redis_is_per_process(client_factory) -> None:
    client = client_factory(redis_url=None, rate_limit="2/minute")
    assert client.post("/api/v1/chat", json={"message": "hello"}).status_code == 200
    assert client.post("/api/v1/chat", json={"message": "hello"}).status_code == 200
    refused = client.post("/api/v1/chat", json={"message": "hello"})
    assert refused.status_code == 429 and "retry-after" in refused.headers
