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
