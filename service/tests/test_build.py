"""Rebuilds embed only what changed; the index type follows the size and is recorded in the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from chatagent.knowledge import HashEmbedder, KnowledgeBase, build_kb, index_spec
from chatagent.knowledge import build as build_module

from .conftest import SAMPLE


class CountingEmbedder(HashEmbedder):
    """The hash embedder, counting every text it is asked to embed."""

    def __init__(self) -> None:
        super().__init__(512)
        self.texts: list[str] = []

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        return super().embed_queries(texts)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        return super().embed_passages(texts)


def index_vectors(kb_dir: Path) -> np.ndarray:
    kb = KnowledgeBase.load(kb_dir, HashEmbedder(512))
    return kb.index.reconstruct_n(0, kb.index.ntotal)


def test_rebuild_embeds_only_changed_chunks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SAMPLE, src)
    out = tmp_path / "kb"
    embedder = CountingEmbedder()
    progress: list[tuple[str, int, int]] = []
    first = build_kb(src, out, embedder, progress=lambda *p: progress.append(p))
    total = len(embedder.texts)
    assert first["embeddings"] == {"computed": total, "reused": 0}
    assert ("embedding passages", 69, 69) in progress and progress[-1][0] == "indexing (flat)"

    embedder.texts.clear()
    second = build_kb(src, out, embedder)
    assert embedder.texts == [] and second["embeddings"] == {"computed": 0, "reused": total}

    # change one answer and one question, add one phrasing: exactly those texts are embedded again
    faq = src / "faq.jsonl"
    rows = [json.loads(line) for line in faq.read_text(encoding="utf-8").splitlines()]
    by_id = {r["id"]: r for r in rows}
    by_id["refunds-time-en"]["answer"] += " Weekends do not count."
    by_id["invoices-request-zh"]["question"] = "发票在哪里开？"
    by_id["payments-coupons-en"]["questions"].append("Where does the promo code go?")
    faq.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    embedder.texts.clear()
    third = build_kb(src, out, embedder)
    assert sorted(embedder.texts) == sorted([
        f"How long does a refund take?\n{by_id['refunds-time-en']['answer']}",
        "发票在哪里开？",  # the new question…
        f"怎么开发票？\n发票在哪里开？\n{by_id['invoices-request-zh']['answer']}",  # …changes the passage (title kept)
        "Where does the promo code go?",
    ])
    assert third["embeddings"]["computed"] == 4

    # the incremental result is the same index a build from scratch gives
    fresh = tmp_path / "fresh"
    build_kb(src, fresh, HashEmbedder(512), cache=False)
    assert np.allclose(index_vectors(out), index_vectors(fresh), atol=1e-6)


def test_index_type_follows_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert index_spec(10_000)["type"] == "flat" and index_spec(10_001)["type"] == "hnsw"
    assert index_spec(100_000) == {"type": "hnsw", "metric": "inner_product", "m": 32, "ef_construction": 80,
                                   "ef_search": 96}
    monkeypatch.setattr(build_module, "EXACT_MAX_ROWS", 50)
    manifest = build_kb(SAMPLE, tmp_path, HashEmbedder(512))
    assert manifest["index"]["type"] == "hnsw" and manifest["index"]["rows"] > 50
    kb = KnowledgeBase.load(tmp_path, HashEmbedder(512))
    vector = HashEmbedder(512).embed_queries(["How do I reset my password?"])[0]
    assert kb.search(vector, 3, 0.0, "en")[0].id == "accounts-reset-password-en"


def test_use_switches_between_built_versions(tmp_path: Path) -> None:
    """`kb use previous` goes back one build without rebuilding; a named version goes forward again;
    unknown versions and a base with nothing older are refused and leave `current` alone."""
    src = tmp_path / "src"
    shutil.copytree(SAMPLE, src)
    out = tmp_path / "kb"
    first = build_kb(src, out, HashEmbedder(512))
    with pytest.raises(build_module.KBError, match="no version older"):
        build_module.use_version(out, "previous")
    second = build_kb(src, out, HashEmbedder(512), cache=False)
    assert second["version"] > first["version"]

    back = build_module.use_version(out, "previous")
    assert back == {"version": first["version"], "previous": second["version"], "count": first["count"]}
    assert (out / "current").resolve().name == first["version"]
    assert KnowledgeBase.load(out, HashEmbedder(512)).version == first["version"]

    with pytest.raises(build_module.KBError, match="no version 'nope'"):
        build_module.use_version(out, "nope")
    assert (out / "current").resolve().name == first["version"]

    build_module.use_version(out, second["version"])
    assert (out / "current").resolve().name == second["version"]
