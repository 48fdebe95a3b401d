"""The docs stay true: every setting is documented, and the README keeps its two commands."""

from __future__ import annotations

from pathlib import Path

from chambers.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_configuration_reference() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        f"CHAMBERS_{name.upper()}"
        for name in Settings.model_fields
        if name != "config_file" and f"`CHAMBERS_{name.upper()}`" not in reference
    ]
    assert missing == []


def test_the_readme_quick_start_is_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make serve", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "\nserve:" in makefile and "\ntest:" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
