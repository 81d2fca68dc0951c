"""Site qualification on every path that maps an archived payload again, as an operator drives it.

- A signed retry over the API (a real HTTP server) or the console of an entry waiting at stage
  `qualify` is judged again by the registry in force: refused again, the entry stays with its reason
  and no second alert; once the registry is fixed it goes through and its `site_not_qualified` alert
  is closed, the closing recorded in the decision's outcome.
- `cgthub mappings replay` judges as live ingest does: an enrolment from a site not qualified that
  day is quarantined at `qualify` with its alert, not applied (a page's other record goes through);
  `--dry-run` names it and writes nothing; once the registry is fixed a replay releases it.
- The HL7 inbox (the DAG's step, `partner_sync.apply_hl7_inbox`) judges what the listener archived;
  a replay of HL7 messages judges the sender's sites and leaves a message applied before unchanged.
- The canonical JSON drop folder, which is not routed, judges its enrolments; `cgthub sites replay`
  releases them once the registry is fixed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from cgthub import canonical_feed, decisions, partner_sync, quarantine
from cgthub.cli import app as cli
from cgthub.cli.common import CliError
from cgthub.devtools.samples import enrolment
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.model import OrderDetails
from cgthub.qualification import QualificationJudgement
from cgthub.store import session_scope
from cgthub.sync_state import SyncReport
from cgthub.tables import LedgerEntry, OperatorDecision, QuarantineEntry
from connectors.common.sandbox import SandboxServer
from connectors.crm import sandbox as crm_sandbox
from connectors.crm import sync as crm_sync
from tests import api_server, test_console
from tests.test_console import add_operator, sign, signed_in
from tests.test_hl7_listener import Running, exchange
from tests.test_qualification import LAPSED, _alerts, _edit
from tests.test_residency_live import _crm_record, _enrol_through_crm, _orders, _orm
from tests.test_sites import config_dir  # noqa: F401  (fixture: an editable copy of config/)

api = api_server.api  # fixture: the API on a real HTTP server
auth_manager, console = test_console.auth_manager, test_console.console  # fixtures: the console as Airflow mounts it

PASSWORD = "correct horse battery"
REPLAY = ["mappings", "replay", "--system", "crm", "--kind", "enrollment", "--version", "v2", "--force"]


def _pull(monkeypatch, url: str, records: list[dict]) -> SyncReport:
    """One CRM page over HTTP from the CRM sandbox, as the ingest DAG pulls it."""
    app = crm_sandbox.create_app()
    with SandboxServer(app) as server:
        monkeypatch.setenv("AIRFLOW_CONN_CRM_API", f"http://cgthub:sandbox-secret@127.0.0.1:{server.port}")
        for record in records:
            app.sandbox_state.upsert(record)
        return crm_sync.pull(database_url=url)


def _lapsed(n: int, **changes: str) -> dict:
    """An enrolment at US-NYC-04 on 2026-09-01, after its qualification lapsed (2026-06-30)."""
    return _crm_record(n, "US-NYC-04", "US", "100zx") | {"enrolledAt": "2026-09-01T09:00:00"} | changes


def _entries(url: str, stage: quarantine.Stage) -> list[QuarantineEntry]:
    with session_scope(url) as s:
        rows = quarantine.list_entries(s, stage=stage)
        s.expunge_all()
    return rows


def _verdicts(url: str, event_id: str) -> list[tuple[int | None, bool]]:
    with session_scope(url) as s:
        query = select(QualificationJudgement).where(QualificationJudgement.source_event_id == event_id)
        return sorted((j.registry_version, j.qualified) for j in s.scalars(query))


def test_a_signed_retry_over_the_api_judges_again_and_closes_the_alert_once_the_site_qualifies(
    api,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    url = api.database_url
    report = _pull(monkeypatch, url, [_lapsed(2)])
    assert report.quarantined == 1  # a page of one record: refused whole
    (entry,) = _entries(url, quarantine.Stage.QUALIFY)
    (alert,) = _alerts(url)
    with session_scope(url) as s:
        decisions.add_operator(s, "coordinator", PASSWORD, ["retry_quarantine"])
    client = api.client(api.key("operate"))
    body = {
        "signer": "coordinator",
        "password": PASSWORD,
        "meaning": "approved",
        "reason_code": "SITE-REGISTERED",
        "reason_text": "the site's re-audit is done",
    }

    # Retried before the registry says so: judged again and refused; the entry stays, one alert.
    refused = client.post(f"/quarantine/{entry.id}/retry", json=body)
    assert refused.status_code == 201, refused.text
    outcome = refused.json()["outcome"]
    assert outcome["result"] == "still failing" and outcome["site_registry"].startswith("v1 ")
    assert outcome["reason"].startswith("enrolment refused: site US-NYC-04 is not qualified for CART-19 on 2026-09-01")
    assert "alerts_closed" not in outcome and "MRN" not in refused.text
    (again,) = _entries(url, quarantine.Stage.QUALIFY)
    assert (again.id, again.occurrences, again.status) == (entry.id, 2, "open")
    assert again.reason == outcome["reason"]
    assert [(a.id, a.status) for a in _alerts(url)] == [(alert.id, "open")]
    assert "CRM-00002" not in _orders(url)

    # The re-audit is recorded (version 2); the server reads the registry in force at the retry.
    _edit(config_dir, LAPSED, "until: 2027-06-30", version=2)
    signed = client.post(f"/quarantine/{entry.id}/retry", json=body)
    assert signed.status_code == 201, signed.text
    outcome = signed.json()["outcome"]
    assert outcome["result"] == "released" and outcome["alerts_closed"] == [alert.id]
    assert outcome["site_registry"].startswith("v2 ")
    assert [(a.id, a.status) for a in _alerts(url)] == [(alert.id, "closed")]
    assert _orders(url)["CRM-00002"].site == "US-NYC-04"
    assert _entries(url, quarantine.Stage.QUALIFY) == []
    assert _verdicts(url, "enrol:CRM-00002") == [(1, False), (2, True)]
    with session_scope(url) as s:  # the decision keeps what it did, closing the alert included
        decided = s.scalars(select(OperatorDecision).order_by(OperatorDecision.id)).all()
        assert [d.outcome["result"] for d in decided] == ["still failing", "released"]
        assert decided[-1].outcome["alerts_closed"] == [alert.id]


def test_mappings_replay_judges_qualification_dry_run_names_it_and_a_fixed_registry_releases_it(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    # Both sites order CART-22 too (US-NYC-04 until its lapse); KYM-CD22 is unknown to v1 (the US
    # pin), so the whole page waits at stage `map` until v2, which maps it, is replayed.
    for site, until in (("US-BOS-01", ""), ("US-NYC-04", ", until: 2026-06-30")):
        block = f"    facilities: [{site}]\n    qualifications:\n"
        _edit(config_dir, block, f"{block}      - {{therapy: CART-22, from: 2026-01-01{until}, basis: test}}\n", 1)
    page = [_crm_record(1, "US-BOS-01", "US", "021zx") | {"product": "KYM-CD22"}, _lapsed(2, product="KYM-CD22")]
    report = _pull(monkeypatch, db_url, page)
    assert report.quarantined == 1 and _orders(db_url) == {}
    (mapped,) = _entries(db_url, quarantine.Stage.MAP)

    def state() -> tuple:
        with session_scope(db_url) as s:
            rows = (
                len(s.scalars(select(LedgerEntry)).all()),
                sorted((e.id, e.stage, e.status, e.occurrences) for e in s.scalars(select(QuarantineEntry))),
                len(s.scalars(select(QualificationJudgement)).all()),
            )
        return (*rows, [(a.id, a.status) for a in _alerts(db_url)])

    before = state()
    dry = CliRunner().invoke(cli, [*REPLAY, "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    assert "dry run, nothing written" in dry.output and "1 refused by the site registry" in dry.output
    assert "record 2: enrolment refused: site US-NYC-04 is not qualified for CART-22 on 2026-09-01" in dry.output
    assert "MRN" not in dry.output
    assert state() == before

    # v2 maps the page: the qualified site's enrolment is applied, the lapsed one waits alone.
    run = CliRunner().invoke(cli, REPLAY, catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert "1 added" in run.output and "1 refused by the site registry (quarantined)" in run.output
    assert set(_orders(db_url)) == {"CRM-00001"}
    (waiting,) = _entries(db_url, quarantine.Stage.QUALIFY)
    assert waiting.reason.startswith("enrolment refused: site US-NYC-04 is not qualified for CART-22 on 2026-09-01")
    assert waiting.details["page_raw_id"] == mapped.raw_id and waiting.raw_id != mapped.raw_id
    assert _entries(db_url, quarantine.Stage.MAP) == []  # the page mapped: its record holds the refusal
    (alert,) = _alerts(db_url)
    assert alert.status == "open" and alert.details["raw_id"] == waiting.raw_id

    # Again, unfixed: nothing applied, the same entry counted again, no second alert.
    CliRunner().invoke(cli, REPLAY, catch_exceptions=False)
    assert set(_orders(db_url)) == {"CRM-00001"}
    (still,) = _entries(db_url, quarantine.Stage.QUALIFY)
    assert still.id == waiting.id and still.occurrences > waiting.occurrences
    assert [a.id for a in _alerts(db_url)] == [alert.id]

    # The registry is fixed: the replay applies the enrolment and releases its entry and alert.
    _edit(config_dir, LAPSED, "until: 2027-06-30", version=2)
    fixed = CliRunner().invoke(cli, REPLAY, catch_exceptions=False)
    assert fixed.exit_code == 0, fixed.output
    assert "0 refused by the site registry" in fixed.output
    assert _orders(db_url)["CRM-00002"].site == "US-NYC-04"
    assert _entries(db_url, quarantine.Stage.QUALIFY) == []
    assert [(a.id, a.status) for a in _alerts(db_url)] == [(alert.id, "closed")]
    assert (2, True) in _verdicts(db_url, "enrol:CRM-00002")


def test_the_hl7_inbox_judges_what_the_listener_archived_and_a_replay_judges_its_sender(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    _enrol_through_crm(db_url, monkeypatch, [_crm_record(4, "US-NYC-04", "US", "100zx")])  # qualified on 03-02
    order_id = _orders(db_url)["CRM-00004"].id
    march = _orm(4, "US-NYC-04", crm="CRM-00004", placer="PL-4", control="Q4-3")
    september = _orm(4, "US-NYC-04", crm="CRM-00004", placer="PL-4B", control="Q4-9")
    september = september.replace(b"20260303", b"20260903").replace(b"20260309", b"20260909")
    with Running(db_url, apply=False) as running:  # archive-only, as `make up` and compose run it
        acks = [exchange(running.port, frame(m), 1)[0] for m in (march, september)]
    assert [ack_code(a) for a in acks] == ["AA", "AA"]
    summary = partner_sync.apply_hl7_inbox(database_url=db_url)  # the HL7 inbox DAG's step
    assert (summary["appended"], summary["quarantined"]) == (1, 1)
    (entry,) = _entries(db_url, quarantine.Stage.QUALIFY)
    assert entry.reason.startswith("hospital order refused: site US-NYC-04 is not qualified for CART-19 on 2026-09-03")
    (alert,) = _alerts(db_url)
    assert alert.order_id == order_id and alert.details["raw_id"] == entry.raw_id

    hl7_replay = ["mappings", "replay", "--system", "hl7", "--kind", "ORM_O01", "--version", "v2"]
    dry = CliRunner().invoke(cli, [*hl7_replay, "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    # The March message applied before is unchanged (its sender is no site); September is refused.
    assert "would leave 1 events unchanged, correct 0, add 0" in dry.output
    assert "1 refused by the site registry" in dry.output and "2026-09-03" in dry.output

    _edit(config_dir, LAPSED, "until: 2027-06-30", version=2)
    run = CliRunner().invoke(cli, hl7_replay, catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert "1 events unchanged, 0 corrected, 1 added" in run.output and "1 quarantined payloads released" in run.output
    assert _entries(db_url, quarantine.Stage.QUALIFY) == []
    assert [a.status for a in _alerts(db_url)] == ["closed"]
    with session_scope(db_url) as s:
        assert s.scalars(select(LedgerEntry.order_id).where(LedgerEntry.raw_id == entry.raw_id)).all() == [order_id]


def test_a_replay_leaves_what_waits_at_route_and_refuses_a_sender_the_registry_no_longer_knows(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    _enrol_through_crm(db_url, monkeypatch, [_crm_record(5, "US-BOS-01", "US", "021zx")])
    stranger = _orm(5, "US-XYZ-99", crm="CRM-00005", placer="PL-5", control="X5")
    # US-SEA-03 orders for CRM-00077, which is not enrolled yet: it waits for its order (correlate).
    early = _orm(7, "US-SEA-03", crm="CRM-00077", placer="PL-7", control="S7")
    with Running(db_url, apply=False) as running:
        acks = [exchange(running.port, frame(m), 1)[0] for m in (stranger, early)]
    assert [ack_code(a) for a in acks] == ["AA", "AA"]
    partner_sync.apply_hl7_inbox(database_url=db_url)
    (entry,) = _entries(db_url, quarantine.Stage.ROUTE)
    assert len(_entries(db_url, quarantine.Stage.CORRELATE)) == 1

    # US-SEA-03's interface engine is taken out of the registry before the replay.
    _edit(config_dir, "facilities: [US-SEA-03]", "facilities: [US-SEA-03-NEW]", version=2)
    run = CliRunner().invoke(
        cli, ["mappings", "replay", "--system", "hl7", "--kind", "ORM_O01", "--version", "v2"], catch_exceptions=False
    )
    assert run.exit_code == 0, run.output
    assert "0 added" in run.output and "1 refused by the site registry (quarantined)" in run.output
    assert f"raw #{entry.raw_id}: waits at stage route for the site registry" in run.output  # left as it is
    assert "'US-SEA-03' (MSH-4) is not registered for any site" in run.output
    assert _orders(db_url)["CRM-00005"].status == "enrolled"
    (again, refused) = sorted(_entries(db_url, quarantine.Stage.ROUTE), key=lambda e: e.id)
    assert (again.id, again.occurrences) == (entry.id, 1)
    assert "'US-SEA-03' (MSH-4) is not registered for any site" in refused.reason
    assert _alerts(db_url) == []  # a sender the registry does not know is no site's refusal


def test_a_canonical_json_enrolment_from_an_unqualified_site_waits_at_qualify_until_sites_replay(
    db_url,
    tmp_path: Path,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    """The canonical drop folder is mapped without routing: its sites are judged all the same."""
    monkeypatch.setenv("CGTHUB_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CGTHUB_CONNECTORS", "none")
    folder = canonical_feed.inbox("crm")
    september = datetime(2026, 9, 1, 9, tzinfo=UTC)
    lapsed = enrolment(2, at=september).model_copy(
        update={"order": OrderDetails(therapy="CART-19", market="US", site="US-NYC-04", cmo="CMO-NJ")}
    )
    (folder / "a-qualified.json").write_text(enrolment(1).model_dump_json())
    (folder / "b-lapsed.json").write_text(lapsed.model_dump_json())
    report = partner_sync.pull("crm", database_url=db_url)
    assert (report["appended"], report["quarantined"]) == (1, 1)
    (entry,) = _entries(db_url, quarantine.Stage.QUALIFY)
    assert entry.reason.startswith("enrolment refused: site US-NYC-04 is not qualified for CART-19 on 2026-09-01")
    (alert,) = _alerts(db_url)
    assert alert.details["raw_id"] == entry.raw_id and set(_orders(db_url)) == {"CRM-00001"}

    _edit(config_dir, LAPSED, "until: 2027-06-30", version=2)
    result = CliRunner().invoke(cli, ["sites", "replay"], catch_exceptions=False)
    assert result.exit_code == 0 and "1 payload(s) routed and applied, 0 still waiting" in result.output
    assert _orders(db_url)["CRM-00002"].site == "US-NYC-04"
    assert [a.status for a in _alerts(db_url)] == ["closed"]
    assert _verdicts(db_url, "order.enrolled:2") == [(1, False), (2, True)]


def test_a_replay_without_a_readable_site_registry_says_so(db_url, config_dir: Path):  # noqa: F811
    (config_dir / "sites.yaml").write_text("sites: [not, a, mapping]\n")
    run = CliRunner().invoke(cli, [*REPLAY, "--dry-run"])  # `cgthub` prints the error and its hint, exit 1
    assert isinstance(run.exception, CliError) and run.exception.exit_code == 1
    assert "sites.yaml:1: sites: Input should be a valid dictionary" in run.exception.message
    assert "a replay judges each site by it" in (run.exception.hint or "")


def test_a_signed_retry_from_the_console_closes_the_alert_once_the_site_qualifies(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
    console,
    auth_manager,
):
    assert _pull(monkeypatch, db_url, [_lapsed(2)]).quarantined == 1
    (entry,) = _entries(db_url, quarantine.Stage.QUALIFY)
    (alert,) = _alerts(db_url)
    add_operator(db_url)
    client = signed_in(console, auth_manager)
    path = f"/cgthub/console/actions/retry_quarantine/{entry.id}"

    refused = sign(client, path, code="SITE-REGISTERED")  # the registry still says lapsed
    assert refused.status_code == 303, refused.text
    assert [(e.id, e.occurrences) for e in _entries(db_url, quarantine.Stage.QUALIFY)] == [(entry.id, 2)]
    assert [(a.id, a.status) for a in _alerts(db_url)] == [(alert.id, "open")]

    _edit(config_dir, LAPSED, "until: 2027-06-30", version=2)
    signed = sign(client, path, code="SITE-REGISTERED")
    assert signed.status_code == 303, signed.text
    assert [(a.id, a.status) for a in _alerts(db_url)] == [(alert.id, "closed")]
    assert _entries(db_url, quarantine.Stage.QUALIFY) == [] and "CRM-00002" in _orders(db_url)
    with session_scope(db_url) as s:
        last = s.scalars(select(OperatorDecision).order_by(OperatorDecision.id.desc())).first()
        assert last.signer == "olga" and last.outcome["alerts_closed"] == [alert.id]


def test_sites_replay_keeps_a_refusal_whose_site_has_left_the_registry(
    db_url,
    monkeypatch,
    config_dir: Path,  # noqa: F811
):
    assert _pull(monkeypatch, db_url, [_lapsed(2)]).quarantined == 1
    (entry,) = _entries(db_url, quarantine.Stage.QUALIFY)
    _edit(config_dir, "  US-NYC-04:\n", "  US-NYC-40:\n", version=2)  # the site is taken out, not fixed
    result = CliRunner().invoke(cli, ["sites", "replay"], catch_exceptions=False)
    assert result.exit_code == 0 and "0 payload(s) routed and applied, 1 still waiting" in result.output
    assert [e.id for e in _entries(db_url, quarantine.Stage.QUALIFY)] == [entry.id]  # not released
    (route,) = _entries(db_url, quarantine.Stage.ROUTE)
    assert route.raw_id == entry.raw_id and "US-NYC-04" in route.reason
    assert [a.status for a in _alerts(db_url)] == ["open"] and "CRM-00002" not in _orders(db_url)
