"""Building a knowledge base on disk: embed, index, write a version, switch `current` atomically.

    OUT/current -> versions/<version>
    OUT/versions/<version>/{manifest.json, index.faiss, rows.npy, chunks.json, intents.faiss, intents.json}
    OUT/cache/<embedder>.npz   vectors of the last build, keyed by (text, role), for incremental rebuilds

A chunk is found through several index rows: one per way of asking for it (its question and the
alternative phrasings; for a document section its heading), each embedded as a query and blended with
the passage. Search takes the best row per chunk.

A reader sees either the old or the new version: the version is written to a temp dir, renamed into
`versions/`, and `current` is swapped with `os.replace`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .embedders import Embedder, normalise
from .errors import KBError
from .sources import Chunk, FaqColumns, Sources, collect_sources, stable_id

# 2: several index rows per chunk (rows.npy), ANN index for large bases, out-of-scope intent.
FORMAT_VERSION = 2
PAYLOAD = ("index.faiss", "rows.npy", "chunks.json", "intents.faiss", "intents.json")
# Up to this many rows exact search is fast enough (10k rows: 1.8 ms p50 idle, 5 ms on a loaded host);
# above it HNSW (100k rows: see bench/RESULTS.md).
EXACT_MAX_ROWS = 10_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 96

Progress = Callable[[str, int, int], None]
BATCH = 64


def sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def embedder_key(embedder: Embedder) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{embedder.kind}-{embedder.model}-{embedder.dim}")


class VectorCache:
    """Vectors from the previous build, keyed by (role, text) for one embedder: a rebuild embeds only
    texts it has not seen. The file is rewritten with exactly the current build's vectors."""

    def __init__(self, path: Path | None, embedder: Embedder, progress: Progress | None = None) -> None:
        self.path = path
        self.embedder = embedder
        self.progress = progress
        self.old: dict[bytes, np.ndarray] = {}
        self.new: dict[bytes, np.ndarray] = {}
        self.reused = 0
        self.computed = 0
        if path is not None and path.exists():
            try:
                with np.load(path) as data:
                    keys, vectors = data["keys"], data["vectors"]
                if vectors.ndim == 2 and vectors.shape[1] == embedder.dim and keys.shape == (len(vectors), 16):
                    self.old = {k.tobytes(): v for k, v in zip(keys, vectors)}
            except (OSError, ValueError, KeyError):
                self.old = {}  # a damaged cache only costs a full re-embed

    @staticmethod
    def key(role: str, text: str) -> bytes:
        return hashlib.sha256(f"{role}\0{text}".encode()).digest()[:16]

    def embed(self, role: str, texts: list[str]) -> np.ndarray:
        """role: "query" or "passage"; returns normalised vectors in the order of `texts`."""
        out = np.zeros((len(texts), self.embedder.dim), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        for i, text in enumerate(texts):
            k = self.key(role, text)
            vec = self.new.get(k)
            if vec is None:
                vec = self.old.get(k)
                if vec is not None:
                    self.new[k] = vec
                    self.reused += 1
            if vec is None:
                missing.setdefault(k, []).append(i)
            else:
                out[i] = vec
        todo = list(missing)
        fn = self.embedder.embed_queries if role == "query" else self.embedder.embed_passages
        for start in range(0, len(todo), BATCH):
            batch = todo[start : start + BATCH]
            vectors = normalise(fn([texts[missing[k][0]] for k in batch]))
            for k, vec in zip(batch, vectors):
                self.new[k] = vec
                out[missing[k]] = vec
            self.computed += len(batch)
            if self.progress:
                self.progress(f"embedding {role}s", min(start + BATCH, len(todo)), len(todo))
        return out

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}.npz")
        # uint8 rows, not numpy "S16": fixed-width bytes strings lose trailing NULs on the way back.
        keys = np.frombuffer(b"".join(self.new), dtype=np.uint8).reshape(len(self.new), 16)
        vectors = np.array(list(self.new.values()), dtype=np.float32).reshape(len(keys), self.embedder.dim)
        np.savez(tmp, keys=keys, vectors=vectors)
        os.replace(tmp, self.path)


def index_spec(rows: int) -> dict[str, Any]:
    """Exact inner-product search while it is fast enough, HNSW (graph ANN) above that."""
    if rows <= EXACT_MAX_ROWS:
        return {"type": "flat", "metric": "inner_product"}
    return {"type": "hnsw", "metric": "inner_product", "m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION,
            "ef_search": HNSW_EF_SEARCH}


