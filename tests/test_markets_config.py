"""Market files are validated like the site registry: a mistake names its file and line, on the
paths that read markets (live routing's mapper lookup, `mappings replay`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cgthub import market_check, markets
from cgthub.mapping import registry
from cgthub.settings import PROJECT_ROOT, get_settings

SHIPPED = markets.all_markets(PROJECT_ROOT / "config" / "markets")


@pytest.mark.parametrize("market", SHIPPED)
def test_every_shipped_market_resolves_through_the_baseline(market: str) -> None:
    config, provenance = markets.resolve_market(market, PROJECT_ROOT / "config" / "markets")
    assert config.market == market
    assert "baseline.yaml:" in str(provenance["mappings.crm/enrollment"])  # shared, not repeated


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("market: DE\nresidency:\n  drop: attributes.postal_code\n", 3, "residency.drop: Input should be a valid list"),
        ("market: DE\nresidencey:\n  drop: []\n", 2, "residencey: Extra inputs are not permitted"),
        ("market: DE\nmappings:\n  crm-enrollment: 1\n", 2, "must be <system>/<kind>"),
        ("market: DE\nmappings:\n  crm/enrollment: latest\n", 3, "mappings.crm/enrollment"),
        ("market: FR\n", 1, "says 'FR', but the file is DE.yaml"),
        ("market: DE\ncode_maps: [a, b]\n", 2, "code_maps: Input should be a valid dictionary"),
    ],
    ids=["drop not a list", "misspelt key", "pin without kind", "pin not a version", "wrong market", "code maps"],
)
def test_a_broken_market_file_names_file_and_line(tmp_path, monkeypatch, text, line, words) -> None:
    markets = tmp_path / "markets"
    markets.mkdir()
    (markets / "DE.yaml").write_text(text)
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(tmp_path))
    get_settings.cache_clear()
    registry.clear_cache()
    try:
        with pytest.raises(registry.MarketConfigError) as raised:
            registry.get_mapper("crm", "enrollment", market="DE")  # the lookup every live ingest path makes
        assert str(raised.value).startswith(f"{markets / 'DE.yaml'}:{line}: "), str(raised.value)
        assert words in str(raised.value)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        registry.clear_cache()


def test_replay_names_the_broken_market_file_in_one_line(tmp_path) -> None:
    config = tmp_path / "config"
    (config / "markets").mkdir(parents=True)
    (config / "markets" / "DE.yaml").write_text("market: DE\nresidency:\n  drop: attributes.postal_code\n")
    env = {
        **os.environ,
        "CGTHUB_CONFIG_DIR": str(config),
        "CGTHUB_VAR_DIR": str(tmp_path / "var"),
        "CGTHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'hub.db'}",
    }
    cli = [sys.executable, "-m", "cgthub.cli"]
    assert subprocess.run([*cli, "db", "upgrade"], env=env, capture_output=True, timeout=120).returncode == 0
    argv = ["mappings", "replay", "--system", "crm", "--kind", "enrollment", "--version", "1", "--market", "DE"]
    run = subprocess.run([*cli, *argv, "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert f"{config / 'markets' / 'DE.yaml'}:3: residency.drop: Input should be a valid list" in run.stderr


def test_every_shipped_market_passes_its_check() -> None:
    """What `cgthub markets check` proves, for the markets this repository ships."""
    reports = market_check.check_all()
    assert {r.market for r in reports} == set(SHIPPED)
    assert [p for r in reports for p in r.problems] == []
    assert all(r.fixtures_run > 0 and "crm/enrollment@v1" in r.in_force for r in reports)
