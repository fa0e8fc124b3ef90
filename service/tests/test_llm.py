"""The `openai` answer provider against a fake OpenAI-compatible HTTP server, and its fallback."""

from __future__ import annotations

import re


def test_llm_answers_with_passages(client_factory, fake_llm) -> None:
    fake_llm["mode"] = "ok"
    fake_llm["requests"].clear()
    client = client_factory(llm_provider="openai", llm_base_url=fake_llm["url"], llm_model="fake-model")
    body = client.post("/api/v1/chat", json={"message": "How do I get an invoice?"}).json()
    assert body["answer"].startswith("FAKE-LLM answer grounded in [invoices-request-en]")
    sent = fake_llm["requests"][-1]
    assert sent["model"] == "fake-model" and sent["stream"] is True
    assert "[invoices-request-en]" in sent["messages"][0]["content"]
    assert sent["messages"][-1] == {"role": "user", "content": "How do I get an invoice?"}
    # streaming passes the LLM's tokens through as SSE tokens
    raw = client.post("/api/v1/chat/stream", json={"message": "How do I get an invoice?"}).text
    tokens = re.findall(r'event: token\ndata: \{"text": "([^"]*)"\}', raw)
    assert tokens[0] == "FAKE-LLM " and len(tokens) >= 5
    ready = client.get("/ready").json()
    assert ready["checks"]["llm"]["ok"] is True


def test_llm_not_asked_without_passages(client_factory, fake_llm) -> None:
    fake_llm["mode"] = "ok"
    fake_llm["requests"].clear()
    client = client_factory(llm_provider="openai", llm_base_url=fake_llm["url"])
    body = client.post("/api/v1/chat", json={"message": "Who won the football world cup in 1954?"}).json()
    assert body["intent"] == "handoff" and fake_llm["requests"] == []


def test_llm_failure_falls_back_to_extractive(client_factory, fake_llm) -> None:
    fake_llm["mode"] = "fail"
    fake_llm["requests"].clear()
    try:
        client = client_factory(llm_provider="openai", llm_base_url=fake_llm["url"], llm_max_retries=1)
        resp = client.post("/api/v1/chat", json={"message": "How do I get an invoice?"})
        assert resp.status_code == 200
        body = resp.json()
        assert "FAKE-LLM" not in body["answer"]
        assert "[invoices-request-en]" in body["answer"] and "Request invoice" in body["answer"]
        assert len(fake_llm["requests"]) == 2  # first try + one retry
        metrics = client.get("/metrics").text
        assert 'chatagent_llm_failures_total{reason="unavailable"} 1.0' in metrics
        assert 'chatagent_chat_turns_total{intent="invoices",provider="extractive"} 1.0' in metrics
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["llm"]["ok"] is False
    finally:
        fake_llm["mode"] = "ok"


def test_llm_broken_stream_falls_back(client_factory, fake_llm) -> None:
    """A one-shot answer drops the half it got (nobody saw it); a streamed one keeps what it sent."""
    fake_llm["mode"] = "break"
    try:
        client = client_factory(llm_provider="openai", llm_base_url=fake_llm["url"], llm_max_retries=0)
        body = client.post("/api/v1/chat", json={"message": "How do I get an invoice?"}).json()
        assert "FAKE-LLM" not in body["answer"]
        assert "[invoices-request-en]" in body["answer"] and "Request invoice" in body["answer"]
        raw = client.post("/api/v1/chat/stream", json={"message": "How do I get an invoice?"}).text
        tokens = re.findall(r'event: token\ndata: \{"text": "((?:[^"\\]|\\.)*)"\}', raw)
        assert tokens[:3] == ["FAKE-LLM ", "answer ", "\\n\\n"]
        assert "Request invoice" in "".join(tokens)
        metrics = client.get("/metrics").text
        assert 'chatagent_llm_failures_total{reason="stream"} 2.0' in metrics
    finally:
        fake_llm["mode"] = "ok"


def test_llm_timeout_falls_back(client_factory, fake_llm) -> None:
    fake_llm["mode"], fake_llm["delay"] = "slow", 2
    try:
        client = client_factory(llm_provider="openai", llm_base_url=fake_llm["url"], llm_timeout=0.5,
                                llm_max_retries=0)
        body = client.post("/api/v1/chat", json={"message": "How do I get an invoice?"}).json()
        assert "[invoices-request-en]" in body["answer"] and "FAKE-LLM" not in body["answer"]
    finally:
        fake_llm["mode"] = "ok"
