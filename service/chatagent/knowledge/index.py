"""A loaded knowledge base version: passage search and intent classification."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .build import FORMAT_VERSION, PAYLOAD, read_manifest, resolve_kb_dir, sha256_files
from .embedders import Embedder
from .errors import KBError, KBMismatchError

HANDOFF_INTENT = "handoff"
# Intent examples of what the shop does not answer (weather, jokes, homework…): a question closer to
# one of them than to every entry is refused even when its similarity clears the score threshold.
OUT_OF_SCOPE_INTENT = "out_of_scope"
# Among near-equal entries prefer the user's language, so a Chinese question cites the Chinese entry.
OTHER_LANGUAGE_PENALTY = 0.02
# Answers kept per loaded version for recently seen query vectors: customer service hears the same
# questions over and over, and the two FAISS searches of a repeated question were ~9 % of a cached
# turn's CPU. A reload builds a new KnowledgeBase, so an answer never outlives its version.
MEMO_SIZE = 1024


def _key(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


@dataclass(frozen=True)
class Hit:
    id: str
    title: str
    text: str
    answer: str
    score: float
    lang: str = ""
    category: str = ""


@dataclass(frozen=True)
class Intent:
    name: str
    confidence: float
    candidates: dict[str, float] = field(default_factory=dict)


class KnowledgeBase:
    def __init__(self, path: Path, manifest: dict[str, Any], index: faiss.Index, rows: np.ndarray,
                 chunks: dict[int, dict[str, Any]], intent_index: faiss.Index, intents: list[dict[str, str]]) -> None:
        self.path = path
        self.manifest = manifest
        self.index = index
        self.rows = rows
        # The row → chunk map as Python ints: search reads up to k × fanout of them per query, and a
        # numpy scalar read plus int() each was most of search's own time.
        self.row_chunks: list[int] = rows.tolist()
        self.chunks = chunks
        self.intent_index = intent_index
        self.intents = intents
        counts = np.unique(rows, return_counts=True)[1] if len(rows) else np.array([1])
        # Enough rows to see k distinct chunks even when each comes back with all its phrasings.
        self.fanout = int(min(counts.max(), 32))
        self.hits = {cid: Hit(m["id"], m["title"], m["text"], m.get("answer") or m["text"], 0.0,
                              m.get("lang", ""), m.get("category", "")) for cid, m in chunks.items()}
        scope = [i for i, row in enumerate(intents) if row["intent"] == OUT_OF_SCOPE_INTENT]
        self.out_of_scope = (intent_index.reconstruct_n(0, intent_index.ntotal)[scope] if scope
                             else np.zeros((0, index.d), np.float32))
        self._search_memo = functools.lru_cache(MEMO_SIZE)(self._search)
        self._classify_memo = functools.lru_cache(MEMO_SIZE)(self._classify)

    @classmethod
    def load(cls, kb_dir: Path, embedder: Embedder, verify: bool = True) -> KnowledgeBase:
        path = resolve_kb_dir(kb_dir)
        manifest = read_manifest(path)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise KBMismatchError(
                f"knowledge base {path} has format {manifest.get('format_version')}, this service reads format "
                f"{FORMAT_VERSION}; rebuild it with `chatagent kb build` (unchanged texts reuse their vectors)"
            )
        want = (embedder.kind, embedder.model, embedder.dim)
        have = (manifest.get("embedder"), manifest.get("embedder_model"), manifest.get("dimension"))
        if have != want:
            raise KBMismatchError(
                f"knowledge base {path} was built with embedder={have[0]} model={have[1]} dimension={have[2]}, "
                f"but this service is configured for embedder={want[0]} model={want[1]} dimension={want[2]}; "
                "rebuild it with `chatagent kb build` using the configured embedder"
            )
        if verify and sha256_files([path / name for name in PAYLOAD]) != manifest.get("checksum"):
            raise KBError(f"knowledge base {path} fails its manifest checksum (partial copy?)")
        index = faiss.read_index(str(path / "index.faiss"))
        rows = np.load(path / "rows.npy")
        if index.d != embedder.dim or index.ntotal != len(rows) or index.ntotal != manifest["index"]["rows"]:
            raise KBMismatchError(f"index in {path} does not match its manifest")
        if manifest["index"]["type"] == "hnsw":
            faiss.downcast_index(index).hnsw.efSearch = int(manifest["index"]["ef_search"])
        raw = json.loads((path / "chunks.json").read_text(encoding="utf-8"))
        chunks = {int(k): v for k, v in raw.items()}
        intent_index = faiss.read_index(str(path / "intents.faiss"))
        intents = json.loads((path / "intents.json").read_text(encoding="utf-8"))
        return cls(path, manifest, index, rows, chunks, intent_index, intents)

    @property
    def count(self) -> int:
        """Entries (chunks); the index holds one row per phrasing."""
        return len(self.chunks)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version"))

    def search(self, vector: np.ndarray, k: int, min_score: float, lang: str | None = None) -> list[Hit]:
        """The k best chunks (best row per chunk) scoring at least `min_score`; none when the question
        is nearer to an out-of-scope example than to every entry."""
        return list(self._search_memo(_key(vector), k, min_score, lang))

    def _search(self, key: bytes, k: int, min_score: float, lang: str | None) -> tuple[Hit, ...]:
        if self.index.ntotal == 0:
            return ()
        query = np.frombuffer(key, dtype=np.float32).reshape(1, -1)
        scores, rows = self.index.search(query, min(k * self.fanout, self.index.ntotal))
        best: dict[int, float] = {}
        row_chunks = self.row_chunks
        for score, row in zip(scores[0].tolist(), rows[0].tolist()):
            if row >= 0:
                cid = row_chunks[row]
                if score > best.get(cid, -2.0):
                    best[cid] = score
        if not best:
            return ()
        top = max(best.values())
        if len(self.out_of_scope) and float((self.out_of_scope @ query[0]).max()) >= top:
            return ()

        def rank(cid: int) -> float:
            hit = self.hits[cid]
            return best[cid] - (OTHER_LANGUAGE_PENALTY if lang and hit.lang and hit.lang != lang else 0.0)

        out = []
        for cid in sorted(best, key=rank, reverse=True)[:k]:
            if best[cid] >= min_score:
                h = self.hits[cid]
                out.append(Hit(h.id, h.title, h.text, h.answer, round(float(best[cid]), 4), h.lang, h.category))
        return tuple(out)

    def classify(self, vector: np.ndarray, min_confidence: float, k: int = 5) -> Intent:
        return self._classify_memo(_key(vector), min_confidence, k)

    def _classify(self, key: bytes, min_confidence: float, k: int) -> Intent:
        if self.intent_index.ntotal == 0:
            return Intent("general", 0.0)
        query = np.frombuffer(key, dtype=np.float32).reshape(1, -1)
        scores, ids = self.intent_index.search(query, min(k, self.intent_index.ntotal))
        candidates: dict[str, float] = {}
        for score, idx in zip(scores[0].tolist(), ids[0].tolist()):
            if idx >= 0:
                name = self.intents[idx]["intent"]
                candidates[name] = max(candidates.get(name, -1.0), float(score))
        best = max(candidates, key=candidates.__getitem__)
        confidence = round(candidates[best], 4)
        if confidence < min_confidence:
            return Intent(HANDOFF_INTENT, confidence, candidates)
        return Intent(best, confidence, candidates)
