"""Prefixed, time-sortable identifiers (`chat_…`, `turn_…`, `im-…`)."""

from __future__ import annotations

import base64
import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET)


def _b32(value: int) -> str:
    """`value` (< 2**130) as 26 Crockford base32 digits, most significant first.

    Through `base64.b32encode` (C) and a translation: an id costs 3.2 µs against 4.9 digit by digit,
    and a turn makes a dozen.
    """
    return base64.b32encode(value.to_bytes(20, "big")).decode("ascii")[-26:].translate(_FROM_RFC4648)


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
    return f"{prefix}{sep}{_b32(millis << 80 | rand)}"


def is_valid_id(value: str, prefix: str, sep: str = "_") -> bool:
    """Whether `value` looks like an id this module made with `prefix` (guards paths built from ids)."""
    head = f"{prefix}{sep}"
    body = value[len(head) :]
    return value.startswith(head) and len(body) == 26 and all(c in _ALPHABET for c in body)
