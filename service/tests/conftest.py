from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chatagent.app import create_app
from chatagent.knowledge import HashEmbedder, build_kb
from chatagent.settings import Settings
from chatagent.store import MySQLStore

from .servers import LiveServer, MariaDBServer, RedisServer, fake_llm_app

SAMPLE = Path(__file__).resolve().parent.parent / "kb" / "sample"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb"))
    server.install()
    MySQLStore({"host": "127.0.0.1", "port": server.port, "user": server.user, "password": server.password,
                "database": server.database}).migrate()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hash_kb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kb-hash")
    build_kb(SAMPLE, out, HashEmbedder(512))
    return out


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"mode": "ok", "requests": []}
    with LiveServer(fake_llm_app(state)) as server:
        state["url"] = server.url + "/v1"
        yield state


@pytest.fixture
def settings_factory(hash_kb: Path, redis_server: RedisServer, mariadb: MariaDBServer):  # noqa: ANN201
    """Settings for an app wired to the real Redis and MariaDB; each test gets its own Redis prefix."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "embedder": "hash", "hash_dim": 512, "kb_dir": hash_kb, "redis_url": redis_server.url,
            "redis_prefix": "t" + uuid.uuid4().hex[:10], "mysql_url": mariadb.url, "rate_limit": "1000/minute",
            "kb_reload_interval": 0.0, "pending_flush_interval": 0.3, "log_json": True, "api_keys": [],
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def client_factory(settings_factory):  # noqa: ANN001, ANN201
    stack = contextlib.ExitStack()

    def make(**overrides: Any) -> TestClient:
        settings = settings_factory(**overrides)
        client = stack.enter_context(TestClient(create_app(settings), raise_server_exceptions=False))
        client.settings = settings  # type: ignore[attr-defined]
        return client

    yield make
    stack.close()


@pytest.fixture
def client(client_factory) -> TestClient:  # noqa: ANN001
    return client_factory()
