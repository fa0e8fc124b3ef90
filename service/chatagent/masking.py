"""PII masking for logs and stored history: phone numbers, Chinese ID numbers, e-mail, bank cards."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

# Digit runs must not touch other digits, otherwise order numbers would be carved into "phones".
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_ID_CARD = re.compile(
    r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9A-Za-z])"
)
_BANK_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_PHONE = re.compile(r"(?<!\d)(?:(?:\+|00)86[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?!\d)")
# Every ID, phone or card number above holds 11 digits with at most one space or dash between
# neighbours; text without such a run (most log lines and answers) skips those three rules.
_LONG_NUMBER = re.compile(r"\d(?:[ -]?\d){10}")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _mask_email(m: re.Match[str]) -> str:
    local, _, domain = m.group(0).partition("@")
    return f"{local[:1]}***@{domain}"


def _mask_id(m: re.Match[str]) -> str:
    s = m.group(0)
    return s[:6] + "*" * 8 + s[-4:]


def _mask_card(m: re.Match[str]) -> str:
    s = m.group(0)
    digits = re.sub(r"\D", "", s)
    # Luhn keeps ordinary long numbers (order ids, tracking numbers) readable in most cases.
    if not 13 <= len(digits) <= 19 or not _luhn_ok(digits):
        return s
    return "*" * (len(digits) - 4) + digits[-4:]


def _mask_phone(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    return digits[-11:-8] + "****" + digits[-4:]


# Order matters: ID numbers contain phone-like runs; a spaced "+86 138 …" would pass as a card.
_NUMBER_RULES = ("id_card", "phone", "bank_card")
_RULES: dict[str, tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = {
    "email": (_EMAIL, _mask_email),
    "id_card": (_ID_CARD, _mask_id),
    "phone": (_PHONE, _mask_phone),
    "bank_card": (_BANK_CARD, _mask_card),
}


class Masker:
    def __init__(self, enabled: bool = True, kinds: Iterable[str] = tuple(_RULES)) -> None:
        self.enabled = enabled
        wanted = set(kinds)
        self._email = _RULES["email"] if "email" in wanted else None
        self._number_rules = [rule for name, rule in _RULES.items() if name in wanted and name in _NUMBER_RULES]

    def __call__(self, text: str) -> str:
        if not self.enabled or not text:
            return text
        # The rules' order stays: e-mail first, then ID, phone, card.
        if self._email is not None and "@" in text:
            text = self._email[0].sub(self._email[1], text)
        if self._number_rules and _LONG_NUMBER.search(text):
            for pattern, repl in self._number_rules:
                text = pattern.sub(repl, text)
        return text


class MaskingFilter(logging.Filter):
    """Masks the fully formatted message so PII passed through `%s` args is caught too."""

    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        # Every handler (stderr, the log file) carries this filter; the record is masked once.
        if self.masker.enabled and not getattr(record, "masked", False):
            try:
                message = record.getMessage()
            except Exception:  # a broken format string must not drop the record
                return True
            record.msg = self.masker(message)
            record.args = None
            record.masked = True
        return True
