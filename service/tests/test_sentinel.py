"""Redis through Sentinel (issue 12): real redis-server and redis-sentinel processes on loopback ports.

The app is started once and never restarted: SIGKILL of the primary, Sentinel promotes the replica,
and the same app keeps answering, serves the conversation written before the failure, and writes
its sessions and rate-limit counters into the new primary. The killed primary then comes back with
its old config and Sentinel makes it a replica of the new one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatagent.settings import Settings

from .servers import SentinelCluster, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    c = SentinelCluster(tmp_path_factory.mktemp("sentinel"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def sentinel_settings(cluster: SentinelCluster, **extra: object) -> dict[str, object]:
    return {
        "redis_url": None, "redis_sentinels": cluster.sentinels, "redis_sentinel_service": cluster.service,
        "redis_sentinel_username": cluster.client_user, "redis_sentinel_password": cluster.client_password,
        "redis_username": cluster.app_user, "redis_password": cluster.app_password, **extra,
    }


def window_hits(node, prefix: str) -> int:  # noqa: ANN001
    """Hits recorded by the moving-window limiter (a list per identity and window)."""
    return sum(node.llen(k) for k in node.keys(f"{prefix}:ratelimit*") if node.type(k) == b"list")


def test_settings_parse_sentinels_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATAGENT_REDIS_SENTINELS", "10.0.0.1:26379, 10.0.0.2:26379,[::1]:26380")
    s = Settings(_env_file=None)
    assert s.redis_enabled and s.redis_url is None
    assert s.sentinel_addresses() == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)]
    monkeypatch.setenv("CHATAGENT_REDIS_SENTINELS", "10.0.0.1")
    with pytest.raises(ValueError, match="not host:port"):
        Settings(_env_file=None)


def test_failover_is_followed_without_restart(client_factory, cluster: SentinelCluster) -> None:
    old_primary, replica = cluster.data_ports
    assert cluster.master_port() == old_primary
    client = client_factory(**sentinel_settings(cluster, rate_limit="1000/minute"))
    prefix = client.settings.redis_prefix
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["redis"]["ok"] is True, ready.text

    first = client.post("/api/v1/chat", json={"message": "How do I track my order?"})
    assert first.status_code == 200, first.text
    sid = first.json()["session_id"]
    session_key = f"{prefix}:session:{sid}"
    primary = cluster.admin(old_primary)
    assert primary.llen(session_key) == 2, "the turn went to the primary Sentinel names"
    assert primary.keys(f"{prefix}:ratelimit*"), "rate-limit counters live in the primary too"
    # Replication is asynchronous: the turn must be on the replica before the primary dies.
    assert primary.wait(1, 5000) == 1
    assert cluster.admin(replica).llen(session_key) == 2

    cluster.kill(old_primary)
    killed = time.monotonic()
    statuses: list[int] = []
    promoted_after = None
    while time.monotonic() - killed < 40:
        statuses.append(client.post("/api/v1/chat", json={"message": "How much does shipping cost?"}).status_code)
        if promoted_after is None and cluster.master_port() == replica:
            promoted_after = time.monotonic() - killed
        if promoted_after is not None and time.monotonic() - killed > promoted_after + 2:
            break
        time.sleep(0.1)
    assert promoted_after is not None, "Sentinel did not promote the replica"
    print(f"sentinel promotion after {promoted_after:.1f}s; {len(statuses)} requests during the switch")
    assert statuses and all(s == 200 for s in statuses), statuses

    # The same app, not restarted: the conversation written before the failure is served from the
    # new primary, and the next turn of it is written there.
    new_primary = cluster.admin(replica)
    wait_for(lambda: client.get("/ready").status_code == 200, 20, "ready after failover")
    history = client.get(f"/api/v1/sessions/{sid}")
    assert history.status_code == 200
    assert history.json()["messages"][0]["content"] == "How do I track my order?"
    follow = client.post("/api/v1/chat", json={"message": "And how much does shipping cost?", "session_id": sid})
    assert follow.status_code == 200, follow.text
    assert new_primary.llen(session_key) == 4
    hits_before = window_hits(new_primary, prefix)
    assert client.post("/api/v1/chat", json={"message": "Do you ship internationally?"}).status_code == 200
    hits_after = window_hits(new_primary, prefix)
    assert hits_after == hits_before + 1, "the rate limiter counts in the new primary"

    # The old primary comes back believing it is the primary; Sentinel turns it into a replica.
    cluster.restart_as_configured(old_primary)
    wait_for(lambda: cluster.admin(old_primary).info("replication")["role"] == "slave"
             and cluster.admin(old_primary).info("replication")["master_link_status"] == "up", 40,
             "old primary rejoining as a replica")
    assert cluster.master_port() == replica
    wait_for(lambda: cluster.admin(old_primary).llen(session_key) == 4, 10, "replica catching up")
