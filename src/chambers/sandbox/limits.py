"""Resource limits every sandbox command runs under."""

from __future__ import annotations

import math
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class SandboxLimits:
    """What one session's sandbox may use.

    `cpu_seconds`, `memory_bytes` (address space), `max_file_bytes` are per process (`setrlimit`);
    `max_processes` counts every process of the sandbox (its own user namespace); the workspace
    quota is checked after each command; `command_timeout_s` is the wall-clock limit of one command;
    `output_limit_bytes` is what the model sees of one tool result.
    """

    cpu_seconds: int = 120
    memory_bytes: int = 2 * GiB
    max_processes: int = 256
    max_file_bytes: int = 512 * MiB
    max_workspace_bytes: int = 2 * GiB
    command_timeout_s: float = 120.0
    output_limit_bytes: int = 32 * KiB
    network: bool = False

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "memory_bytes", "max_processes", "max_file_bytes", "max_workspace_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer")
        if not math.isfinite(self.command_timeout_s) or self.command_timeout_s <= 0:
            raise ValueError("command_timeout_s must be a positive finite number")
        if self.output_limit_bytes < 256:
            raise ValueError("output_limit_bytes must be at least 256")
