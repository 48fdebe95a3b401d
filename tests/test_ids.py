"""Ids sort by creation time, even many made in one millisecond (outbox events keep their order)."""

import time

from chambers.core.ids import is_valid_id, new_id

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def test_ids_are_prefixed_unique_and_monotonic() -> None:
    made = [new_id("evt") for _ in range(5000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(is_valid_id(i, "evt") for i in made[:10])
    assert not is_valid_id("evt_../../etc", "evt") and not is_valid_id(made[0], "chat")


def test_an_id_is_its_milliseconds_then_its_random_part_in_crockford_base32() -> None:
    before = time.time_ns() // 1_000_000
    body = new_id("turn")[len("turn_") :]
    value = 0
    for digit in body:
        value = value * 32 + CROCKFORD.index(digit)
    assert len(body) == 26 and before <= value >> 80 <= time.time_ns() // 1_000_000
