"""Ids sort by creation time, even many made in one millisecond (outbox events keep their order)."""

from chambers.core.ids import is_valid_id, new_id


def test_ids_are_prefixed_unique_and_monotonic() -> None:
    made = [new_id("evt") for _ in range(5000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(is_valid_id(i, "evt") for i in made[:10])
    assert not is_valid_id("evt_../../etc", "evt") and not is_valid_id(made[0], "chat")
