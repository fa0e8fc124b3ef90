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


def wait_until(check: Any, timeout: float = 20.0) -> None:
    """A test's own condition: unlike wait_for, an exception from `check` fails the test at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


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
            for n, word in enumerate(answer.split(" ")):
                if state["mode"] == "break" and n == 2:  # the connection drops part-way
                    raise ConnectionResetError("fake LLM broke off")
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


# --------------------------------------------------------------------------------------- Sentinel


class SentinelCluster:
    """A Redis primary, one replica and three sentinels on loopback ports, with the ACL users the
    redis role creates (app, replication, sentinel, admin) and a client user on the sentinels."""

    service = "chatstack"
    app_user, app_password = "chatstack", "app-pass-Kq2"
    repl_user, repl_password = "chatstack-replication", "repl-pass-Vb7"
    sentinel_user, sentinel_password = "chatstack-sentinel", "sent-pass-Lm4"
    client_user, client_password = "chatstack-sentinel-client", "client-pass-Rt9"
    admin_user, admin_password = "chatstack-admin", "admin-pass-Wd3"

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port(), free_port(), free_port()]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def sentinels(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.sentinel_ports]

    def _data_conf(self, port: int, replica_of: int | None) -> Path:
        d = self.dir / f"redis-{port}"
        d.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {port}", "bind 127.0.0.1", 'save ""', "appendonly no", f"dir {d}",
            f"logfile {d / 'redis.log'}", "daemonize no",
            "user default off resetpass -@all",
            f"user {self.app_user} on >{self.app_password} ~* &* +@all -@admin -@dangerous +eval +evalsha",
            f"user {self.repl_user} on >{self.repl_password} -@all +psync +replconf +ping",
            f"user {self.sentinel_user} on >{self.sentinel_password} allchannels -@all +multi +slaveof +ping"
            " +exec +subscribe +config|rewrite +role +publish +info +client|setname +client|kill +script|kill",
            f"user {self.admin_user} on >{self.admin_password} ~* &* +@all",
            f"masteruser {self.repl_user}", f"masterauth {self.repl_password}",
        ]
        if replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        conf = d / "redis.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _sentinel_conf(self, port: int) -> Path:
        d = self.dir / f"sentinel-{port}"
        d.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {port}", "bind 127.0.0.1", f"dir {d}", f"logfile {d / 'sentinel.log'}", "daemonize no",
            f"sentinel monitor {self.service} 127.0.0.1 {self.data_ports[0]} 2",
            f"sentinel down-after-milliseconds {self.service} 1000",
            f"sentinel failover-timeout {self.service} 10000",
            f"sentinel parallel-syncs {self.service} 1",
            f"sentinel auth-user {self.service} {self.sentinel_user}",
            f"sentinel auth-pass {self.service} {self.sentinel_password}",
            # Sentinels talk to each other as the peer user; clients get read-only discovery.
            "user default off resetpass -@all",
            f"user sentinel-peer on >{self.sentinel_password} allchannels +@all",
            f"user {self.client_user} on >{self.client_password} -@all +ping +hello +auth"
            " +client|setname +sentinel|get-master-addr-by-name +sentinel|masters +sentinel|master"
            " +sentinel|sentinels +sentinel|slaves +sentinel|replicas",
            "sentinel sentinel-user sentinel-peer", f"sentinel sentinel-pass {self.sentinel_password}",
        ]
        conf = d / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _spawn(self, port: int, conf: Path, sentinel: bool = False) -> None:
        argv = [shutil.which("redis-server") or "/usr/bin/redis-server", str(conf)]
        if sentinel:
            argv.append("--sentinel")
        self.procs[port] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        primary, replica = self.data_ports
        self._spawn(primary, self._data_conf(primary, None))
        self._spawn(replica, self._data_conf(replica, primary))
        for port in self.data_ports:
            wait_for(lambda port=port: self.admin(port).ping(), 15, f"redis {port}")
        wait_for(lambda: self.admin(replica).info("replication")["master_link_status"] == "up", 20,
                 "replication link")
        for port in self.sentinel_ports:
            self._spawn(port, self._sentinel_conf(port), sentinel=True)
        # Every sentinel sees the replica and the two other sentinels before a test may kill anything.
        for port in self.sentinel_ports:
            wait_for(lambda port=port: self._sentinel_ready(port), 30, f"sentinel {port}")

    def _sentinel_ready(self, port: int) -> bool:
        state = self.sentinel(port).sentinel_master(self.service)
        return int(state["num-slaves"]) >= 1 and int(state["num-other-sentinels"]) >= 2

    def admin(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, username=self.admin_user, password=self.admin_password, socket_timeout=2)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, username=self.client_user, password=self.client_password,
                           socket_timeout=2, decode_responses=True)

    def master_port(self) -> int:
        host, port = self.sentinel(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(10)

    def restart_as_configured(self, port: int) -> None:
        """Starts a killed node again from the config it had (an old primary comes back believing
        it is still the primary); Sentinel has to turn it into a replica."""
        self._spawn(port, self.dir / f"redis-{port}" / "redis.conf")
        wait_for(lambda: self.admin(port).ping(), 15, f"redis {port}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.procs.clear()
