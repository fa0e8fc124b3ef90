"""Idempotent chat turns: one answer per request id, whichever worker or instance sees the retry.

nginx sends `X-Request-ID` and may retry a POST on another instance after a failure. A turn first
claims its request id in the session memory (a short lease the owner renews while it runs); the
answer replaces the claim atomically with the history append, so a retry either replays the stored
answer, waits while the first attempt is still running, or takes over once the owner's lease ran
out (the owner died before storing anything). Without Redis the claim is per process and MySQL is
asked whether the request was already answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from .memory import Memory, RateCheck
from .store import MySQLStore, Source

log = logging.getLogger(__name__)

_RECORD: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


@dataclass(frozen=True)
class TurnResult:
    """What a client gets for a turn, whichever endpoint asked and whether it ran or was replayed."""

    request_id: str
    session_id: str
    answer: str
    intent: str
    sources: list[Source] = field(default_factory=list)
    confidence: float | None = None
    replayed: bool = False

    def record(self, fingerprint: str) -> str:
        body = {
            "request_id": self.request_id, "session_id": self.session_id, "answer": self.answer,
            "intent": self.intent, "confidence": self.confidence, "sources": self.sources,
        }
        # pydantic-core's encoder: json.dumps over model_dump() was 12 µs of every turn, this is 4.
        return _RECORD.dump_json({"state": "done", "fp": fingerprint, "result": body}).decode()

    @classmethod
    def from_record(cls, result: dict[str, Any]) -> TurnResult:
        sources = [Source(**s) for s in result.pop("sources", [])]
        return cls(**result, sources=sources, replayed=True)


class RequestIdConflict(Exception):
    """The request id was already used for a different request (another message, session or key)."""


class TurnInFlight(Exception):
    """The same request id is still being answered elsewhere and did not finish within the wait."""


class RateLimited(Exception):
    """The rate-limit hit taken with the turn's opening was refused; the turn did not start."""


@dataclass
class Claim:
    request_id: str
    fingerprint: str
    pending: str | None  # the value we hold in memory; None when memory could not take a claim
    # Renewal starts only once the turn has run for a third of its lease: a task per turn (created,
    # cancelled, awaited) cost a cached turn ~2 % of its CPU, and almost every turn ends sooner.
    timer: asyncio.TimerHandle | None = None
    renewer: asyncio.Task[None] | None = None


@dataclass
class Begun:
    """A claimed request id, or the earlier answer to it, and what session memory said on the way."""

    outcome: Claim | TurnResult
    # The session's messages in memory ([] none; None: not asked, or memory could not answer).
    history: list[dict[str, Any]] | None = None
    # Memory's value for the prefetch key, when `looked_up`.
    cached: bytes | None = None
    looked_up: bool = False


def fingerprint(identity: str | None, session_id: str | None, message: str) -> str:
    """Ties a request id to what was asked, so a reused id never returns someone else's answer."""
    raw = "\x00".join((identity or "", session_id or "", message))
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class TurnLedger:
    def __init__(self, memory: Memory, store: MySQLStore | None, lease: float, wait: float) -> None:
        self.memory = memory
        self.store = store
        self.lease = lease
        self.wait = wait

    async def begin(self, request_id: str, fp: str, session_id: str | None = None,
                    prefetch: str | None = None, rate: RateCheck | None = None) -> Begun:
        """Claim the request id for a new turn, or find the earlier answer to it; on the same round
        trip, hit the `rate` limit and read the history of `session_id` and the value under the
        `prefetch` key. Without session memory the limit is not checked (it fails open, like the
        limiter on its own).

        Raises RateLimited, RequestIdConflict or TurnInFlight.
        """
        # json.dumps's exact output, without an encoder per turn: both values are hex.
        pending = f'{{"state": "pending", "fp": "{fp}", "token": "{os.urandom(16).hex()}"}}'
        deadline = time.monotonic() + self.wait
        delay = 0.01
        begun = Begun(Claim(request_id, fp, None))
        first = True
        while True:
            try:
                if first:
                    opening = await self.memory.open_turn(request_id, pending, self.lease, session_id, prefetch,
                                                          rate)
                    existing = opening.existing
                    begun.history, begun.cached = opening.history, opening.cached
                    begun.looked_up = prefetch is not None
                else:  # waiting for another attempt: only the claim is asked again
                    existing = await self.memory.claim_turn(request_id, pending, self.lease)
            except Exception as exc:
                log.warning("cannot claim request id in session memory, checking MySQL: %s", exc)
                earlier = await self._answered_in_mysql(request_id)
                begun.outcome = earlier if earlier is not None else Claim(request_id, fp, None)
                return begun
            if first and opening.limited:
                raise RateLimited(request_id)
            first = False
            if existing is None:
                claim = Claim(request_id, fp, pending)
                claim.timer = asyncio.get_running_loop().call_later(self.lease / 3, self._start_renewing, claim)
                begun.outcome = claim
                return begun
            record = json.loads(existing)
            if record.get("fp") != fp:
                raise RequestIdConflict(request_id)
            if record.get("state") == "done":
                begun.outcome = TurnResult.from_record(record["result"])
                return begun
            if time.monotonic() >= deadline:
                raise TurnInFlight(request_id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _start_renewing(self, claim: Claim) -> None:
        claim.timer = None
        claim.renewer = asyncio.create_task(self._renew(claim))

    async def _renew(self, claim: Claim) -> None:
        assert claim.pending is not None
        while True:
            try:
                if not await self.memory.renew_turn(claim.request_id, claim.pending, self.lease):
                    return  # answered (the record replaced the claim) or the claim is gone
            except Exception as exc:
                log.warning("request id lease not renewed: %s", exc)
            await asyncio.sleep(self.lease / 3)

    async def end(self, claim: Claim, answered: bool) -> None:
        """Stop renewing; a turn that did not answer gives its request id back for a retry."""
        if claim.timer is not None:
            claim.timer.cancel()
            claim.timer = None
        if claim.renewer is not None:
            claim.renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await claim.renewer
        if not answered and claim.pending is not None:
            try:
                await self.memory.release_turn(claim.request_id, claim.pending)
            except Exception as exc:
                log.warning("request id claim not released (expires by itself): %s", exc)

    async def _answered_in_mysql(self, request_id: str) -> TurnResult | None:
        if self.store is None:
            return None
        try:
            row = await asyncio.to_thread(self.store.answered_turn, request_id)
        except Exception as exc:
            log.warning("MySQL cannot tell whether request %s was answered: %s", request_id, exc)
            return None
        if row is None:
            return None
        return TurnResult.from_record({"request_id": request_id, **row})

    async def answered(self, request_id: str) -> bool | None:
        """Whether a turn with this id was answered; None when no backend can tell."""
        known: bool | None = None
        try:
            raw = await self.memory.turn_record(request_id)
            known = raw is not None and json.loads(raw).get("state") == "done"
        except Exception as exc:
            log.warning("session memory unavailable for request lookup: %s", exc)
        if not known and self.store is not None:
            try:
                known = await asyncio.to_thread(self.store.answered_turn, request_id) is not None
            except Exception as exc:
                log.warning("MySQL unavailable for request lookup: %s", exc)
        return known
