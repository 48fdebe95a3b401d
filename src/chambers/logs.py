"""Logging: text or JSON lines, and a filter that scrubs anything shaped like a secret."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

_SECRET = re.compile(
    r"(chk_[A-Za-z0-9_\-]{8,}|whsec_[A-Za-z0-9+/=]{8,}|sk-[A-Za-z0-9_\-]{8,}|"
    r"(?i:bearer)\s+[A-Za-z0-9._\-]{8,}|(?i:api[_-]?key|password|secret)\"?\s*[:=]\s*\"?[^\s\",}]+)"
)


def scrub(text: str) -> str:
    """Replace secrets in `text` with `[redacted]`."""
    return _SECRET.sub("[redacted]", text)


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return scrub(text) if record.exc_info else text


def configure(fmt: str = "text", level: str = "info") -> None:
    """Route chambers and uvicorn logs through one handler on stderr."""
    import time

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ScrubFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = _TextFormatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "anthropic", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
