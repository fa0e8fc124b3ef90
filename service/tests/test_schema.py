"""Schemathesis over the OpenAPI schema against a live app: nothing a client sends may produce a 5xx.

Runs the schemathesis CLI (examples, coverage, fuzzing and stateful phases, bounded examples) as a
subprocess so the check is exactly what an operator would run by hand.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from chatagent.app import create_app
from chatagent.settings import Settings

from .servers import LiveServer


def test_no_server_errors(hash_kb, redis_server, mariadb, tmp_path: Path) -> None:  # noqa: ANN001
    settings = Settings(
        _env_file=None, embedder="hash", kb_dir=hash_kb, redis_url=redis_server.url, redis_prefix="schemathesis",
        mysql_url=mariadb.url, rate_limit_enabled=False, max_message_chars=2000, access_log=False,
        log_level="WARNING",
    )
    with LiveServer(create_app(settings)) as server:
        st = Path(sys.executable).with_name("schemathesis")
        result = subprocess.run(
            [str(st), "run", server.url + "/openapi.json", "--checks", "not_a_server_error",
             "--max-examples", "25", "--seed", "1234", "--workers", "2", "--request-timeout", "30",
             "--generation-database", "none"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-6000:]
    match = re.search(r"(\d+) generated, (\d+) passed", report)
    assert match and match.group(1) == match.group(2) and int(match.group(2)) >= 100, report[-3000:]
    assert "failed" not in report.split("Test cases:")[-1], report[-3000:]
