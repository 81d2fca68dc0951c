"""One baseline and market variants (cgthub/markets.py, `cgthub markets`): how files merge, where each
value came from, the errors a reviewer reads (file:line), the scaffold of a new market and the check
that refuses a market which cannot run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from cgthub import markets, ops_config
from cgthub.cli import app
from cgthub.mapping import registry
from cgthub.settings import PROJECT_ROOT

BASELINE = """\
mappings:
  crm/enrollment: 1
  erp/sales_order: 1
code_maps:
  therapy:
    KYM-CD19: CART-19
residency:
  drop: [attributes.slot_id]
  tokenize: [refs.hospital_filler_order]
language: en
"""
DE = """\
market: DE
extends: baseline
mappings:
  erp/sales_order: null
code_maps:
  therapy:
    KYM-DE: CART-19-DE
residency:
  drop: [attributes.postal_code]
deadlines:
  vein_to_vein_target_days: 38
"""
FR = """\
market: FR
extends: DE
code_maps:
  therapy:
    KYM-CD19: null
language: fr
"""


def _folder(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "markets"
    folder.mkdir()
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def test_dicts_merge_lists_replace_and_null_removes(tmp_path: Path) -> None:
    folder = _folder(tmp_path, baseline=BASELINE, DE=DE, FR=FR)
    assert markets.all_markets(folder) == ["DE", "FR"]
    fr, where = markets.resolve_market("FR", folder)
    assert fr.mappings == {"crm/enrollment": 1}  # DE's null took the ERP pin away
    assert fr.code_maps == {"therapy": {"KYM-DE": "CART-19-DE"}}  # DE's code added, FR's null removed one
    assert fr.residency.drop == ["attributes.postal_code"]  # DE's list replaced the baseline's whole
    assert fr.residency.tokenize == ["refs.hospital_filler_order"]  # the baseline's, untouched
    assert (fr.deadlines.vein_to_vein_target_days, fr.language) == (38, "fr")
    assert {path: str(source) for path, source in where.items()} == {
        "market": f"{folder / 'FR.yaml'}:1",
        "mappings.crm/enrollment": f"{folder / 'baseline.yaml'}:2",
        "code_maps.therapy.KYM-DE": f"{folder / 'DE.yaml'}:7",
        "residency.drop": f"{folder / 'DE.yaml'}:9",
        "residency.tokenize": f"{folder / 'baseline.yaml'}:9",
        "deadlines.vein_to_vein_target_days": f"{folder / 'DE.yaml'}:11",
        "language": f"{folder / 'FR.yaml'}:6",
    }
    assert [p.name for p in markets.files_of("FR", folder)] == ["baseline.yaml", "DE.yaml", "FR.yaml"]


@pytest.mark.parametrize(
    ("files", "market", "starts", "words"),
    [
        ({"FR": "market: FR\nextends: XX\n"}, "FR", "FR.yaml:2: ", "extends: 'XX' is no market file"),
        ({"DE": "extends: FR\n", "FR": "market: FR\nextends: DE\n"}, "FR", "DE.yaml:1: ", "FR -> DE -> FR is a cycle"),
        ({"baseline": "extends: DE\n", "DE": "extends: baseline\n"}, "DE", "baseline.yaml:1: ", "extends nothing"),
        (
            {"baseline": "deadlines:\n  vein_to_vein_target_days: -3\n", "DE": "extends: baseline\n"},
            "DE",
            "baseline.yaml:2: ",
            "greater than 0",
        ),
        (
            {"DE": "extends: baseline\nresidency:\n  drop: attributes.postal_code\n", "baseline": ""},
            "DE",
            "DE.yaml:3: ",
            "residency.drop: Input should be a valid list",
        ),
        ({"DE": "market: DE\nlanguage: German\n"}, "DE", "DE.yaml:2: ", "language: String should match"),
    ],
    ids=["unknown parent", "cycle", "baseline extends", "bad inherited value", "bad shape", "language not ISO 639-1"],
)
def test_a_market_that_does_not_resolve_names_file_and_line(tmp_path, files, market, starts, words) -> None:
    folder = _folder(tmp_path, **files)
    with pytest.raises(markets.MarketConfigError) as raised:
        markets.resolve_market(market, folder)
    message = str(raised.value)
    assert message.startswith(f"{folder}/{starts}"), message
    assert words in message


def _markets(*args: str) -> Result:
    return CliRunner().invoke(app, ["markets", *args])


def test_show_prints_each_value_with_the_file_and_line_it_came_from() -> None:
    shown = _markets("show", "DE")
    assert shown.exit_code == 0, shown.output
    _config, where = markets.resolve_market("DE", PROJECT_ROOT / "config" / "markets")
    lines = {line.split(" = ")[0].strip(): line for line in shown.output.splitlines() if " = " in line}
    assert lines.keys() == where.keys()
    for path, source in where.items():
        assert lines[path].endswith(f"{source.path.name}:{source.line}"), lines[path]
    assert "baseline.yaml" in lines["mappings.crm/enrollment"] and "DE.yaml" in lines["residency.drop"]
    assert shown.output.splitlines()[0] == "market DE: baseline.yaml -> DE.yaml"
    as_json = json.loads(_markets("show", "DE", "--json").output)
    assert as_json["config"]["residency"]["drop"] == ["attributes.postal_code"]
    assert as_json["provenance"] == {path: str(source) for path, source in where.items()}


@pytest.fixture
def config_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(config))
    registry.clear_cache()
    yield config
    registry.clear_cache()


def test_new_scaffolds_a_market_like_another_with_a_checklist(config_copy: Path) -> None:
    made = _markets("new", "FR", "--like", "DE")
    assert made.exit_code == 0, made.output
    written = (config_copy / "markets" / "FR.yaml").read_text()
    assert written.rstrip().endswith("market: FR\nextends: DE")
    for decision in ("residency:", "code maps:", "mapping pins:", "language of outbound HL7", "deadlines:", "sites:"):
        assert f"[ ] {decision}" in made.output and f"#   [ ] {decision}" in written
    assert "drop ['attributes.postal_code']" in made.output  # what it inherits, said, not only where
    fr, _ = markets.resolve_market("FR")
    de, _ = markets.resolve_market("DE")
    assert fr.model_dump(exclude={"market"}) == de.model_dump(exclude={"market"})
    assert ops_config.get().deadlines.target_days("FR") == 38  # DE's deadline, inherited where it is read

    again = _markets("new", "FR", "--like", "DE")
    assert again.exit_code != 0 and "exists already" in str(again.exception)
    unknown = _markets("new", "IT", "--like", "XX")
    assert unknown.exit_code != 0 and "extends" not in str(unknown.exception) and "XX.yaml" in str(unknown.exception)
    assert not (config_copy / "markets" / "IT.yaml").exists()

    checked = _markets("check")  # no FR site yet: nothing could reach the market
    assert checked.exit_code != 0
    assert f"{config_copy / 'sites.yaml'}: lists no site of market FR" in checked.output
    assert "DE: ok (baseline.yaml -> DE.yaml" in checked.output


def test_check_names_what_stops_a_market_with_its_file_and_line(config_copy: Path) -> None:
    de = config_copy / "markets" / "DE.yaml"
    de.write_text(
        de.read_text().replace("drop: [attributes.postal_code]", "drop: [attributes.postal_code, attributes.postcode]")
    )
    us = config_copy / "markets" / "US.yaml"
    us.write_text(us.read_text() + "mappings:\n  crm/enrollment: 9\ncode_maps:\n  therapy:\n    KYM-CD19: CART-19-US\n")
    line_of = {name: text.splitlines() for name, text in (("DE", de.read_text()), ("US", us.read_text()))}
    drop_line = next(i for i, text in enumerate(line_of["DE"], 1) if "drop:" in text)
    pin_line = next(i for i, text in enumerate(line_of["US"], 1) if "crm/enrollment: 9" in text)

    checked = _markets("check")
    assert checked.exit_code != 0 and "market(s) DE, US cannot run" in str(checked.exception)
    out = checked.output
    assert f"{de}:{drop_line}: residency.drop: attributes.postcode is produced by no mapping in force for DE" in out, (
        out
    )
    assert "attributes.postal_code is produced" not in out  # the field the mappings do produce passes
    assert f"{us}:{pin_line}: mappings.crm/enrollment: pins v9, which does not exist (versions: v1, v2)" in out
    # The US code map changes what a shared fixture gives: named, with the file that would document it.
    us.write_text(us.read_text().replace("crm/enrollment: 9", "crm/enrollment: 1"))
    out = _markets("check").output
    assert "crm/enrollment@v1: fixture enrolled_scheduled.json under US's code maps and residency" in out
    assert "enrolled_scheduled.US.expected.json" in out


def test_a_mapping_that_names_its_markets_is_caught(config_copy: Path, tmp_path: Path, monkeypatch) -> None:
    """`allowed: [US, DE]` on order.market (what crm/enrollment said before) refuses every FR order."""
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_ROOT / "mappings", mappings)
    v1 = mappings / "crm" / "enrollment" / "v1.yaml"
    v1.write_text(v1.read_text().replace("transform: market, required: true}", "transform: upper, allowed: [US, DE]}"))
    (config_copy / "markets" / "FR.yaml").write_text("market: FR\nextends: DE\n")
    sites = config_copy / "sites.yaml"
    sites.write_text(
        sites.read_text().replace("\nsites:\n", "\nsites:\n  FR-PAR-01: {market: FR, therapies: [CART-19]}\n")
    )
    monkeypatch.setenv("CGTHUB_MAPPINGS_DIR", str(mappings))
    registry.clear_cache()
    checked = _markets("check")
    assert "US: ok" in checked.output and "DE: ok" in checked.output and checked.exit_code != 0
    assert "crm/enrollment@v1: rule 'enrolled' admits order.market only ['DE', 'US']: every FR order would be" in (
        checked.output
    )
