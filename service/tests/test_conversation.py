"""Which messages are follow-ups, and how the retrieval vector of a follow-up is made."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from chatagent.knowledge import HashEmbedder, QueryEncoder, refers_back, retrieval_vector


@pytest.mark.parametrize(
    ("message", "follow_up"),
    [
        ("And how long does it take?", True),
        ("what about after it has shipped?", True),
        ("Is it free?", True),
        ("Gold members?", True),
        ("那运费谁出？", True),
        ("可以分期吗", True),
        ("How do I reset my password for the mobile app?", False),
        ("Which payment methods do you accept for orders over 600 yuan?", False),
        ("忘记密码了，登录页面怎么找回密码呢", False),
    ],
)
def test_refers_back(message: str, follow_up: bool) -> None:
    assert refers_back(message) is follow_up


def test_retrieval_vector_blends_the_previous_user_message_only_for_follow_ups() -> None:
    embedder = HashEmbedder(256)
    encoder = QueryEncoder(embedder)
    history = [{"role": "user", "content": "How do I return an item?"}, {"role": "assistant", "content": "Go to…"}]

    def run(message: str, hist: list[dict[str, str]] | None) -> np.ndarray:
        own = embedder.embed_queries([message])[0]
        return asyncio.run(retrieval_vector(encoder, message, hist, own))

    own = embedder.embed_queries(["Who pays the postage?"])[0]
    previous = embedder.embed_queries(["How do I return an item?"])[0]
    blended = run("Who pays the postage?", history)
    expected = own + 0.5 * previous
    assert np.allclose(blended, expected / np.linalg.norm(expected), atol=1e-6)
    standalone = "Which payment methods do you accept for orders over 600 yuan?"
    assert np.array_equal(run(standalone, history), embedder.embed_queries([standalone])[0])
    assert np.array_equal(run("Who pays the postage?", None), own)
