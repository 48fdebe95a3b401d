"""The serving process's garbage collector: start-up's objects frozen, full collections made rare."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from chambers import collector
from chambers.config import Settings


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settling_freezes_what_is_loaded_and_spaces_full_collections(restored_collector: None) -> None:
    kept = [{"n": n} for n in range(10_000)]  # like the modules and catalogues a server loads at start
    walked_before = len(gc.get_objects())
    young = gc.get_threshold()[:2]

    collector.settle(full_every=100)

    assert gc.get_freeze_count() >= len(kept)
    assert len(gc.get_objects()) < walked_before - len(kept)  # full collections no longer walk them
    assert gc.get_threshold()[2] == 100
    assert gc.get_threshold()[:2] == young  # the young generations keep their thresholds


def test_the_setting_has_a_floor() -> None:
    assert Settings().gc_full_every == 100
    with pytest.raises(ValidationError):
        Settings(gc_full_every=0)
