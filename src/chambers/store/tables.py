"""Table definitions (SQLAlchemy Core). Migrations in `migrations/` must match these."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()
TS = DateTime(timezone=True)
# None must be SQL NULL (not JSON null) so `IS NULL` filters see it.
JSONB = JSON(none_as_null=True)

orgs = Table(
    "orgs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", TS, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("scopes", String(200), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("revoked_at", TS),
    Column("last_used_at", TS),
)

chat_sessions = Table(
    "chat_sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    Column("agent_id", String(40)),
    Column("created_by", String(40)),
    Column("title", String(500)),
    Column("model", String(200), nullable=False),
    Column("idle_timeout_ms", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("active_turn_id", String(40)),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("last_activity_at", TS, nullable=False),
    Column("ended_at", TS),
    Column("snapshot_image_id", String(64)),
    Column("runtime_ms", BigInteger, nullable=False, default=0),
    Column("sandbox_started_at", TS),
    Column("event_seq", BigInteger, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cost_micros", BigInteger, nullable=False, default=0),
    Column("turn_count", Integer, nullable=False, default=0),
    Column("owner", String(200)),
    Column("owner_until", TS),
    Index("ix_chat_sessions_org_created", "org_id", "id"),
    Index("ix_chat_sessions_status_activity", "status", "last_activity_at"),
)

turns = Table(
    "turns",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("session_id", String(40), ForeignKey("chat_sessions.id"), nullable=False, index=True),
    Column("org_id", String(40), nullable=False),
    Column("status", String(24), nullable=False),
    Column("model", String(200), nullable=False),
    Column("user_message_id", String(40), nullable=False),
    Column("assistant_message_id", String(40)),
    Column("idempotency_key", String(200)),
    Column("started_at", TS, nullable=False),
    Column("ended_at", TS),
    Column("error", JSONB),
    Column("response", JSONB),
    Column("pending", JSONB),
    Column("model_messages", JSONB),
    Column("owner", String(200)),
    Column("lease_until", TS),
    UniqueConstraint("session_id", "idempotency_key", name="uq_turns_idempotency"),
    Index("ix_turns_status_lease", "status", "lease_until"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("session_id", String(40), ForeignKey("chat_sessions.id"), nullable=False),
    Column("turn_id", String(40)),
    Column("role", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("parts", JSONB, nullable=False),
    Column("created_at", TS, nullable=False),
    Index("ix_messages_session", "session_id", "id"),
)

usage_entries = Table(
    "usage_entries",
    metadata,
    Column("id", String(48), primary_key=True),
    Column("turn_id", String(40), nullable=False, index=True),
    Column("session_id", String(40), nullable=False),
    Column("org_id", String(40), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("service", String(64), nullable=False),
    Column("endpoint", String(200), nullable=False),
    Column("method", String(16), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("cost_micros", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger),
    Column("completion_tokens", BigInteger),
    Column("total_tokens", BigInteger),
    Column("model", String(200)),
    Column("timestamp", TS, nullable=False),
    Column("metadata", JSONB),
)

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False, index=True),
    Column("url", String(2000), nullable=False),
    Column("event_types", JSONB, nullable=False),
    Column("description", String(500)),
    Column("secret", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("disabled_at", TS),
    Column("disabled_reason", String(500)),
)

outbox_events = Table(
    "outbox_events",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), nullable=False),
    Column("type", String(100), nullable=False),
    Column("session_id", String(40)),
    Column("payload", JSONB, nullable=False),
    Column("created_at", TS, nullable=False),
    Index("ix_outbox_events_org", "org_id", "id"),
    Index("ix_outbox_events_created", "created_at"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("subscription_id", String(40), ForeignKey("webhook_subscriptions.id"), nullable=False),
    Column("event_id", String(40), ForeignKey("outbox_events.id"), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("ordering_key", String(80), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", TS, nullable=False),
    Column("lease_until", TS),
    Column("last_status_code", Integer),
    Column("last_error", String(1000)),
    Column("last_duration_ms", Integer),
    Column("created_at", TS, nullable=False),
    Column("delivered_at", TS),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_order", "subscription_id", "ordering_key", "event_id"),
    Index("ix_webhook_deliveries_event", "event_id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("delivery_id", String(40), ForeignKey("webhook_deliveries.id"), nullable=False, index=True),
    Column("subscription_id", String(40), nullable=False, index=True),
    Column("event_id", String(40), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status_code", Integer),
    Column("error", String(1000)),
    Column("duration_ms", Integer, nullable=False),
    Column("next_retry_at", TS),
    Column("created_at", TS, nullable=False),
)

# --- agent controller (core/controller, store/controller.py) ---------------------------------------------

agents = Table(
    "agents",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False, index=True),
    Column("did", String(80), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("model", String(200)),
    Column("system_prompt", Text),
    Column("tools", JSONB),
    Column("sandbox", JSONB, nullable=False),
    Column("policy", JSONB, nullable=False),
    Column("private_key", String(500), nullable=False),
    # The organisation's id on its default agent, NULL on the others: at most one default per org.
    Column("default_for", String(40), unique=True),
    Column("created_by", String(40)),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("deleted_at", TS),
)

users = Table(
    "users",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False, index=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(200)),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(200), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("disabled_at", TS),
)

user_logins = Table(
    "user_logins",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
)

grants = Table(
    "grants",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    Column("agent_id", String(40), ForeignKey("agents.id"), nullable=False),
    Column("subject_id", String(40), nullable=False),
    Column("capabilities", JSONB, nullable=False),
    Column("created_by", String(40)),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS),
    Column("revoked_at", TS),
    Index("ix_grants_subject_agent", "subject_id", "agent_id"),
    Index("ix_grants_org", "org_id", "id"),
)

rate_keys = Table(
    "rate_keys",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("touched_at", TS, nullable=False),
)

rate_hits = Table(
    "rate_hits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False),
    Column("at", TS, nullable=False),
    Index("ix_rate_hits_key_at", "key", "at"),
)

audit_chains = Table(
    "audit_chains",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), nullable=False, index=True),
    Column("seq", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("updated_at", TS, nullable=False),
)

audit_entries = Table(
    "audit_entries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), nullable=False),
    Column("chain_id", String(40), ForeignKey("audit_chains.id"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("agent_id", String(40), nullable=False),
    Column("agent_did", String(80), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("subject_id", String(40)),
    Column("session_id", String(40)),
    Column("turn_id", String(40)),
    Column("model", String(200)),
    Column("started_at", TS),
    Column("ended_at", TS),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cost_micros", BigInteger, nullable=False),
    Column("decisions", JSONB, nullable=False),
    Column("error", JSONB),
    Column("created_at", TS, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("signature", String(100), nullable=False),
    UniqueConstraint("chain_id", "seq", name="uq_audit_entries_chain_seq"),
    Index("ix_audit_entries_org", "org_id", "id"),
    Index("ix_audit_entries_spend", "agent_id", "subject_id", "created_at"),
)

# --- runs (core/runs.py, store/runs.py) ------------------------------------------------------------------

runs = Table(
    "runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("org_id", String(40), ForeignKey("orgs.id"), nullable=False),
    # queued, running, completed, failed or cancelled (waiting_for_input is read from the turn)
    Column("status", String(24), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("model", String(200), nullable=False),
    Column("title", String(500)),
    Column("metadata", JSONB),
    Column("agent_id", String(40)),
    Column("agent_did", String(200)),
    Column("idempotency_key", String(200)),
    Column("submitted_by", String(40)),
    Column("submitter_kind", String(16), nullable=False),
    Column("submitter_scopes", String(200), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    # The hidden chat session of the current attempt, and its turn.
    Column("session_id", String(40)),
    Column("turn_id", String(40)),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    # The replica executing it, while it renews the lease.
    Column("owner", String(200)),
    Column("lease_until", TS),
    Column("created_at", TS, nullable=False),
    Column("started_at", TS),
    Column("ended_at", TS),
    Column("parts", JSONB),
    Column("usage", JSONB),
    Column("error", JSONB),
    Column("snapshot_image_id", String(64)),
    Column("runtime_ms", BigInteger, nullable=False, default=0),
    UniqueConstraint("org_id", "idempotency_key", name="uq_runs_idempotency"),
    Index("ix_runs_org", "org_id", "id"),
    Index("ix_runs_queue", "status", "id"),
)
