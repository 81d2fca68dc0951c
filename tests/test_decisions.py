"""Signed decisions as an operator meets them: through `cgthub` and through the API.

Each action needs a reason code, free text and the signer's password at the moment of signing; it
lands in the order's ledger (and so in the custody export) and in the audit trail; without the
password, the operator's scope or the key's `operate` scope it is refused and nothing changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cgthub import audit_trail, decisions, ledger, outbox, pipeline, quarantine
from cgthub.api import create_app
from cgthub.api.auth import create_key
from cgthub.mapping import registry
from cgthub.model import EventType, Material, SourceSystem
from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from cgthub.tables import Alert, LedgerEntry, OperatorDecision, Order
from tests.factories import T0, din, event, happy_path
from tests.test_mapping_engine import _crm

PASSWORD = "correct horse battery"
SIGN = ["--meaning", "approved", "--text", "checked with the site and the CMO", "--password-stdin"]


def _cli(*args: str, url: str, password: str | None = None, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CGTHUB_DATABASE_URL": url, **env_vars}
    stdin = None if password is None else password + "\n"
    return subprocess.run(
        [sys.executable, "-m", "cgthub.cli", *args], capture_output=True, text=True, env=env, input=stdin
    )


def _held_orders(url: str) -> list[str]:
    """Two orders the hub put on hold: the CMO scanned patient 2's DIN for patient 1's order."""
    with session_scope(url) as s:
        for n in (1, 2):
            ledger.append_many(s, happy_path(n)[:3])
        wrong = event(
            EventType.MATERIAL_RECEIVED_AT_CMO,
            1,
            at=T0 + timedelta(days=8),
            system=SourceSystem.CMO,
            material=Material(din=din(2)),
        )
        assert ledger.append(s, wrong).status == "quarantined"
        return sorted(s.scalars(select(Order.id).where(Order.on_hold.is_(True))))


def _add_operator(url: str, name: str, *scopes: str) -> None:
    scope_args = [arg for scope in scopes for arg in ("--scope", scope)]
    run = _cli("operators", "add", name, *scope_args, "--password-stdin", url=url, password=PASSWORD)
    assert run.returncode == 0, run.stderr


def test_release_hold_from_the_cli_is_signed_in_the_ledger_and_trail_and_refused_without_password(db_url):
    held, _other = _held_orders(db_url)
    _add_operator(db_url, "qa.lead", "release_hold")
    _add_operator(db_url, "clerk", "resolve_alert")
    release = ["orders", "release-hold", held, "--reason", "COI-VERIFIED", *SIGN]

    wrong = _cli(*release, "--signer", "qa.lead", url=db_url, password="not the password")
    assert wrong.returncode == 1 and "re-authentication failed" in wrong.stderr
    no_scope = _cli(*release, "--signer", "clerk", url=db_url, password=PASSWORD)
    assert no_scope.returncode == 1 and "clerk may not sign release_hold" in no_scope.stderr
    bad_reason = _cli(*release[:4], "FALSE-ALARM", *SIGN, "--signer", "qa.lead", url=db_url, password=PASSWORD)
    assert bad_reason.returncode == 1 and "COI-VERIFIED" in bad_reason.stderr  # the codes it may take
    with session_scope(db_url) as s:
        assert s.get(Order, held).on_hold and s.scalars(select(OperatorDecision)).all() == []

    signed = _cli(*release, "--signer", "qa.lead", url=db_url, password=PASSWORD)
    assert signed.returncode == 0, signed.stderr
    assert "signed decision #1: release_hold" in signed.stdout and "you are signing for order:" in signed.stdout
    with session_scope(db_url) as s:
        order = s.get(Order, held)
        assert not order.on_hold
        last = s.scalars(
            select(LedgerEntry).where(LedgerEntry.order_id == held).order_by(LedgerEntry.seq.desc())
        ).first()
        assert (last.source_system, last.event_type) == ("cgthub", "order.hold_released")
        for fact in ('"signer":"qa.lead"', '"meaning":"approved"', '"reason_code":"COI-VERIFIED"', "shown_hash"):
            assert fact in last.body, fact
        assert "checked with the site" not in last.body  # the free text stays with the decision
        decision = s.scalars(select(OperatorDecision)).one()
        assert decision.reason_text == "checked with the site and the CMO" and len(decision.shown_hash) == 64
        assert ledger.verify(s) == (2, [])
        trail = [(r.actor, r.action) for r in audit_trail.rows(s)]
        assert ("claimed:qa.lead", "decision.refused") in trail and ("claimed:clerk", "decision.refused") in trail
        assert trail[-1] == ("qa.lead", "decision.release_hold")
        assert audit_trail.verify(s).ok

    again = _cli(*release, "--signer", "qa.lead", url=db_url, password=PASSWORD)
    assert again.returncode == 1 and "is not on hold" in again.stderr


def test_quarantine_retry_after_a_mapping_fix_and_bulk_discard_from_the_cli(db_url, tmp_path):
    v1 = registry.get_mapper("crm", "enrollment", version=1)
    with session_scope(db_url) as s:
        for n in (1, 2):  # KYM-CD22 is unknown to v1; the version in force now maps it
            pipeline.ingest(s, system="crm", kind="enrollment", channel="t", payload=_crm(n, "KYM-CD22"), mapper=v1)
        first, second = (e.id for e in quarantine.list_entries(s))
    _add_operator(db_url, "coordinator", "retry_quarantine", "discard_quarantine")
    who = ["--signer", "coordinator"]
    fixed = tmp_path / "config"  # the fix: the US market moves to v2, which knows KYM-CD22
    shutil.copytree(PROJECT_ROOT / "config", fixed)
    us = fixed / "markets" / "US.yaml"
    us.write_text(us.read_text() + "mappings:\n  crm/enrollment: 2\n")  # over the baseline's pin

    retried = _cli(
        "quarantine",
        "retry",
        str(first),
        "--reason",
        "MAPPING-FIXED",
        *SIGN,
        *who,
        url=db_url,
        password=PASSWORD,
        CGTHUB_CONFIG_DIR=str(fixed),
    )
    assert retried.returncode == 0, retried.stderr
    assert '"result": "released"' in retried.stdout
    discarded = _cli(
        "quarantine",
        "discard",
        "--system",
        "crm",
        "--reason",
        "TEST-MESSAGE",
        *SIGN,
        *who,
        url=db_url,
        password=PASSWORD,
    )
    assert discarded.returncode == 0, discarded.stderr
    assert "1 entries signed for; 1 discarded" in discarded.stdout
    with session_scope(db_url) as s:
        assert quarantine.get(s, first).status == "replayed" and "decision #1" in quarantine.get(s, first).resolution
        assert quarantine.get(s, second).status == "discarded"
        assert s.scalars(select(Order.therapy)).all() == ["CART-22"]
        trail = [(r.action, r.details) for r in audit_trail.rows(s)]
        signed = [action for action, _details in trail if action.startswith("decision.")]
        assert signed == ["decision.retry_quarantine", "decision.discard_quarantine"]
        noted = [json.loads(details) for action, details in trail if action == "config.changed"]
        fixed_us = hashlib.sha256(us.read_bytes()).hexdigest()
        assert noted[0]["files"]["markets/US.yaml"] == fixed_us  # the fix the retry ran under is on record
        assert noted[1]["changed"] == ["markets/US.yaml"]  # and the configuration the discard ran under


def test_outbox_replay_per_partner_from_the_cli(db_url):
    with session_scope(db_url) as s:
        for partner in ("crm", "erp"):
            message = outbox.enqueue(s, outbox.Destination(partner, partner), f"k-{partner}", {"x": 1}, max_attempts=1)
            outbox.mark_failed(s, message, "503 from the receiver")
    _add_operator(db_url, "integration", "replay_dead_letters")
    run = _cli(
        "outbox",
        "replay",
        "--partner",
        "crm",
        "--reason",
        "RECEIVER-FIXED",
        *SIGN,
        "--signer",
        "integration",
        url=db_url,
        password=PASSWORD,
    )
    assert run.returncode == 0, run.stderr and '"replayed": 1' in run.stdout
    with session_scope(db_url) as s:
        status = dict(s.execute(select(outbox.OutboxMessage.destination_kind, outbox.OutboxMessage.status)).all())
    assert status == {"crm": "pending", "erp": "dead"}


def _body(**overrides: object) -> dict[str, object]:
    body = {
        "signer": "qa.lead",
        "password": PASSWORD,
        "meaning": "reviewed",
        "reason_code": "COI-VERIFIED",
        "reason_text": "both orders checked with the CMO",
    }
    body.update(overrides)
    return body


def test_the_api_signs_the_same_way_and_refuses_without_scope_or_reauthentication(db_url):
    held, other = _held_orders(db_url)
    with session_scope(db_url) as s:
        decisions.add_operator(s, "qa.lead", PASSWORD, ["all"])
        _row, reader = create_key(s, name="dashboard", scopes=["status:read", "custody:read"], all_data=True)
        _row, operator = create_key(s, name="console", scopes=["operate"], all_data=True)
        _row, de_desk = create_key(s, name="DE desk", scopes=["operate"], markets=["DE"])
        alert_id = s.scalars(select(Alert.id).where(Alert.order_id == held)).first()
    with TestClient(create_app(db_url)) as client:

        def post(path: str, key: str, body: dict[str, object]):
            return client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})

        refused = post(f"/orders/{held}/release-hold", reader, _body())
        assert refused.status_code == 403 and "operate" in refused.json()["error"]["message"]
        unsigned = post(f"/orders/{held}/release-hold", operator, {k: v for k, v in _body().items() if k != "password"})
        assert unsigned.status_code == 422 and unsigned.json()["error"]["code"] == "invalid_request"
        wrong = post(f"/orders/{held}/release-hold", operator, _body(password="guess"))
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "signature_refused"
        assert "guess" not in wrong.text
        elsewhere = post(f"/orders/{held}/release-hold", de_desk, _body())
        assert elsewhere.status_code == 404  # a US order is no business of the DE desk's key

        shown = client.get(
            "/decisions/preview", params={"subject": f"order:{held}"}, headers={"Authorization": f"Bearer {operator}"}
        ).json()
        assert shown["state"]["on_hold"] is True
        resolved = post(f"/alerts/{alert_id}/resolve", operator, _body(reason_code="ALERT-ACTIONED"))
        assert resolved.status_code == 201, resolved.text
        stale = post(f"/orders/{held}/release-hold", operator, _body(shown_hash=shown["shown_hash"]))
        assert (
            stale.status_code == 409 and stale.json()["error"]["code"] == "stale_view"
        )  # the alert entered its ledger

        fresh = client.get(
            "/decisions/preview", params={"subject": f"order:{held}"}, headers={"Authorization": f"Bearer {operator}"}
        ).json()
        released = post(f"/orders/{held}/release-hold", operator, _body(shown_hash=fresh["shown_hash"]))
        assert released.status_code == 201, released.text
        assert released.json()["signer"] == "qa.lead" and released.json()["shown_hash"] == fresh["shown_hash"]

        custody = client.get(f"/orders/{held}/custody", headers={"Authorization": f"Bearer {reader}"}).json()
        bodies = [entry["body"] for entry in custody["cgthub:ledger"]["entries"]]
        assert any('"decision":"release_hold"' in b and '"signer":"qa.lead"' in b for b in bodies)
        assert any('"decision":"resolve_alert"' in b for b in bodies)
        status = client.get(f"/orders/{other}", headers={"Authorization": f"Bearer {reader}"}).json()
        assert status["status"] == "on_hold"  # only the order signed for was released
    with session_scope(db_url) as s:
        assert s.get(Alert, alert_id).status == "closed" and not s.get(Order, held).on_hold
        assert ledger.verify(s) == (2, []) and audit_trail.verify(s).ok


@pytest.mark.parametrize("field", ["reason_text", "meaning"])
def test_a_signature_without_words_or_meaning_is_not_a_signature(field):
    with pytest.raises(ValueError):
        decisions.Signature.model_validate(_body(**{field: "   " if field == "reason_text" else "liked"}))


def test_a_running_server_retries_with_the_fix_made_on_disk_since_it_started(db_url, tmp_path, monkeypatch):
    """The console and the API retry inside a long-running process: the mapping in force must be
    read again, not the one that process compiled before the fix."""
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(config))
    registry.clear_cache()
    with session_scope(db_url) as s:  # the server has mapped under the US pin (v1) and refused KYM-CD22
        mapper = registry.get_mapper("crm", "enrollment", market="US")
        assert mapper is not None and mapper.version == "v1"
        pipeline.ingest(s, system="crm", kind="enrollment", channel="t", payload=_crm(1, "KYM-CD22"), mapper=mapper)
        (entry,) = quarantine.list_entries(s)
    _add_operator(db_url, "coordinator", "retry_quarantine")
    us = config / "markets" / "US.yaml"
    us.write_text(us.read_text() + "mappings:\n  crm/enrollment: 2\n")  # the fix, while it runs
    signature = decisions.Signature(
        signer="coordinator",
        password=PASSWORD,
        meaning="approved",
        reason_code="MAPPING-FIXED",
        reason_text="US moved to v2, which knows KYM-CD22",
    )
    result = decisions.run(
        db_url,
        lambda s: decisions.retry_quarantine(s, entry.id, signature),
        signer="coordinator",
        action=decisions.Action.RETRY_QUARANTINE,
        subject=f"quarantine #{entry.id}",
    )
    assert result.outcome.get("result") == "released", result.outcome
    with session_scope(db_url) as s:
        assert s.scalars(select(Order.therapy)).all() == ["CART-22"]
    registry.clear_cache()
