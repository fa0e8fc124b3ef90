"""Gunicorn with 2 uvicorn workers sharing Redis/MariaDB, multiprocess metrics; `chatagent db migrate`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pymysql

from .servers import env_without_chatagent, free_port, wait_for

SERVICE = Path(__file__).resolve().parent.parent


def test_gunicorn_two_workers_aggregate_metrics(hash_kb, redis_server, mariadb, tmp_path: Path) -> None:  # noqa: ANN001
    port = free_port()
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "stale_counter.db").write_bytes(b"junk")  # must be wiped at start
    env = env_without_chatagent() | {
        "CHATAGENT_BIND": f"127.0.0.1:{port}", "CHATAGENT_WORKERS": "2", "CHATAGENT_EMBEDDER": "hash",
        "CHATAGENT_KB_DIR": str(hash_kb), "CHATAGENT_REDIS_URL": redis_server.url,
        "CHATAGENT_REDIS_PREFIX": "gunicorn-test", "CHATAGENT_MYSQL_URL": mariadb.url,
        "CHATAGENT_API_KEYS": "gk-1", "PROMETHEUS_MULTIPROC_DIR": str(prom),
    }
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(gunicorn), "-c", str(SERVICE / "gunicorn.conf.py"), "chatagent.app:create_app()"],
                                cwd=SERVICE, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200, 60, "gunicorn")
        headers = {"Authorization": "Bearer gk-1"}
        sid = None
        for i in range(20):
            # a fresh connection each time so both workers get traffic
            body = {"message": "How do I track my order?"} | ({"session_id": sid} if sid else {})
            resp = httpx.post(f"http://127.0.0.1:{port}/api/v1/chat", json=body, headers=headers, timeout=10)
            assert resp.status_code == 200, resp.text
            sid = resp.json()["session_id"]
        assert redis_server.client().llen(f"gunicorn-test:session:{sid}") == 20  # 10 turns kept
        count = mariadb.query("SELECT COUNT(*) AS n FROM messages WHERE conversation_id=%s", (sid,))[0]["n"]
        assert count == 40
        pids = {int(m.group(1)) for f in prom.iterdir() if (m := re.search(r"_(\d+)\.db$", f.name))}
        assert len(pids) == 2, sorted(p.name for p in prom.iterdir())
        assert not (prom / "stale_counter.db").exists()
        for pid in pids:  # each worker runs the C event loop and HTTP parser
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "uvloop" in maps and "httptools" in maps
        for _ in range(4):  # whichever worker answers, it reports the sum over both
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            total = sum(float(v) for v in re.findall(
                r'chatagent_requests_total\{method="POST",route="/api/v1/chat",status="200"\} ([0-9.]+)', metrics))
            assert total == 20.0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    access = [x for x in lines if x.get("logger") == "chatagent.access"]
    assert len(access) >= 20 and {"request_id", "status", "duration_ms", "route"} <= set(access[0])
    # One access line per request: uvicorn's own would repeat each one without route or request id.
    assert not [x for x in lines if x.get("logger") in ("uvicorn.access", "gunicorn.access")]
    assert any(x.get("logger") == "gunicorn.error" for x in lines)
    # The worker that sends each response in one write (tests/test_worker.py).
    assert "Using worker: chatagent.worker.Worker" in log_path.read_text()


def test_db_migrate_cli(mariadb, tmp_path: Path) -> None:  # noqa: ANN001
    with pymysql.connect(unix_socket=str(mariadb.socket), user="root") as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE fresh_db")
        cur.execute(f"GRANT ALL ON fresh_db.* TO '{mariadb.user}'@'%'")
    env = env_without_chatagent() | {
        "CHATAGENT_MYSQL_HOST": "127.0.0.1", "CHATAGENT_MYSQL_PORT": str(mariadb.port),
        "CHATAGENT_MYSQL_USER": mariadb.user, "CHATAGENT_MYSQL_PASSWORD": mariadb.password,
        "CHATAGENT_MYSQL_DATABASE": "fresh_db",
    }
    cli = [sys.executable, "-m", "chatagent", "db", "migrate"]
    first = json.loads(subprocess.run(cli, env=env, capture_output=True, text=True, check=True, cwd=tmp_path).stdout)
    assert first["applied"] == [1] and first["schema_version"] == 1
    again = json.loads(subprocess.run(cli, env=env, capture_output=True, text=True, check=True, cwd=tmp_path).stdout)
    assert again["applied"] == []
    with pymysql.connect(unix_socket=str(mariadb.socket), user="root", database="fresh_db") as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA='fresh_db'")
        tables = dict(cur.fetchall())
    assert set(tables) == {"schema_version", "conversations", "messages", "feedback"}
    assert tables["messages"].startswith("utf8mb4")
    no_db = subprocess.run(cli, env=env_without_chatagent(), capture_output=True, text=True, cwd=tmp_path)
    assert no_db.returncode == 2 and "CHATAGENT_MYSQL_URL" in no_db.stderr
    time.sleep(0)
