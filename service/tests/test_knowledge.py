"""KB build layout, hot reload in a running app, mismatch refusal, embedding cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chatagent.knowledge import (
    FORMAT_VERSION,
    HashEmbedder,
    KBError,
    KBMismatchError,
    KnowledgeBase,
    OpenAIEmbedder,
    build_kb,
    collect_sources,
    stable_id,
)

from .conftest import SAMPLE
from .servers import RedisServer


def test_build_layout_and_manifest(tmp_path: Path) -> None:
    manifest = build_kb(SAMPLE, tmp_path, HashEmbedder(512))
    current = tmp_path / "current"
    assert current.is_symlink() and os.readlink(current) == f"versions/{manifest['version']}"
    files = {p.name for p in current.iterdir()}
    assert files == {"manifest.json", "index.faiss", "rows.npy", "chunks.json", "intents.faiss", "intents.json"}
    assert manifest["embedder"] == "hash" and manifest["dimension"] == 512 and manifest["count"] == 69
    assert manifest["format_version"] == FORMAT_VERSION and manifest["index"]["type"] == "flat"
    # one row per question phrasing or document heading
    assert manifest["index"]["rows"] == manifest["phrasings"] > 66 * 5
    assert len(manifest["checksum"]) == 64
    assert not list(tmp_path.glob(".build-*")) and not list(tmp_path.glob(".current-*"))
    chunks = json.loads((current / "chunks.json").read_text())
    assert chunks[str(stable_id("returns-how-to-en"))]["id"] == "returns-how-to-en"
    # a rebuild adds a version and swaps the link; ids stay stable
    second = build_kb(SAMPLE, tmp_path, HashEmbedder(512))
    assert second["version"] != manifest["version"]
    assert second["embeddings"] == {"computed": 0, "reused": manifest["embeddings"]["computed"]}
    assert len(list((tmp_path / "versions").iterdir())) == 2
    assert json.loads((tmp_path / "current" / "chunks.json").read_text()).keys() == chunks.keys()


def test_sources_parsing() -> None:
    sources = collect_sources(SAMPLE)
    chunks, intents = sources.chunks, sources.intents
    assert sources.skipped == []
    ids = {c.id for c in chunks}
    assert "returns-how-to-zh" in ids and any(i.startswith("shipping-guide#") for i in ids)
    assert len([c for c in chunks if c.lang == "zh"]) >= 30 and len([c for c in chunks if c.lang == "en"]) >= 30
    assert {"returns", "invoices", "handoff", "greeting", "out_of_scope"} <= {i for i, _ in intents}
    assert all(len(c.phrasings()) >= 5 for c in chunks if c.question)


def test_mismatched_embedder_is_refused(tmp_path: Path, client_factory) -> None:
    build_kb(SAMPLE, tmp_path, HashEmbedder(512))
    with pytest.raises(KBMismatchError, match="dimension=512.*dimension=256"):
        KnowledgeBase.load(tmp_path, HashEmbedder(256))
    client = client_factory(kb_dir=tmp_path, hash_dim=256)
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert "rebuild it with `chatagent kb build`" in ready.json()["checks"]["knowledge_base"]["error"]
    # still no 500: the chat says it cannot answer
    chat = client.post("/api/v1/chat", json={"message": "How do I return an item?"})
    assert chat.status_code == 200 and chat.json()["intent"] == "handoff"


def test_corrupted_index_is_refused(tmp_path: Path) -> None:
    build_kb(SAMPLE, tmp_path, HashEmbedder(512))
    with open(tmp_path / "current" / "chunks.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(KBError, match="checksum"):
        KnowledgeBase.load(tmp_path, HashEmbedder(512))


def test_running_app_picks_up_new_version(tmp_path: Path, client_factory) -> None:
    src = tmp_path / "src"
    shutil.copytree(SAMPLE, src)
    faq = src / "faq.jsonl"
    rows = [json.loads(x) for x in faq.read_text().splitlines()]
    faq.write_text("\n".join(json.dumps(r) for r in rows if not r["id"].startswith("invoices-")) + "\n")
    out = tmp_path / "kb"
    build_kb(src, out, HashEmbedder(512))
    client = client_factory(kb_dir=out, kb_reload_interval=0)
    before = client.post("/api/v1/chat", json={"message": "How do I get an invoice?"}).json()
    assert not any(s["id"].startswith("invoices-") for s in before["sources"])
    faq.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    build_kb(src, out, HashEmbedder(512))
    after = client.post("/api/v1/chat", json={"message": "How do I get an invoice?"}).json()
    assert after["sources"][0]["id"] == "invoices-request-en"
    assert "chatagent_kb_reloads_total{result=\"loaded\"} 2.0" in client.get("/metrics").text
    # a new version built with another embedder is refused and the old one keeps serving
    build_kb(src, out, HashEmbedder(128))
    again = client.post("/api/v1/chat", json={"message": "How do I get an invoice?"}).json()
    assert again["sources"][0]["id"] == "invoices-request-en"
    ready = client.get("/ready").json()["checks"]["knowledge_base"]
    assert ready["ok"] is True and "dimension=128" in ready["warning"]


def test_embedding_cache_in_redis(client, redis_server) -> None:
    for _ in range(2):
        client.post("/api/v1/chat", json={"message": "What payment methods do you accept?"})
    keys = redis_server.client().keys(f"{client.settings.redis_prefix}:emb:hash:*")
    assert len(keys) == 1 and len(redis_server.client().get(keys[0])) == 512 * 4
    metrics = client.get("/metrics").text
    assert 'chatagent_embedding_cache_total{result="hit"} 1.0' in metrics
    assert 'chatagent_embedding_cache_total{result="miss"} 1.0' in metrics


def _redis_commands_during(redis_server: RedisServer, action: Callable[[], object]) -> list[dict[str, Any]]:
    """What Redis executed while `action` ran (MONITOR: scripts' commands come with client_type "lua")."""
    seen: list[dict[str, Any]] = []
    r = redis_server.client()
    with r.monitor() as monitor:
        def collect() -> None:
            while not (seen and seen[-1]["command"] == "ECHO monitor-done"):
                seen.append(monitor.next_command())

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        action()
        r.echo("monitor-done")
        reader.join(10)
    assert not reader.is_alive()
    return seen


def test_a_new_embedding_is_cached_by_the_turns_append(client, redis_server) -> None:
    """A persisted turn's new embedding reaches Redis inside the append script, not by a SET of its own."""
    prefix = client.settings.redis_prefix
    first = {}
    commands = _redis_commands_during(redis_server, lambda: first.update(
        client.post("/api/v1/chat", json={"message": "Do you ship to Norway?"}).json()))
    writes = [c for c in commands if c["command"].upper().startswith(f"SET {prefix}:EMB:".upper())]
    assert len(writes) == 1 and writes[0]["client_type"] == "lua"
    key = redis_server.client().keys(f"{prefix}:emb:hash:*")[0]
    cached = np.frombuffer(redis_server.client().get(key), dtype=np.float32)
    assert np.allclose(cached, HashEmbedder(512).embed_queries(["Do you ship to Norway?"])[0])
    assert 0 < redis_server.client().ttl(key) <= client.settings.embed_cache_ttl_seconds
    # the same question again is a cache hit and answers the same
    again = client.post("/api/v1/chat", json={"message": "Do you ship to Norway?"}).json()
    assert again["answer"] == first["answer"] and again["sources"] == first["sources"]
    assert 'chatagent_embedding_cache_total{result="hit"} 1.0' in client.get("/metrics").text


def test_a_stateless_turn_caches_its_embedding_at_once(client, redis_server) -> None:
    """No append follows a stateless turn (OpenAI-compatible, whole history sent): it SETs the entry itself."""
    prefix = client.settings.redis_prefix
    commands = _redis_commands_during(redis_server, lambda: client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Do you ship to Norway?"}]}))
    writes = [c for c in commands if c["command"].upper().startswith(f"SET {prefix}:EMB:".upper())]
    assert len(writes) == 1 and writes[0]["client_type"] != "lua"
    assert len(redis_server.client().keys(f"{prefix}:emb:hash:*")) == 1


def test_openai_embedder_against_fake_server(tmp_path: Path, fake_llm) -> None:
    embedder = OpenAIEmbedder(fake_llm["url"], "k", "fake-embed", None)
    assert embedder.dim == 32
    vectors = embedder.embed_passages(["a b", "c d"])
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    manifest = build_kb(SAMPLE, tmp_path, embedder)
    assert manifest["embedder"] == "openai" and manifest["embedder_model"] == "fake-embed"


def test_cli_kb_build_and_stats(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAGENT_")}
    cli = [sys.executable, "-m", "chatagent"]
    built = subprocess.run([*cli, "kb", "build", str(SAMPLE), "--out", str(tmp_path), "--embedder", "hash"],
                           capture_output=True, text=True, env=env, check=True)
    assert json.loads(built.stdout)["count"] == 69
    stats = json.loads(subprocess.run([*cli, "kb", "stats", str(tmp_path)], capture_output=True, text=True,
                                      env=env, check=True).stdout)
    assert stats["by_category"]["returns"] == 10 and stats["manifest"]["dimension"] == 512
    missing = subprocess.run([*cli, "kb", "stats", str(tmp_path / "nope")], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "chatagent kb build" in missing.stderr
    ask = subprocess.run([*cli, "ask", "How do I reset my password?", "--kb", str(tmp_path), "--embedder", "hash"],
                         capture_output=True, text=True, env=env, check=True)
    assert "[accounts-reset-password-en]" in ask.stdout and "sources:" in ask.stdout


def test_old_format_is_refused_with_rebuild_advice(tmp_path: Path) -> None:
    build_kb(SAMPLE, tmp_path, HashEmbedder(512))
    manifest_path = tmp_path / "current" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(KBMismatchError, match="format 1.*rebuild it with `chatagent kb build`"):
        KnowledgeBase.load(tmp_path, HashEmbedder(512))


def test_repeated_question_is_answered_from_the_memo(tmp_path: Path) -> None:
    build_kb(SAMPLE, tmp_path, HashEmbedder(512))
    kb = KnowledgeBase.load(tmp_path, HashEmbedder(512))
    vector = HashEmbedder(512).embed_queries(["How do I return an item?"])[0]
    first = kb.search(vector, 3, 0.0, "en")
    assert first and first[0].id.startswith("returns-")
    first.clear()  # the caller's list is its own: the memo keeps the answer
    again = kb.search(vector.copy(), 3, 0.0, "en")
    assert [h.id for h in again] == [h.id for h in kb._search(vector.tobytes(), 3, 0.0, "en")]
    assert kb._search_memo.cache_info().hits == 1
    with pytest.raises(AttributeError):
        again[0].score = 1.0  # type: ignore[misc]  # shared with later turns, so frozen
    assert kb.classify(vector, 0.5) == kb.classify(vector, 0.5)
    assert kb._classify_memo.cache_info().hits == 1
    # other arguments are other answers, not the memo's
    assert len(kb.search(vector, 1, 0.0, "en")) == 1
    assert KnowledgeBase.load(tmp_path, HashEmbedder(512))._search_memo.cache_info().currsize == 0
