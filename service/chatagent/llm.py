"""Answer providers: `extractive` (grounded in KB passages, nothing external) and `openai`
(any OpenAI-compatible chat endpoint, streamed, with timeout and retries)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx

from .knowledge import Hit

log = logging.getLogger(__name__)

TEXTS = {
    "en": {
        "no_hit": "Sorry, I couldn't find anything about that in our help center, and I won't guess. "
        "Would you like me to connect you with a human agent?",
        "handoff": "I'll connect you with a human agent who can help with this. "
        "You can also keep asking me about orders, shipping, returns, refunds, invoices, accounts or payments.",
        "greeting": "Hello! I can help with orders, shipping, returns, refunds, invoices, accounts and payments. "
        "What can I do for you?",
        "source": "Source",
        "related": "See also",
    },
    "zh": {
        "no_hit": "抱歉，我在帮助中心里没有找到相关内容，不想随意猜测。需要为您转接人工客服吗？",
        "handoff": "我来为您转接人工客服处理这个问题。您也可以继续问我订单、物流、退货、退款、发票、账户或支付相关的问题。",
        "greeting": "您好！我可以帮您处理订单、物流、退货、退款、发票、账户和支付相关的问题，请问有什么可以帮您？",
        "source": "来源",
        "related": "相关",
    },
}


class LLMError(RuntimeError):
    pass


class LLMStreamBroken(LLMError):
    """The answer broke off after part of it had been yielded (a plain LLMError: before any of it)."""


class AnswerProvider(Protocol):
    name: str

    def stream(self, question: str, history: list[dict[str, Any]], hits: list[Hit], lang: str,
               intent: str) -> AsyncIterator[str]: ...

    async def complete(self, question: str, history: list[dict[str, Any]], hits: list[Hit], lang: str,
                       intent: str) -> str:
        """The whole answer at once, for a turn nobody watches token by token."""


def split_tokens(text: str) -> list[str]:
    """Word-sized pieces for streaming; CJK text goes a few characters at a time."""
    return re.findall(r"[\u3000-\u9fff\uff00-\uffef]{1,4}|\s*[^\s\u3000-\u9fff\uff00-\uffef]+|\s+", text)


def pick_hits(hits: list[Hit], lang: str, margin: float = 0.05) -> list[Hit]:
    """Among near-equal hits prefer the user's language, so a Chinese question cites the Chinese entry."""
    if not hits:
        return []
    best = hits[0].score
    close = [h for h in hits if best - h.score <= margin]
    same = [h for h in close if h.lang == lang]
    first = same[0] if same else hits[0]
    return [first] + [h for h in hits if h is not first]


def extractive_answer(hits: list[Hit], lang: str, intent: str) -> str:
    t = TEXTS.get(lang, TEXTS["en"])
    if intent == "greeting" and not hits:
        return t["greeting"]
    if intent == "handoff" and not hits:
        return t["handoff"]
    if not hits:
        return t["no_hit"]
    ordered = pick_hits(hits, lang)
    best = ordered[0]
    return "\n".join([best.answer.strip(), "", f"{t['source']}: [{best.id}] {best.title}"])


class ExtractiveProvider:
    name = "extractive"

    async def stream(self, question: str, history: list[dict[str, Any]], hits: list[Hit], lang: str,
                     intent: str) -> AsyncIterator[str]:
        for token in split_tokens(extractive_answer(hits, lang, intent)):
            yield token

    async def complete(self, question: str, history: list[dict[str, Any]], hits: list[Hit], lang: str,
                       intent: str) -> str:
        # Splitting into words and walking them through the generator was 17 µs of a cached turn.
        return extractive_answer(hits, lang, intent)


SYSTEM_PROMPT = (
    "You are the customer-service assistant of an online shop. Answer ONLY from the numbered passages "
    "below. Cite the passage id in square brackets, e.g. [returns-policy]. If the passages do not "
    "answer the question, say so and offer to connect a human agent; never invent policies, prices or "
    "dates. Reply in the user's language ({lang}). Be concise."
)


class OpenAIProvider:
    """Streams from `{base_url}/chat/completions`; raises LLMError once retries are spent."""

    name = "openai"

    def __init__(self, base_url: str, api_key: str | None, model: str, timeout: float, max_retries: int,
                 temperature: float, max_tokens: int, history_messages: int = 8) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.history_messages = history_messages
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        )

    def build_messages(self, question: str, history: list[dict[str, Any]], hits: list[Hit],
                       lang: str) -> list[dict[str, str]]:
        passages = "\n\n".join(f"[{h.id}] {h.title}\n{h.text}" for h in hits)
        messages = [{"role": "system", "content": SYSTEM_PROMPT.format(lang=lang) + "\n\nPassages:\n" + passages}]
        for m in history[-self.history_messages :]:
            if m.get("role") in ("user", "assistant"):
                messages.append({"role": m["role"], "content": str(m.get("content", ""))})
        messages.append({"role": "user", "content": question})
        return messages

    async def stream(self, question: str, history: list[dict[str, Any]], hits: list[Hit], lang: str,
                     intent: str) -> AsyncIterator[str]:
        if not hits:
            # Nothing grounded to say: the refusal is fixed text, the model is not asked to improvise.
            async for token in ExtractiveProvider().stream(question, history, hits, lang, intent):
                yield token
            return
        body = {
            "model": self.model,
            "messages": self.build_messages(question, history, hits, lang),
            "stream": True,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            emitted = False
            try:
                async with self.client.stream("POST", "/chat/completions", json=body) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        raise LLMError(f"LLM HTTP {resp.status_code}")
                    async for line in resp.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        chunk = json.loads(data)
                        for choice in chunk.get("choices") or []:
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                emitted = True
                                yield text
                if not emitted:
                    raise LLMError("LLM returned an empty answer")
                return
            except (httpx.HTTPError, LLMError, ValueError, KeyError) as exc:
                last_error = exc
                if emitted:
                    # Half an answer is already on the wire; retrying would duplicate it.
                    raise LLMStreamBroken(f"LLM stream broke: {exc}") from exc
                log.warning("LLM attempt %d failed: %s", attempt + 1, exc)
                if attempt < self.max_retries:
                    await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        raise LLMError(f"LLM unavailable after {self.max_retries + 1} attempts: {last_error}")

    async def complete(self, question: str, history: list[dict[str, Any]], hits: list[Hit], lang: str,
                       intent: str) -> str:
        # Streamed all the same: the endpoint's timeout then bounds the wait between chunks, not the
        # whole answer. A break part-way raises, and the caller falls back without the half answer.
        return "".join([token async for token in self.stream(question, history, hits, lang, intent)])

    async def check(self) -> None:
        resp = await self.client.get("/models", timeout=3.0)
        resp.raise_for_status()

    async def aclose(self) -> None:
        await self.client.aclose()
