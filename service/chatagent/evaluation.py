"""Answer-quality evaluation: does the agent cite the entry the customer meant, refuse what it cannot
answer and hand off when asked for a person?

A case is one JSON line: `{"id", "category", "lang", "split", "turns": [message, ...], "expect"}`
where `expect` is an entry id (or a list of acceptable ids) for the last turn, `"refuse"` (no source
may be cited) or `"handoff"` (the user asked for a person). Earlier turns of a case are sent in the
same session, so follow-up questions are judged with their conversation.

Runs in-process through the real graph (`Services` without Redis/MySQL) or against a running API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from .llm import TEXTS

REFUSE = "refuse"
HANDOFF = "handoff"


class Case(BaseModel):
    id: str
    category: str
    lang: str = ""
    split: str = ""
    turns: list[str] = Field(min_length=1)
    expect: str | list[str]

    @property
    def expected_ids(self) -> list[str]:
        return [self.expect] if isinstance(self.expect, str) else list(self.expect)

    @property
    def kind(self) -> str:
        if self.expect == REFUSE:
            return REFUSE
        if self.expect == HANDOFF:
            return HANDOFF
        return "retrieval"


@dataclass
class Reply:
    """What the agent did on the last turn of a case."""

    sources: list[str]
    handed_off: bool
    answer: str = ""


@dataclass
class Outcome:
    case: Case
    reply: Reply

    @property
    def rank(self) -> int | None:
        for position, source in enumerate(self.reply.sources, 1):
            if source in self.case.expected_ids:
                return position
        return None

    @property
    def ok(self) -> bool:
        kind = self.case.kind
        if kind == REFUSE:
            return not self.reply.sources and not self.reply.handed_off
        if kind == HANDOFF:
            return self.reply.handed_off
        return self.rank == 1 and not self.reply.handed_off


def load_cases(path: Path, split: str | None = None) -> list[Case]:
    cases = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                case = Case.model_validate_json(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from exc
            if split in (None, "all") or case.split == split:
                cases.append(case)
    return cases


Asker = Callable[[Case], Awaitable[Reply]]


_HANDOFF_TEXTS = {t["handoff"] for t in TEXTS.values()}


def reply_of(intent: str, sources: list[str], answer: str) -> Reply:
    # Answers report intent "handoff" whenever a person is offered (asked for, or nothing found);
    # only a requested handoff gets the fixed handoff text, with no passage (no LLM call either).
    return Reply(sources, intent == HANDOFF and not sources and answer.strip() in _HANDOFF_TEXTS, answer)


def in_process_asker(services: Any) -> Asker:
    """Each case is a new session on the given `Services`; every turn runs as a chat request does."""
    from .graph import begin_turn

    async def ask(case: Case) -> Reply:
        session_id: str | None = None
        result = None
        for message in case.turns:
            turn = await begin_turn(services, message=message, session_id=session_id, request_id=uuid.uuid4().hex)
            result = await turn.result()
            session_id = result.session_id
        assert result is not None
        return reply_of(result.intent, [s.id for s in result.sources], result.answer)

    return ask


def api_asker(base_url: str, api_key: str | None, verify: bool | str = True) -> tuple[Asker, httpx.AsyncClient]:
    """Cases against a running API (`POST /api/v1/chat`), one session per case."""
    client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=60, verify=verify,
                               headers={"Authorization": f"Bearer {api_key}"} if api_key else {})

    async def ask(case: Case) -> Reply:
        session_id = None
        body: dict[str, Any] = {}
        for message in case.turns:
            payload: dict[str, Any] = {"message": message}
            if session_id:
                payload["session_id"] = session_id
            resp = await client.post("/api/v1/chat", json=payload)
            resp.raise_for_status()
            body = resp.json()
            session_id = body["session_id"]
        return reply_of(body.get("intent", ""), [s["id"] for s in body.get("sources", [])], body.get("answer", ""))

    return ask, client


async def run_cases(cases: list[Case], ask: Asker, concurrency: int = 1) -> list[Outcome]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> Outcome:
        async with semaphore:
            return Outcome(case, await ask(case))

    return list(await asyncio.gather(*(one(c) for c in cases)))


@dataclass
class Group:
    n: int = 0
    correct: int = 0
    retrieval: int = 0
    top3: int = 0
    rr: float = 0.0

    def add(self, outcome: Outcome) -> None:
        self.n += 1
        self.correct += outcome.ok
        if outcome.case.kind == "retrieval":
            rank = outcome.rank
            self.retrieval += 1
            self.top3 += rank is not None and rank <= 3
            self.rr += 1 / rank if rank else 0.0


@dataclass
class Report:
    outcomes: list[Outcome]
    groups: dict[str, Group] = field(default_factory=dict)

    def __post_init__(self) -> None:
        groups: dict[str, Group] = defaultdict(Group)
        for o in self.outcomes:
            c = o.case
            for key in ("all", c.category, f"{c.category}/{c.lang}", f"split:{c.split}",
                        f"{c.category}/split:{c.split}"):
                groups[key].add(o)
            if c.kind == "retrieval":
                groups["retrieval"].add(o)
                groups[f"retrieval/split:{c.split}"].add(o)
        self.groups = dict(groups)

    def figures(self) -> dict[str, float]:
        retrieval = self.groups.get("retrieval", Group())
        predicted = [o for o in self.outcomes if o.reply.handed_off]
        wanted = [o for o in self.outcomes if o.case.kind == HANDOFF]
        hit = [o for o in wanted if o.reply.handed_off]
        refuse = [o for o in self.outcomes if o.case.kind == REFUSE]
        followup = self.groups.get("followup", Group())
        paraphrase = self.groups.get("paraphrase", Group())
        return {
            "cases": len(self.outcomes),
            "top1": _ratio(retrieval.correct, retrieval.n),
            "top3": _ratio(retrieval.top3, retrieval.n),
            "mrr": round(retrieval.rr / retrieval.n, 4) if retrieval.n else 1.0,
            "paraphrase_top1": _ratio(paraphrase.correct, paraphrase.n),
            "followup_top1": _ratio(followup.correct, followup.n),
            "refusal": _ratio(sum(o.ok for o in refuse), len(refuse)),
            "handoff_precision": _ratio(len(hit), len(predicted)),
            "handoff_recall": _ratio(len(hit), len(wanted)),
        }

    def render(self) -> str:
        lines = ["| group | cases | correct | top-1 | top-3 | MRR |", "|---|---:|---:|---:|---:|---:|"]
        for key in sorted(self.groups, key=_group_order):
            g = self.groups[key]
            top3 = f"{g.top3 / g.retrieval:.1%}" if g.retrieval else "–"
            mrr = f"{g.rr / g.retrieval:.3f}" if g.retrieval else "–"
            lines.append(f"| {key} | {g.n} | {g.correct} | {g.correct / g.n:.1%} | {top3} | {mrr} |")
        f = self.figures()
        lines.append("")
        lines.append(
            f"top-1 {f['top1']:.1%}  top-3 {f['top3']:.1%}  MRR {f['mrr']:.3f}  "
            f"paraphrase top-1 {f['paraphrase_top1']:.1%}  follow-up top-1 {f['followup_top1']:.1%}  "
            f"refusal {f['refusal']:.1%}  handoff precision {f['handoff_precision']:.1%} "
            f"recall {f['handoff_recall']:.1%}  ({f['cases']} cases)"
        )
        misses = [o for o in self.outcomes if not o.ok]
        if misses:
            lines.append("")
            lines.append("misses:")
            for o in sorted(misses, key=lambda o: (o.case.category, o.case.id)):
                got = ", ".join(o.reply.sources[:3]) or ("handoff" if o.reply.handed_off else "refused")
                lines.append(f"  [{o.case.category}] {o.case.id}: {' ⏎ '.join(o.case.turns)}  "
                             f"want {o.case.expect}  got {got}")
        return "\n".join(lines)


def _group_order(key: str) -> tuple[int, str]:
    if key == "all":
        return 0, key
    if key.startswith("retrieval"):
        return 1, key
    if key.startswith("split:"):
        return 2, key
    return 3, key


def _ratio(num: int, den: int) -> float:
    return round(num / den, 4) if den else 1.0


def check_floor(figures: dict[str, float], floor: dict[str, float]) -> list[str]:
    """Names of the figures below their floor, e.g. `top1 0.812 < 0.85`."""
    unknown = set(floor) - set(figures)
    if unknown:
        raise ValueError(f"unknown figure(s) in floor: {', '.join(sorted(unknown))}; known: {', '.join(figures)}")
    return [f"{k} {figures[k]:.3f} < {v}" for k, v in floor.items() if figures[k] < v]


def parse_floor(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        out[name.strip()] = float(value)
    return out


def report_json(report: Report) -> str:
    return json.dumps({
        "figures": report.figures(),
        "groups": {k: g.__dict__ for k, g in report.groups.items()},
        "misses": [{"id": o.case.id, "turns": o.case.turns, "expect": o.case.expect, "got": o.reply.sources[:3],
                    "handed_off": o.reply.handed_off} for o in report.outcomes if not o.ok],
    }, ensure_ascii=False, indent=2)
