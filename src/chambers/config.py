"""Settings: embedded defaults, an optional TOML file, `CHAMBERS_*` environment variables.

Precedence, highest first: explicit overrides (CLI flags), environment, TOML file, defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class ProviderConfig(BaseModel):
    """A named OpenAI-compatible provider, used as `NAME/model` in model strings."""

    base_url: str
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable that holds the provider's key."
    )


class Settings(BaseSettings):
    """Every setting of the server. See docs/configuration.md for the reference."""

    model_config = SettingsConfigDict(env_prefix="CHAMBERS_", extra="forbid", validate_default=True)

    data_dir: Path = Field(
        default=Path(".chambers"), description="Where SQLite, sandboxes and snapshots live."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default SQLite in the data dir. postgresql://… for scale-out.",
    )
    redis_url: str | None = Field(default=None, description="redis://… selects the Redis event bus.")
    redis_key_prefix: str = Field(
        default="chambers",
        pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
        description="Prefix of every Redis key; replicas of one deployment share it.",
    )
    redis_event_ttl_s: int = Field(
        default=86_400, ge=0, description="Idle sessions' Redis events and counters expire; 0 keeps them."
    )
    replica_id: str | None = Field(
        default=None, description="This replica's name among several; default `<hostname>:<port>` (stable)."
    )
    lease_s: float = Field(default=15.0, ge=1, description="Leases on running turns and sandboxes.")
    snapshot_dir: Path | None = Field(
        default=None, description="Where snapshots live; default <data_dir>/snapshots."
    )
    snapshot_url: str | None = Field(
        default=None,
        description="s3://bucket/prefix keeps snapshots in S3-compatible object storage; "
        "file:///path or a path, a directory (like snapshot_dir).",
    )
    snapshot_endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible service (MinIO, Ceph, R2, ...)."
    )
    checkpoint_turns: bool | None = Field(
        default=None, description="Snapshot after each tool-using turn; default on when redis_url is set."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Largest accepted request body."
    )

    default_model: str = "anthropic/claude-sonnet-4.6"
    agent_loop: Literal["direct", "pydantic-ai"] = Field(
        default="direct",
        description="`direct`: Chambers' own streaming clients; `pydantic-ai`: pydantic-ai's agent and SDKs.",
    )
    idle_timeout_default_ms: int = Field(default=900_000, ge=1)
    idle_timeout_min_ms: int = Field(default=60_000, ge=1)
    idle_timeout_max_ms: int = Field(default=86_400_000, ge=1)
    reaper_interval_s: float = Field(default=300.0, gt=0)
    max_message_chars: int = Field(default=200_000, ge=1, description="Longest accepted text part.")
    max_parts: int = Field(default=64, ge=1)

    event_buffer_size: int = Field(default=1000, ge=500, description="Events kept per session for replay.")
    event_buffer_idle_s: float = Field(
        default=86_400,
        ge=0,
        description="The in-process bus drops a session's buffer unused this long; 0 keeps it.",
    )
    event_buffer_sessions: int = Field(
        default=10_000,
        ge=1,
        description="The in-process bus holds at most this many sessions' buffers (least recently used go).",
    )
    gc_full_every: int = Field(
        default=100,
        ge=1,
        description="Collections of the garbage collector's middle generation between full ones "
        "(Python's default is 10); each full one pauses every stream.",
    )
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    part_update_window_ms: float = Field(
        default=15.0, ge=0, description="Text deltas after the first are coalesced within this window."
    )
    turn_retry_after_s: int = Field(default=2, ge=1, description="Retry-After sent with 409 TURN_CONFLICT.")
    max_running_turns: int = Field(
        default=0, ge=0, description="New turns past this many running here get 503 OVERLOADED (0: no cap)."
    )
    overload_lag_ms: float = Field(
        default=1000.0,
        ge=0,
        description="New turns get 503 OVERLOADED while the event loop runs this late for 0.5 s (0: off).",
    )
    overload_store_wait_ms: float = Field(
        default=5000.0,
        ge=0,
        description="New turns get 503 OVERLOADED while one has waited this long for the database (0: off).",
    )
    overload_retry_after_s: int = Field(default=5, ge=1, description="Retry-After sent with 503 OVERLOADED.")
    runtime_hourly_rate_usd: float = Field(default=0.20, ge=0)
    max_model_requests_per_turn: int = Field(default=50, ge=1)

    sandbox_backend: Literal["bwrap", "process"] = "bwrap"
    sandbox_eager: bool = False
    sandbox_network: bool = False
    sandbox_command_timeout_s: float = Field(default=120.0, gt=0)
    sandbox_output_limit_bytes: int = Field(default=32 * 1024, ge=256)
    tool_costs_micros: dict[str, int] = Field(
        default_factory=dict, description="Cost per call, by tool name."
    )
    question_timeout_s: float = Field(default=3600.0, gt=0)
    cancel_grace_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How long a cancel waits for the turn to stop before forcing it.",
    )

    # webhooks (src/chambers/webhooks)
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default=[5, 30, 120, 600, 1800, 3600, 7200],
        description="Seconds between a failed delivery attempt and the next (comma-separated in env).",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300, description="Limit of one attempt.")
    webhook_disable_after: int = Field(
        default=20, ge=1, description="Consecutive failed deliveries before a subscription is disabled."
    )
    webhook_poll_interval_s: float = Field(default=0.5, gt=0, le=60)
    webhook_retention_days: float = Field(
        default=7.0,
        gt=0,
        description="Delivered and dead webhook events are deleted after this many days, with their "
        "delivery log; events still waiting to be delivered are kept.",
    )
    webhook_prune_interval_s: float = Field(
        default=600.0, gt=0, le=86400, description="How often each server prunes the webhook outbox."
    )
    webhook_concurrency: int = Field(default=16, ge=1, le=1000, description="Attempts in flight per process.")
    webhook_allow_private_targets: bool = Field(
        default=False, description="Allow webhook URLs that resolve to loopback or private addresses."
    )
    secret_key: SecretStr | None = Field(
        default=None, description="Encrypts stored secrets; default: a key file in the data dir."
    )

    # runs (core/runs.py): fire-and-forget agent jobs
    run_concurrency: int = Field(
        default=4, ge=0, le=1000, description="Runs executed at once per process; 0 executes none here."
    )
    run_poll_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="How often workers look for runs queued by other processes."
    )

    # agent controller (core/controller): sign-in cookies and the origins allowed to use them
    session_cookie_name: str = Field(
        default="chambers_session",
        pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}$",
        description="Name of the sign-in cookie.",
    )
    session_cookie_max_age_s: int = Field(
        default=7 * 86400, ge=60, le=400 * 86400, description="How long a sign-in lasts."
    )
    trusted_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins besides the server's own that may send cookie-authenticated writes.",
    )

    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    model_aliases: dict[str, str] = Field(default_factory=dict, description="Extra `name -> provider id`.")

    config_file: Path | None = Field(default=None, exclude=True)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if not value:  # CHAMBERS_REDIS_URL= (empty) means no Redis, as if unset
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("snapshot_url")
    @classmethod
    def _snapshot_location(cls, value: str | None) -> str | None:
        if value is not None:
            parse_snapshot_url(value)
        return value

    @field_validator("snapshot_endpoint_url")
    @classmethod
    def _snapshot_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, e.g. https://minio.internal:9000")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials: use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _schedule_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule_bounds(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one delay, e.g. 5,30,120")
        if any(not 0 < v <= 7 * 86400 for v in value):
            raise ValueError("each delay must be more than 0 and at most 604800 seconds (7 days)")
        return value

    @field_validator("trusted_origins", mode="before")
    @classmethod
    def _origins_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_origins")
    @classmethod
    def _origins_shape(cls, value: list[str]) -> list[str]:
        for origin in value:
            scheme, sep, rest = origin.partition("://")
            if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return [origin.lower().rstrip("/") for origin in value]

    @model_validator(mode="after")
    def _bounds(self) -> Settings:
        if self.idle_timeout_min_ms > self.idle_timeout_max_ms:
            raise ValueError("idle_timeout_min_ms must not exceed idle_timeout_max_ms")
        if not self.idle_timeout_min_ms <= self.idle_timeout_default_ms <= self.idle_timeout_max_ms:
            raise ValueError("idle_timeout_default_ms must lie between the min and max bounds")
        if self.snapshot_url is not None and self.snapshot_dir is not None:
            raise ValueError("set snapshot_url or snapshot_dir, not both")
        if self.snapshot_endpoint_url is not None and not isinstance(self.snapshot_location, S3Location):
            raise ValueError("snapshot_endpoint_url needs an s3:// snapshot_url")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml_path.get()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @property
    def resolved_replica_id(self) -> str:
        """A name that survives restarts, so a restarted replica recognises its own orphaned turns."""
        if self.replica_id:
            return self.replica_id
        import socket

        return f"{socket.gethostname()}:{self.port}"

    @property
    def snapshot_location(self) -> Path | S3Location:
        """Where snapshots live: a directory (default `<data_dir>/snapshots`) or an S3 bucket and prefix."""
        if self.snapshot_url is not None:
            return parse_snapshot_url(self.snapshot_url)
        return self.snapshot_dir or self.data_dir / "snapshots"

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL actually used (SQLite on `sqlite3`, PostgreSQL on asyncpg)."""
        if self.database_url is None:
            return f"sqlite+pysqlite:///{(self.data_dir / 'chambers.db').resolve()}"
        url = self.database_url
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        if url.startswith("postgresql://"):
            url = "postgresql+asyncpg://" + url.removeprefix("postgresql://")
        if url.startswith(("sqlite://", "sqlite+aiosqlite://")):  # the latter, as configured before 2026-12
            url = "sqlite+pysqlite://" + url.split("://", 1)[1]
        return url


