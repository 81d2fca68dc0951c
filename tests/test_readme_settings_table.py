"""README, Configuration: the table names every variable `Settings` reads, and nothing else.

Three keys added in one day (the custody signing key, the API's header deadline, the MLLP cap per
address) reached `Settings` without a row: an operator reading the README could not know them."""

from __future__ import annotations

import re
from pathlib import Path

from cgthub.settings import ENV_PREFIX, Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def _variables_read_by_settings() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias if isinstance(alias, str) else f"{ENV_PREFIX}{name}".upper())
    return names


def _variables_in_the_table() -> set[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(CGTHUB_[A-Z0-9_]+)` \|", section, flags=re.MULTILINE))


def test_the_configuration_table_lists_every_settings_variable():
    table = _variables_in_the_table()
    assert len(table) > 20  # the table was found
    assert sorted(_variables_read_by_settings() - table) == []
    assert sorted(table - _variables_read_by_settings()) == []
