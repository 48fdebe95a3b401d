"""An agent's policy: the limits every turn with the agent is checked against before any model call.

Every field is optional; an empty policy limits nothing (and keeps the sandbox offline). The wire form
is camelCase JSON, validated here so the API and the CLI refuse the same mistakes with the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chambers.core.errors import InvalidRequest

BUILTIN_TOOLS: tuple[str, ...] = (
    "shell",
    "read_file",
    "write_file",
    "edit_file",
    "list_files",
    "grep",
    "ask_user",
)

# wire name -> (attribute, kind); kinds: models, tools, count (>= 1), micros (>= 0), flag
_FIELDS: dict[str, tuple[str, str]] = {
    "allowedModels": ("allowed_models", "models"),
    "allowedTools": ("allowed_tools", "tools"),
    "maxTurnsPerSession": ("max_turns_per_session", "count"),
    "maxMessageChars": ("max_message_chars", "count"),
    "maxOutputTokensPerTurn": ("max_output_tokens_per_turn", "count"),
    "maxCostMicrosPerSession": ("max_cost_micros_per_session", "micros"),
    "maxCostMicrosPerSubjectPerDay": ("max_cost_micros_per_subject_per_day", "micros"),
    "requestsPerMinutePerSubject": ("requests_per_minute_per_subject", "count"),
    "network": ("network", "flag"),
}
POLICY_FIELDS: tuple[str, ...] = tuple(_FIELDS)


@dataclass(frozen=True, slots=True)
class Policy:
    allowed_models: tuple[str, ...] | None = None
    allowed_tools: frozenset[str] | None = None
    max_turns_per_session: int | None = None
    max_message_chars: int | None = None
    max_output_tokens_per_turn: int | None = None
    max_cost_micros_per_session: int | None = None
    max_cost_micros_per_subject_per_day: int | None = None
    requests_per_minute_per_subject: int | None = None
    network: bool = False

    def to_json(self) -> dict[str, Any]:
        """The wire form: every field, unset ones as null (`network` as a boolean)."""
        out: dict[str, Any] = {}
        for wire, (attr, _kind) in _FIELDS.items():
            value = getattr(self, attr)
            if isinstance(value, frozenset):
                value = sorted(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[wire] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, where: str = "policy") -> Policy:
        """Validate the wire form; unknown fields and wrong types are refused with their name."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidRequest(f"{where}: must be an object")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise InvalidRequest(
                f"{where}.{unknown[0]}: unknown policy field (known: {', '.join(POLICY_FIELDS)})"
            )
        values: dict[str, Any] = {}
        for wire, value in data.items():
            attr, kind = _FIELDS[wire]
            if value is None:
                continue
            values[attr] = _parse(f"{where}.{wire}", kind, value)
        return cls(**values)


def _parse(where: str, kind: str, value: Any) -> Any:
    if kind == "flag":
        if not isinstance(value, bool):
            raise InvalidRequest(f"{where}: must be true or false")
        return value
    if kind in ("count", "micros"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{where}: must be an integer")
        low = 1 if kind == "count" else 0
        if value < low or value > 10**15:
            raise InvalidRequest(f"{where}: must be at least {low}")
        return value
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InvalidRequest(f"{where}: must be a list of names")
    if kind == "tools":
        return parse_tools(value, where)
    return tuple(dict.fromkeys(v.strip() for v in value))


def parse_tools(value: Any, where: str = "tools") -> frozenset[str]:
    """Names of built-in tools; an unknown name is refused with the list of known ones."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{where}: must be a list of tool names")
    unknown = [v for v in value if v not in BUILTIN_TOOLS]
    if unknown:
        raise InvalidRequest(
            f"{where}: unknown tool {unknown[0]!r} (built-in tools: {', '.join(BUILTIN_TOOLS)})"
        )
    return frozenset(value)


# Sandbox settings an agent may carry (passed to the sandbox as AgentProfile.sandbox).
SANDBOX_FIELDS: dict[str, tuple[str, type]] = {
    "cpuSeconds": ("cpu_seconds", int),
    "memoryBytes": ("memory_bytes", int),
    "maxProcesses": ("max_processes", int),
    "maxFileBytes": ("max_file_bytes", int),
    "maxWorkspaceBytes": ("max_workspace_bytes", int),
    "commandTimeoutS": ("command_timeout_s", float),
}


def parse_sandbox(data: Any, where: str = "sandbox") -> dict[str, Any]:
    """Validated sandbox limits, keyed by their wire (camelCase) names."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"{where}: must be an object")
    out: dict[str, Any] = {}
    for name, value in data.items():
        if name not in SANDBOX_FIELDS:
            raise InvalidRequest(
                f"{where}.{name}: unknown sandbox setting (known: {', '.join(SANDBOX_FIELDS)})"
            )
        if value is None:
            continue
        kind = SANDBOX_FIELDS[name][1]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise InvalidRequest(f"{where}.{name}: must be a positive number")
        if kind is int and not isinstance(value, int):
            raise InvalidRequest(f"{where}.{name}: must be a positive integer")
        out[name] = value
    return out


def sandbox_profile(sandbox: Mapping[str, Any]) -> dict[str, Any]:
    """The sandbox settings as the sandbox names them (snake_case, like SandboxLimits)."""
    return {SANDBOX_FIELDS[k][0]: v for k, v in sandbox.items() if k in SANDBOX_FIELDS}