def make_index(spec: dict[str, Any], vectors: np.ndarray, dim: int) -> faiss.Index:
    if spec["type"] == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec["type"] == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec["ef_construction"]
        index.hnsw.efSearch = spec["ef_search"]
    else:
        raise KBError(f"unknown index type {spec['type']!r}")
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def chunk_rows(chunks: list[Chunk], cache: VectorCache) -> tuple[np.ndarray, np.ndarray]:
    """Row vectors and the chunk (position) each row belongs to; a chunk without any phrasing (an
    untitled section) is found by its passage alone."""
    passages = cache.embed("passage", [c.embed_text() for c in chunks])
    pairs = [(i, text) for i, c in enumerate(chunks) for text in c.phrasings() or [None]]
    owners = np.array([i for i, _ in pairs], dtype=np.int64)
    asked = [n for n, (_, text) in enumerate(pairs) if text is not None]
    queries = np.zeros((len(pairs), cache.embedder.dim), dtype=np.float32)
    queries[asked] = cache.embed("query", [pairs[n][1] for n in asked])
    # Query-to-question similarity separates near-duplicate FAQ answers far better than
    # query-to-passage alone; blending in the passage keeps what the answer itself says findable.
    return normalise(queries + passages[owners]), owners


def build_kb(src: Path | None, out: Path, embedder: Embedder, sources: Sources | None = None,
             columns: FaqColumns | None = None, progress: Progress | None = None,
             cache: bool = True) -> dict[str, Any]:
    """Embed sources into a new version under `out` and switch `out/current` to it atomically."""
    if sources is None:
        if src is None:
            raise KBError("build_kb needs a source path or sources")
        sources = collect_sources(src, columns)
    chunks, intents = sources.chunks, sources.intents
    if not chunks:
        detail = "; ".join(str(s) for s in sources.skipped[:5])
        raise KBError(f"no FAQ entries or documents found in {src}" + (f" (skipped: {detail})" if detail else ""))
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    vcache = VectorCache(out / "cache" / f"{embedder_key(embedder)}.npz" if cache else None, embedder, progress)
    vectors, owners = chunk_rows(chunks, vcache)
    ids = np.array([stable_id(c.id) for c in chunks], dtype=np.int64)
    if len(set(ids.tolist())) != len(ids):
        raise KBError("entry id hash collision; rename one of the entries")
    intent_vectors = vcache.embed("query", [text for _, text in intents])
    embed_seconds = time.perf_counter() - started
    spec = index_spec(len(vectors))
    if progress:
        progress(f"indexing ({spec['type']})", 0, len(vectors))
    index = make_index(spec, vectors, embedder.dim)

    (out / "versions").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        faiss.write_index(index, str(tmp / "index.faiss"))
        np.save(tmp / "rows.npy", ids[owners])
        faiss.write_index(make_index({"type": "flat"}, intent_vectors, embedder.dim), str(tmp / "intents.faiss"))
        meta = {str(i): c.__dict__ for i, c in zip(ids.tolist(), chunks)}
        (tmp / "chunks.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        (tmp / "intents.json").write_text(
            json.dumps([{"intent": i, "text": t} for i, t in intents], ensure_ascii=False), encoding="utf-8"
        )
        checksum = sha256_files([tmp / name for name in PAYLOAD])
        # UTC time to the microsecond first: names sort in build order (`kb use previous` relies on it).
        now_ns = time.time_ns()
        version = (time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ns // 1_000_000_000))
                   + f"-{now_ns // 1000 % 1_000_000:06d}-{checksum[:8]}")
        manifest = {
            "format_version": FORMAT_VERSION,
            "embedder": embedder.kind,
            "embedder_model": embedder.model,
            "dimension": embedder.dim,
            "index": {**spec, "rows": int(len(vectors))},
            "rows": "one per question phrasing or section heading (query vector + passage vector, normalised)",
            "count": len(chunks),
            "phrasings": int(sum(len(c.phrasings()) for c in chunks)),
            "intent_examples": len(intents),
            "intents": sorted({i for i, _ in intents}),
            "checksum": checksum,
            "version": version,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": str(src) if src else None,
            "source_files": sources.files,
            "skipped": [str(s) for s in sources.skipped],
            "embeddings": {"computed": vcache.computed, "reused": vcache.reused},
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
    vcache.save()
    return manifest


def use_version(out: Path, version: str) -> dict[str, Any]:
    """Point `out/current` at an existing version, atomically; `previous` is the version built just
    before the live one (version names start with their UTC build time). A way back without a rebuild."""
    versions = sorted(p.name for p in (out / "versions").iterdir() if (p / "manifest.json").exists()) \
        if (out / "versions").is_dir() else []
    if not versions:
        raise KBError(f"no knowledge base versions under {out}/versions")
    live = os.path.basename(os.path.realpath(out / "current")) if (out / "current").exists() else None
    if version == "previous":
        older = [v for v in versions if live is not None and v < live]
        if not older:
            raise KBError(f"no version older than the live one ({live}) under {out}/versions")
        version = older[-1]
    elif version not in versions:
        raise KBError(f"no version {version!r} under {out}/versions (have: {', '.join(versions[-5:])})")
    manifest = json.loads((out / "versions" / version / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise KBError(f"version {version} has format {manifest.get('format_version')}, this service reads "
                      f"format {FORMAT_VERSION}; rebuild it with `chatagent kb build`")
    link_tmp = out / f".current-{os.getpid()}-{time.time_ns()}"
    os.symlink(Path("versions") / version, link_tmp)
    os.replace(link_tmp, out / "current")
    return {"version": version, "previous": live, "count": manifest.get("count")}


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
