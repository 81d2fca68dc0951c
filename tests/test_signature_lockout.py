"""Lockout after repeated failed signatures, as a signer meets it over HTTP and from `cgthub`.

Five refused passwords by one signer within 15 minutes (config/security.yaml) lock that signer out
of signing, whatever the password, for the cool-down, and raise a critical alert; another signer's
success neither resets nor shares the count. The password check of decisions, slot bookings and
release approvals is one function (`decisions.authenticate`), so the API's decisions and the CLI's
release approval stand for all of them. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from cgthub import alerts, decisions, settings
from cgthub.devtools import explain
from cgthub.release_tables import ReleaseApproval
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from cgthub.tables import Alert, AuditRecord, utcnow
from tests import api_server, test_release
from tests.api_server import ApiServer
from tests.test_release import PASSWORD, Hub, _built, said

api = api_server.api
hub = test_release.hub
COOL_DOWN = 3  # seconds: config/security.yaml's lockout_seconds in the HTTP test


@pytest.fixture
def short_cool_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The repository's configuration with a cool-down of COOL_DOWN seconds (5 failures in 15 minutes)."""
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    policy = config / "security.yaml"
    policy.write_text(policy.read_text().replace("lockout_seconds: 900", f"lockout_seconds: {COOL_DOWN}"))
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(config))
    settings.get_settings.cache_clear()
    yield
    settings.get_settings.cache_clear()


def _refusals(url: str, signer: str) -> list[str]:
    with session_scope(url) as s:
        query = select(AuditRecord.details).where(
            AuditRecord.action == "decision.refused", AuditRecord.actor == f"claimed:{signer}"
        )
        return [d.split('"why":')[1].strip('"}') for d in s.scalars(query.order_by(AuditRecord.seq))]


def _lockout_alerts(url: str) -> list[Alert]:
    with session_scope(url) as s:
        return [a for a in alerts.open_alerts(s) if a.kind == "signature_lockout"]


def test_five_failed_signatures_lock_the_signer_out_over_http(short_cool_down: None, api: ApiServer) -> None:
    url = api.database_url
    with session_scope(url) as s:
        for name in ("olga", "ben"):
            decisions.add_operator(s, name, PASSWORD, ["all"])
        first, second, third = (
            alerts.raise_alert(s, kind="test", message=f"alert {n}", dedupe_key=f"test:{n}").id for n in (1, 2, 3)
        )
    client = api.client(api.key("operate"))

    def sign(signer: str, password: str, alert: int, what: str = "resolve") -> Any:
        body = {
            "signer": signer,
            "password": password,
            "meaning": "reviewed",
            "reason_code": "ALERT-ACTIONED",
            "reason_text": "looked at it",
        }
        return client.post(f"/alerts/{alert}/{what}", json=body)

    for _ in range(3):
        assert sign("olga", "a wrong guess", second).status_code == 401
    assert sign("olga", PASSWORD, first, "acknowledge").status_code == 201  # her own success resets nothing
    assert sign("ben", PASSWORD, third, "acknowledge").status_code == 201  # nor does another signer's
    assert sign("olga", "a wrong guess", second).status_code == 401
    wrong = sign("olga", "a wrong guess", second)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "signature_refused"  # the fifth

    locked = sign("olga", PASSWORD, second)  # the right password, too late
    assert locked.status_code == 429, locked.text
    error = locked.json()["error"]
    assert error["code"] == "signer_locked"
    assert error["message"].startswith("signing as olga is locked until ")
    assert "after 5 failed signatures within 15 minutes" in error["message"]
    assert 1 <= int(locked.headers["Retry-After"]) <= COOL_DOWN
    assert PASSWORD not in locked.text
    raised = _lockout_alerts(url)
    assert len(raised) == 1 and raised[0].severity == "critical" and "signing as olga is locked" in raised[0].message
    assert sign("ben", PASSWORD, third).status_code == 201  # other signers are not locked out
    with session_scope(url) as s:
        assert s.get(Alert, second).status == "open"  # nothing signed while locked

    time.sleep(int(locked.headers["Retry-After"]) + 0.2)  # the cool-down is over
    assert sign("olga", PASSWORD, second).status_code == 201
    assert _refusals(url, "olga") == ["signature_refused"] * 5 + ["signer_locked"]
    assert _refusals(url, "ben") == []
    assert len(_lockout_alerts(url)) == 1  # one alert per lockout


def test_a_locked_out_signer_cannot_approve_a_release_from_the_cli(hub: Hub) -> None:
    bundle = _built(hub.build())
    approve = ("release", "approve", bundle[:12], "--reason", "RELEASE-VALIDATED", "--text", "OQ passed")
    for attempt in range(5):
        wrong = hub.signed(*approve, password=f"wrong-password-{attempt}")
        assert wrong.exit_code == 1 and "re-authentication failed" in said(wrong)
    locked = hub.signed(*approve)
    assert locked.exit_code == 1
    assert "signing as qa is locked until" in said(locked) and "after 5 failed signatures" in said(locked)
    assert "if these attempts were not yours, tell security" in locked.exception.hint
    promote = hub.signed("release", "promote", bundle[:12], "--env", "validation")  # any signature
    assert promote.exit_code == 1 and "signing as qa is locked until" in said(promote)
    with session_scope(hub.url) as s:
        assert s.scalars(select(ReleaseApproval)).all() == []
    assert _refusals(hub.url, "qa") == ["signature_refused"] * 5 + ["signer_locked"] * 2
    assert len(_lockout_alerts(hub.url)) == 1


def test_the_check_reads_one_signers_refusals_through_the_index(db_url: str) -> None:
    """The lockout's count is an index search on both databases (migration 0022's partial index), so
    its cost does not grow with the audit trail nor with another signer's or a guesser's refusals;
    and what it counts is still what locks: refusals for being locked out do not extend a lockout."""
    with session_scope(db_url) as s:
        decisions.add_operator(s, "olga", PASSWORD, ["all"])
    wrong = decisions.SignatureRefused("re-authentication failed")
    locked = decisions.SignerLocked("locked", until=utcnow())
    forbidden = decisions.NotPermitted("may not")
    for who, error in [("mallory", wrong)] * 5 + [("mallory", locked)] * 20 + [("olga", forbidden)]:
        with pytest.raises(decisions.DecisionError):
            decisions.run(db_url, _raising(error), signer=who, action=decisions.Action.RESOLVE_ALERT, subject="alert:1")
    assert _refusals(db_url, "mallory") == ["signature_refused"] * 5 + ["signer_locked"] * 20
    with session_scope(db_url) as s:
        assert decisions.locked_until(s, "mallory") is not None and decisions.locked_until(s, "olga") is None
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SET LOCAL enable_seqscan = off"))  # a table this small is read whole otherwise
        plan = explain.plan(s, decisions.failures_query("mallory", utcnow() - timedelta(minutes=30)))
    assert "ix_audit_trail_signature_refusals" in plan, plan
    assert "SCAN audit_trail" not in plan and "Seq Scan" not in plan, plan


def _raising(error: decisions.DecisionError) -> Callable[[Session], None]:
    def work(_: Session) -> None:
        raise error

    return work
