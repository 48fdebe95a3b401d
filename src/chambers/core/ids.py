"""Prefixed, time-sortable identifiers (`chat_…`, `turn_…`, `im-…`)."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


_last = [0, 0]  # the millisecond and random part of the previous id made by this process


def new_id(prefix: str, sep: str = "_") -> str:
    """A ULID-shaped id: 48 bits of milliseconds then 80 random bits, so ids sort by creation time.

    Monotonic within a process: an id made in the same millisecond as the previous one increments its
    random part, so events written together keep their order.
    """
    millis = time.time_ns() // 1_000_000
    if millis <= _last[0]:
        millis, rand = _last[0], (_last[1] + 1) % (1 << 80)
    else:
        rand = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment without wrapping
    _last[0], _last[1] = millis, rand
    return f"{prefix}{sep}{_b32(millis, 10)}{_b32(rand, 16)}"


def is_valid_id(value: str, prefix: str, sep: str = "_") -> bool:
    """Whether `value` looks like an id this module made with `prefix` (guards paths built from ids)."""
    head = f"{prefix}{sep}"
    body = value[len(head) :]
    return value.startswith(head) and len(body) == 26 and all(c in _ALPHABET for c in body)
