"""PII masking in logs and stored history."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatagent.masking import Masker, MaskingFilter


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("call 13812345678 now", "call 138****5678 now"),
        ("tel +86 138 1234 5678", "tel 138****5678"),
        ("身份证 11010519491231002X 谢谢", "身份证 110105********002X 谢谢"),
        ("mail zhang.san@example.com", "mail z***@example.com"),
        ("card 4111 1111 1111 1111 ok", "card ************1111 ok"),
        ("卡号6217002870012345672", "卡号" + "*" * 15 + "5672"),
        ("order 2026052012345678 is late", "order 2026052012345678 is late"),  # fails Luhn: not a card
    ],
)
def test_masker(raw: str, masked: str) -> None:
    assert Masker()(raw) == masked


def test_masker_kinds_and_switch() -> None:
    text = "13812345678 a@b.com"
    assert Masker(kinds=["email"])(text) == "13812345678 a***@b.com"
    assert Masker(enabled=False)(text) == text


def test_log_filter_masks_args(caplog) -> None:
    logger = logging.getLogger("chatagent.test-mask")
    handler = logging.Handler()
    records = []
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(MaskingFilter(Masker()))
    logger.addHandler(handler)
    try:
        logger.warning("user wrote %s", "my phone is 13912345678")
    finally:
        logger.removeHandler(handler)
    assert records[0].getMessage() == "user wrote my phone is 139****5678"


def test_history_is_stored_masked(client, redis_server, mariadb, capfd) -> None:
    msg = "My phone is 13812345678 and e-mail li.lei@example.com, how do I reset my password?"
    body = client.post("/api/v1/chat", json={"message": msg}).json()
    key = f"{client.settings.redis_prefix}:session:{body['session_id']}"
    stored = json.loads(redis_server.client().lindex(key, 0))
    assert stored["content"] == "My phone is 138****5678 and e-mail l***@example.com, how do I reset my password?"
    row = mariadb.query("SELECT content FROM messages WHERE request_id=%s AND role='user'", (body["request_id"],))
    assert "13812345678" not in row[0]["content"] and "138****5678" in row[0]["content"]


def test_masking_can_be_disabled(client_factory, redis_server) -> None:
    client = client_factory(mask_pii=False)
    body = client.post("/api/v1/chat", json={"message": "13812345678 reset password"}).json()
    stored = json.loads(redis_server.client().lindex(f"{client.settings.redis_prefix}:session:{body['session_id']}", 0))
    assert stored["content"] == "13812345678 reset password"


def _every_rule(text: str) -> str:
    # The masker without its shortcut: every rule, in order, on every text.
    from chatagent.masking import _RULES

    for pattern, repl in _RULES.values():
        text = pattern.sub(repl, text)
    return text


@given(st.text(alphabet="0123456789 -+@.xXab中", max_size=60))
@settings(max_examples=400, deadline=None)
def test_masker_shortcut_masks_what_every_rule_masks(text: str) -> None:
    assert Masker()(text) == _every_rule(text)
