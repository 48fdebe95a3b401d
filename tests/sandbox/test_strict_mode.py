"""The skip-or-fail helper: a missing tool skips, but fails under CHAMBERS_TEST_STRICT=1 (CI)."""

from __future__ import annotations

import pytest

from tests.sandbox import conftest


def test_missing_tool_skips_normally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "STRICT", False)
    with pytest.raises(pytest.skip.Exception):
        conftest.require(False, "bubblewrap (bwrap) is not installed")


def test_missing_tool_fails_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "STRICT", True)
    with pytest.raises(pytest.fail.Exception, match="strict mode: bubblewrap"):
        conftest.require(False, "bubblewrap (bwrap) is not installed")


def test_present_tool_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "STRICT", True)
    conftest.require(True, "unused")
