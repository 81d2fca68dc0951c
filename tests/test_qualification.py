"""Site qualification on the live ingest path: an enrolment through the CRM sandbox over HTTP and a
hospital order over MLLP from a site not qualified that day are quarantined at stage `qualify` with
a reason an operator can act on and a critical alert; the rest of the CRM page goes through; once
config/sites.yaml is fixed (a new `version`), `cgthub sites replay` applies them, and every
judgement names the registry version that gave it (`cgthub sites history`)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cgthub import qualification, quarantine, sites
from cgthub.cli import app as cli
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.qualification import QualificationJudgement, RegistryVersion
from cgthub.store import session_scope
from cgthub.tables import Alert, RawMessage
from connectors.common.sandbox import SandboxServer
from connectors.crm import sandbox as crm_sandbox
from connectors.crm import sync as crm_sync
from tests.test_hl7_listener import Running, exchange
from tests.test_residency_live import _crm_record, _enrol_through_crm, _orders, _orm
from tests.test_sites import config_dir  # noqa: F401  (fixture: an editable copy of config/)

LAPSED = "until: 2026-06-30"  # US-NYC-04's qualification in the repo's registry


def _edit(config: Path, old: str, new: str, version: int) -> None:
    path = config / "sites.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new).replace("version: 1\n", f"version: {version}\n"))
    sites.clear_cache()  # as a `cgthub` process starting now reads it


def enrol_where_qualification_ends(url: str, monkeypatch: pytest.MonkeyPatch, config: Path) -> None:
    """CRM-00003 enrolled through the CRM at US-SITE-1 on 2026-03-02, the last day its CART-19
    qualification runs (the registry edited so)."""
    _edit(
        config,
        '- {therapy: CART-19, from: 2026-01-01, basis: "test site: training',
        '- {therapy: CART-19, from: 2026-01-01, until: 2026-03-02, basis: "test site: training',
        version=1,
    )
    _enrol_through_crm(url, monkeypatch, [_crm_record(3, "US-SITE-1", "US", "021zx")])


def _alerts(url: str) -> list[Alert]:
    with session_scope(url) as s:
        rows = list(s.scalars(select(Alert).where(Alert.kind == qualification.ALERT_KIND)))
        s.expunge_all()
    return rows


def test_the_registry_says_who_is_qualified_for_what_and_when(config_dir: Path):  # noqa: F811
    registry = sites.registry()
    assert registry.version == 1 and len(registry.sha256) == 64
    ok = qualification.check("US-BOS-01", "CART-19", date(2026, 3, 2))
    assert ok.qualified and "REMS" in (ok.basis or "")
    lapsed = qualification.check("US-NYC-04", "CART-19", date(2026, 9, 1))
    assert not lapsed.qualified
    assert lapsed.reason.startswith("site US-NYC-04 is not qualified for CART-19 on 2026-09-01: ")
    assert "ended 2026-06-30" in lapsed.reason and "re-audit pending" in lapsed.reason
    early = qualification.check("US-BOS-01", "CART-19", date(2025, 12, 31))
    assert "starts 2026-01-01" in early.reason
    other = qualification.check("DE-HD-01", "CART-BCMA", date(2026, 3, 2))
    assert other.reason == "site DE-HD-01 is not qualified for CART-BCMA (qualified for: CART-19)"

    path = config_dir / "sites.yaml"
    path.write_text("sites:\n  A: {market: US, therapies: [CART-19]}\n")  # the short form: no dates
    sites.clear_cache()
    assert qualification.check("A", "CART-19", date(2020, 1, 1)).qualified
    assert not qualification.check("A", "CART-BCMA", date(2026, 3, 2)).qualified
    assert sites.registry().label.startswith("unversioned (sha256 ")
    path.write_text(
        "version: 1\nsites:\n  A:\n    market: US\n    qualifications:\n"
        "      - {therapy: CART-19, from: 2026-05-01, until: 2026-04-01, basis: audit}\n"
    )
    sites.clear_cache()
    with pytest.raises(sites.SiteRegistryError, match=r"sites\.yaml:6: .*until \(2026-04-01\) is before from"):
        sites.registry()
    path.write_text(
        "sites:\n  A: {market: US, therapies: [X], qualifications: [{therapy: X, from: 2026-01-01, basis: b}]}\n"
    )
    sites.clear_cache()
    with pytest.raises(sites.SiteRegistryError, match=r"sites\.yaml:2: sites\.A: .*not both"):
        sites.registry()
    path.write_text("sites:\n  A: {market: US, qualifications: [{therapy: X, from: 2026-01-01}]}\n")
    sites.clear_cache()
    with pytest.raises(
        sites.SiteRegistryError, match=r"sites\.yaml:2: sites\.A\.qualifications\.0\.basis: Field required"
    ):
        sites.registry()


def test_an_unqualified_enrolment_on_a_crm_page_waits_alone_until_the_registry_is_fixed(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    lapsed = _crm_record(2, "US-NYC-04", "US", "100zx") | {"enrolledAt": "2026-09-01T09:00:00"}
    app = crm_sandbox.create_app()
    with SandboxServer(app) as server:  # one CRM page over HTTP: a qualified site's record and a lapsed one
        monkeypatch.setenv("AIRFLOW_CONN_CRM_API", f"http://cgthub:sandbox-secret@127.0.0.1:{server.port}")
        for record in (_crm_record(1, "US-BOS-01", "US", "021zx"), lapsed):
            app.sandbox_state.upsert(record)
        report = crm_sync.pull(database_url=db_url)
    assert report.errors == []
    assert set(_orders(db_url)) == {"CRM-00001"}  # the qualified site's enrolment went through

    with session_scope(db_url) as s:
        (entry,) = quarantine.list_entries(s, stage=quarantine.Stage.QUALIFY)
        assert entry.reason.startswith(
            "enrolment refused: site US-NYC-04 is not qualified for CART-19 on 2026-09-01: its qualification "
            "ended 2026-06-30 (REMS certification US-REMS-0401, lapsed; re-audit pending); judged by site registry v1"
        )
        assert "cgthub sites replay" in entry.reason and "MRN" not in entry.reason
        assert entry.details["refused"] == [
            {"event": "crm:enrol:CRM-00002", "site": "US-NYC-04", "therapy": "CART-19", "day": "2026-09-01"}
        ]
        record = s.get(RawMessage, entry.raw_id)  # the refused record alone, archived beside its page
        assert record is not None and record.channel == "split" and record.status == "quarantined"
        verdicts = {
            j.source_event_id: (j.qualified, j.registry_version) for j in s.scalars(select(QualificationJudgement))
        }
        assert verdicts == {"enrol:CRM-00001": (True, 1), "enrol:CRM-00002": (False, 1)}
    (alert,) = _alerts(db_url)
    assert (alert.severity, alert.status) == ("critical", "open")
    assert "site US-NYC-04 is not qualified for CART-19 on 2026-09-01" in alert.message

    # The pull again: nothing new, nothing counted twice (the page is a duplicate).
    with SandboxServer(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CRM_API", f"http://cgthub:sandbox-secret@127.0.0.1:{server.port}")
        crm_sync.pull(database_url=db_url)

    # Re-audit done: the qualification is extended in version 2, and the waiting enrolment goes through.
    _edit(config_dir, LAPSED, "until: 2027-06-30", version=2)
    result = CliRunner().invoke(cli, ["sites", "replay"], catch_exceptions=False)
    assert result.exit_code == 0 and "1 payload(s) routed and applied, 0 still waiting" in result.output
    assert _orders(db_url)["CRM-00002"].site == "US-NYC-04"
    with session_scope(db_url) as s:
        assert quarantine.list_entries(s, stage=quarantine.Stage.QUALIFY) == []
        judged = s.scalars(
            select(QualificationJudgement).where(QualificationJudgement.source_event_id == "enrol:CRM-00002")
        ).all()
        assert sorted((j.registry_version, j.qualified) for j in judged) == [(1, False), (2, True)]
        assert [v.version for v in s.scalars(select(RegistryVersion).order_by(RegistryVersion.id))] == [1, 2]
    assert [a.status for a in _alerts(db_url)] == ["closed"]

    history = CliRunner().invoke(cli, ["sites", "history"], catch_exceptions=False)
    assert history.exit_code == 0
    assert "v1" in history.output and "v2" in history.output
    shown = CliRunner().invoke(cli, ["sites", "show", "US-NYC-04"], catch_exceptions=False)
    assert shown.exit_code == 0 and "2027-06-30" in shown.output and "v2" in shown.output


def test_a_hospital_order_from_a_site_no_longer_qualified_is_refused_over_mllp_and_replayed(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    enrol_where_qualification_ends(db_url, monkeypatch, config_dir)  # the order of the next day is refused
    order_id = _orders(db_url)["CRM-00003"].id
    with Running(db_url) as running:  # the listener applies what it receives
        (ack,) = exchange(running.port, frame(_orm(3, "US-SITE-1", crm="CRM-00003", placer="PL-3", control="Q3")), 1)
    assert ack_code(ack) == "AE"
    assert b"103^Table value not found" in ack and b"not qualified for CART-19 on 2026-03-03" in ack
    assert b"Doe" not in ack and b"MRN" not in ack
    assert _orders(db_url)["CRM-00003"].status == "enrolled"
    with session_scope(db_url) as s:
        (entry,) = quarantine.list_entries(s, stage=quarantine.Stage.QUALIFY)
        assert entry.reason.startswith(
            "hospital order refused: site US-SITE-1 is not qualified for CART-19 on 2026-03-03"
        )
    (alert,) = _alerts(db_url)
    assert alert.order_id == order_id and alert.severity == "critical"

    _edit(config_dir, "until: 2026-03-02", "until: 2026-12-31", version=2)
    result = CliRunner().invoke(cli, ["sites", "replay", "--system", "hl7"], catch_exceptions=False)
    assert result.exit_code == 0 and "1 payload(s) routed and applied" in result.output
    assert _orders(db_url)["CRM-00003"].status == "apheresis_scheduled"
    assert [a.status for a in _alerts(db_url)] == ["closed"]


def test_a_registry_changed_without_a_new_version_is_recorded_and_warned(db_url, config_dir: Path):  # noqa: F811
    with session_scope(db_url) as s:
        assert qualification.record_registry(s) is True
        assert qualification.record_registry(s) is False  # once per content
    _edit(config_dir, "US-REMS-0101", "US-REMS-0199", version=1)
    with session_scope(db_url) as s:
        assert qualification.record_registry(s) is True
        rows = s.scalars(select(RegistryVersion).order_by(RegistryVersion.id)).all()
        assert [r.version for r in rows] == [1, 1] and rows[0].sha256 != rows[1].sha256
        assert "US-REMS-0199" in rows[1].content
        (warning,) = s.scalars(select(Alert).where(Alert.kind == qualification.UNVERSIONED_KIND)).all()
        assert "changed without a new version" in warning.message