@dataclass(frozen=True)
class S3Location:
    """Snapshots in a bucket of S3-compatible object storage, under a key prefix ("" for none)."""

    bucket: str
    prefix: str


_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$")


def parse_snapshot_url(url: str) -> Path | S3Location:
    """`s3://bucket/optional/prefix`, `file:///path` or a plain path; ValueError with the reason."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if not scheme:
        if not url.strip():
            raise ValueError("is empty")
        return Path(url).expanduser()
    parts = urlsplit(url)
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError("a file URL is file:///absolute/path")
        return Path(unquote(parts.path))
    if scheme != "s3":
        raise ValueError(f"unknown scheme {scheme}://: use s3://bucket/prefix, file:///path or a path")
    if "@" in parts.netloc:
        raise ValueError("must not hold credentials: use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    bucket = parts.netloc
    if not bucket:
        raise ValueError("names no bucket: use s3://bucket or s3://bucket/prefix")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"{bucket!r} is not a bucket name (3-63 letters, digits, '.', '-' or '_')")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ValueError(f"prefix {prefix!r} has an empty, '.' or '..' segment")
    return S3Location(bucket=bucket, prefix=prefix)


class _TomlPath:
    """The TOML file for the Settings being built (pydantic-settings reads sources at construction)."""

    def __init__(self) -> None:
        self._path: Path | None = None

    def get(self) -> Path | None:
        return self._path

    def set(self, path: Path | None) -> None:
        self._path = path


_toml_path = _TomlPath()


class SettingsError(Exception):
    """A bad setting, with a message fit for an operator."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, the TOML file, the environment and explicit overrides."""
    from pydantic import ValidationError

    if config_file is not None and not config_file.is_file():
        raise SettingsError(f"config file {config_file} does not exist")
    _toml_path.set(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f"CHAMBERS_{str(err['loc'][0]).upper()}" if err["loc"] else ""
            lines.append(f"  {field} ({env}): {err['msg']}" if env else f"  {field}: {err['msg']}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
    finally:
        _toml_path.set(None)
