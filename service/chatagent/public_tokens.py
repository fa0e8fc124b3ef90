"""Signed, expiring tokens that bind one anonymous browser to one chat session (public web chat)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

# Versioned salt: a token from another purpose signed with the same secret never validates here.
_SALT = "chatagent.public-session.v1"


class TokenError(Exception):
    """The token is not ours (bad signature, malformed) or no longer valid."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SessionToken:
    session_id: str
    expires_at: int
    token: str


class PublicTokens:
    """Issues and checks tokens; the expiry is part of the signed payload, so it cannot be extended."""

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        if len(secret) < 16:
            raise ValueError("public token secret must be at least 16 characters")
        self.serializer = URLSafeSerializer(secret, salt=_SALT)
        self.ttl_seconds = ttl_seconds

    def issue(self, session_id: str | None = None, *, now: float | None = None, ttl: int | None = None) -> SessionToken:
        session_id = session_id or uuid.uuid4().hex
        expires_at = int((time.time() if now is None else now) + (self.ttl_seconds if ttl is None else ttl))
        token = self.serializer.dumps({"sid": session_id, "exp": expires_at})
        return SessionToken(session_id=session_id, expires_at=expires_at, token=token)

    def verify(self, token: str, *, now: float | None = None) -> SessionToken:
        try:
            payload = self.serializer.loads(token)
        except BadSignature as exc:
            raise TokenError("invalid token") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("sid"), str) \
                or not isinstance(payload.get("exp"), int):
            raise TokenError("invalid token")
        if payload["exp"] <= (time.time() if now is None else now):
            raise TokenError("token expired")
        return SessionToken(session_id=payload["sid"], expires_at=payload["exp"], token=token)
