"""The retrieval query of a turn in a conversation.

A follow-up ("And how long does it take?", "那运费谁出？") is searched together with the previous
user message, so it finds the entry about the topic under discussion. A new, self-contained question
is searched on its own, so an old topic is not dragged into a new one; and even when blended, the new
message weighs twice the old one.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .embedders import normalise
from .query_cache import QueryEncoder
from .text import CJK, WORD

PREVIOUS_WEIGHT = 0.5
SHORT_WORDS = 4
SHORT_CJK_CHARS = 6
_LEADS_EN = re.compile(r"^\W*(and|but|also|so|then|or|what about|how about|what if|same|ok|okay)\b", re.I)
_REFERS_EN = re.compile(r"\b(it|its|that|this|those|these|them|they|there|one)\b", re.I)
_LEADS_ZH = re.compile(r"^\W*(那|那么|还有|另外|然后|再|如果|要是|这个|那个|它|这|同样)")
_REFERS_ZH = re.compile(r"(这个|那个|它|这样|那样|这些|那些)")


def refers_back(message: str) -> bool:
    """Whether the message needs the conversation to be understood (short, or opens/points back)."""
    if CJK.search(message):
        chars = sum(len(run) for run in CJK.findall(message))
        return chars <= SHORT_CJK_CHARS or bool(_LEADS_ZH.search(message) or _REFERS_ZH.search(message))
    words = WORD.findall(message.lower())
    return len(words) <= SHORT_WORDS or bool(_LEADS_EN.search(message) or _REFERS_EN.search(message))


def previous_user_message(history: list[dict[str, Any]] | None) -> str | None:
    for item in reversed(history or []):
        if item.get("role") == "user" and str(item.get("content") or "").strip():
            return str(item["content"])
    return None


async def retrieval_vector(encoder: QueryEncoder, message: str, history: list[dict[str, Any]] | None,
                           vector: np.ndarray) -> np.ndarray:
    """`vector` (the message's own embedding), blended with the previous user message's when the
    message refers back. The previous message's embedding is normally a cache hit."""
    previous = previous_user_message(history)
    if previous is None or not refers_back(message):
        return vector
    return normalise(vector + PREVIOUS_WEIGHT * await encoder.encode(previous))[0]
