"""Throwaway Redis and MariaDB processes from Debian's packages, plus a fake OpenAI-compatible server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import redis
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Any, timeout: float = 30.0, what: str = "service") -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - polling
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout}s: {last}")


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: redis.Redis(port=self.port, socket_timeout=1).ping(), 15, "redis")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)


class MariaDBServer:
    user = "chatagent"
    password = "test-pass-Zq8"
    database = "chatagent"

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.datadir = workdir / "data"
        self.socket = workdir / "mysqld.sock"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def install(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.start()
        with contextlib.closing(pymysql.connect(unix_socket=str(self.socket), user="root")) as conn, \
                conn.cursor() as cur:
            cur.execute(f"CREATE USER '{self.user}'@'%' IDENTIFIED BY '{self.password}'")
            cur.execute(f"GRANT ALL PRIVILEGES ON `{self.database}`.* TO '{self.user}'@'%'")
            cur.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve",
             f"--pid-file={self.dir / 'mysqld.pid'}", f"--log-error={self.dir / 'error.log'}",
             "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M", "--skip-log-bin",
             "--innodb-flush-log-at-trx-commit=2", "--character-set-server=utf8mb4"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: pymysql.connect(unix_socket=str(self.socket), user="root").close() or True, 60, "mariadb")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc = None

    def query(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        with contextlib.closing(pymysql.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, database=self.database,
            charset="utf8mb4", cursorclass=pymysql.cursors.DictCursor, autocommit=True,
        )) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())


# --------------------------------------------------------------------------------------- fake LLM


def fake_llm_app(state: dict[str, Any]) -> FastAPI:
    """Minimal OpenAI-compatible server: chat completions (plain/stream), models, embeddings."""
    app = FastAPI()

    def check_mode() -> JSONResponse | None:
        if state["mode"] == "fail":
            return JSONResponse({"error": {"message": "model overloaded"}}, status_code=503)
        if state["mode"] == "slow":
            time.sleep(state.get("delay", 3))
        return None

    @app.get("/v1/models")
    def models() -> Any:
        return check_mode() or {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        state["requests"].append(body)
        failed = check_mode()
        if failed:
            return failed
        system = body["messages"][0]["content"]
        cited = [line.split("]")[0][1:] for line in system.splitlines() if line.startswith("[")]
        answer = f"FAKE-LLM answer grounded in [{cited[0] if cited else 'none'}]."
        if not body.get("stream"):
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                 "finish_reason": "stop"}]}

        def gen() -> Iterator[str]:
            for word in answer.split(" "):
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(inputs):
            vec = [0.0] * 32
            for token in text.lower().split():
                vec[zlib.crc32(token.encode()) % 32] += 1.0
            data.append({"object": "embedding", "index": i, "embedding": vec})
        return {"object": "list", "data": data, "model": body["model"]}

    return app


class LiveServer:
    """Runs an ASGI app under uvicorn in a thread on a loopback port (real HTTP, real lifespan)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        wait_for(lambda: self.server.started, 60, "live server")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def env_without_chatagent() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CHATAGENT_")}
