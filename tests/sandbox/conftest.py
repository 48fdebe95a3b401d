"""Fixtures for the sandbox tests: real bubblewrap, temp directories the sandbox user can reach."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from chambers.sandbox import bwrap_problem

STRICT = os.environ.get("CHAMBERS_TEST_STRICT") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip when a tool is missing; with CHAMBERS_TEST_STRICT=1 (CI) fail instead."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"strict mode: {reason}")
    pytest.skip(reason)


def require_bwrap() -> None:
    problem = bwrap_problem()
    require(problem is None, problem or "")


@pytest.fixture(autouse=True)
def _bwrap_marker(request: pytest.FixtureRequest) -> None:
    """Tests marked `bwrap` need a working bubblewrap (skip, or fail in strict mode)."""
    if request.node.get_closest_marker("bwrap") is not None:
        require_bwrap()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temp directory (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="chambers-test-") as name:
        yield Path(name)


@pytest.fixture(params=[pytest.param("bwrap", marks=pytest.mark.bwrap), "process"])
def backend_name(request: pytest.FixtureRequest) -> str:
    """Both backends: the same behaviour is expected of each."""
    name: str = request.param
    if name == "bwrap":
        require_bwrap()
    return name
