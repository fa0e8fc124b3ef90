"""Prometheus metrics. Under Gunicorn `PROMETHEUS_MULTIPROC_DIR` is set and every worker writes its
samples there; `/metrics` then aggregates all workers with MultiProcessCollector."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


class Metrics:
    """One instance per app; its own registry keeps several apps in one process (tests) apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "chatagent_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.request_duration = Histogram(
            "chatagent_request_duration_seconds", "HTTP request duration", ["method", "route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.errors = Counter("chatagent_errors_total", "Unhandled errors and 5xx responses", ["route"], registry=r)
        self.chat_turns = Counter("chatagent_chat_turns_total", "Answered chat turns", ["intent", "provider"], registry=r)
        self.handoffs = Counter("chatagent_handoffs_total", "Turns that offered a human agent", ["reason"], registry=r)
        self.llm_failures = Counter(
            "chatagent_llm_failures_total", "LLM calls that failed and fell back to extractive answers", ["reason"],
            registry=r,
        )
        self.retrieval_duration = Histogram(
            "chatagent_retrieval_duration_seconds", "Embedding + FAISS search time", buckets=LATENCY_BUCKETS, registry=r
        )
        self.embedding_cache = Counter(
            "chatagent_embedding_cache_total", "Query embedding cache lookups", ["result"], registry=r
        )
        self.rate_limited = Counter("chatagent_rate_limited_total", "Requests refused with 429", registry=r)
        self.auth_failures = Counter("chatagent_auth_failures_total", "Requests refused with 401", registry=r)
        self.pending_writes = Counter(
            "chatagent_pending_writes_total", "Writes queued because MySQL was unavailable", ["kind"], registry=r
        )
        self.pending_flushed = Counter(
            "chatagent_pending_flushed_total", "Queued writes replayed into MySQL", registry=r
        )
        self.kb_reloads = Counter("chatagent_kb_reloads_total", "Knowledge base load attempts", ["result"], registry=r)
        self.kb_chunks = Gauge(
            "chatagent_kb_chunks", "Chunks in the loaded knowledge base", multiprocess_mode="max", registry=r
        )
        self.feedback = Counter("chatagent_feedback_total", "Feedback received", ["score"], registry=r)

    def render(self) -> tuple[bytes, str]:
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
