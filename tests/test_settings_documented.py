"""Every setting is documented in docs/settings.md (a setting nobody can find does not exist)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushbase.settings import Settings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_setting_is_documented(name: str) -> None:
    variable = f"PUSHBASE_{name.upper()}"
    assert f"`{variable}`" in DOCS.read_text(), f"{variable} is not in docs/settings.md"
