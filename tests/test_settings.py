"""One Settings for every CGTHUB_* variable: read once per process, keys decoded when first used,
a bad value named by its variable (never shown), dev keys only in dev."""

from __future__ import annotations

import base64
import re
import stat
from pathlib import Path

import pytest

from cgthub import settings

ROOT = Path(__file__).resolve().parents[1]
_READ = re.compile(r"""(?:environ\.get\(|getenv\(|environ\[)\s*(?:["']CGTHUB_|[A-Z_]+_ENV\b)""")


def test_no_module_reads_a_cgthub_variable_itself():
    """Every CGTHUB_* variable is a Settings field: no module reads one from the environment."""
    readers = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("cgthub", "connectors", "dags", "plugins")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "settings.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _READ.search(line) and "=" not in line.split("environ[")[-1]  # a write (the demo's) is not a read
    ]
    assert readers == []


def test_settings_are_read_once_and_again_after_a_reset(monkeypatch, tmp_path):
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(tmp_path))
    first = settings.get_settings()
    assert settings.get_settings() is first and first.config_dir == tmp_path
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(tmp_path / "other"))
    assert settings.get_settings().config_dir == tmp_path / "other"


def test_a_bad_key_is_named_only_when_it_is_needed(monkeypatch):
    monkeypatch.setenv("CGTHUB_PSEUDONYM_KEY", "abc-secret-value")
    loaded = settings.get_settings()  # what needs no pseudonym key still runs
    assert loaded.database_url
    with pytest.raises(settings.InvalidSetting) as refused:
        _ = loaded.pseudonym_key
    assert str(refused.value) == "CGTHUB_PSEUDONYM_KEY is not valid: must be 32 bytes, url-safe base64"
    assert "abc-secret-value" not in str(refused.value) + str(refused.value.hint)
    monkeypatch.setenv("CGTHUB_PSEUDONYM_KEY", base64.urlsafe_b64encode(b"four").decode())
    with pytest.raises(settings.InvalidSetting):
        _ = settings.get_settings().pseudonym_key


def test_dev_keys_are_made_only_in_dev(monkeypatch, tmp_path):
    for variable in settings.KEY_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("CGTHUB_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CGTHUB_ENV", "validation")
    with pytest.raises(settings.MissingSetting) as missing:
        settings.get_settings()
    assert missing.value.variables == list(settings.KEY_VARIABLES.values())
    assert not (tmp_path / "var").exists()
    monkeypatch.setenv("CGTHUB_ENV", "dev")
    assert len(settings.get_settings().ledger_key) == 32
    key_file = tmp_path / "var" / "ledger.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CGTHUB_ENV", "staging"), ("CGTHUB_MAPPING_FASTPATH", "maybe")],
)
def test_a_value_the_hub_cannot_use_is_named_by_its_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(settings.InvalidSetting, match=f"^{variable} is not valid"):
        settings.get_settings()
