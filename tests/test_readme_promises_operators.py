"""README, Operators: the `cgthub` commands of its example block, run as an operator runs them
(`python -m cgthub.cli` in a subprocess), on SQLite and PostgreSQL:

- `cgthub operators add olga --scope all`: "asks the password (kept as a scrypt hash)";
- `cgthub decisions reasons`: "the reason codes and the actions each may justify", as
  `config/reason_codes.yaml` has them;
- `cgthub alerts resolve ID ... (--acknowledge to mark it in hand)`: acknowledged, still open;
- `cgthub decisions list [--order ORDER]`: "who signed what, meaning, reason, outcome", that
  order's only;
- "Every signing command ... takes `--signer` (default `CGTHUB_OPERATOR`)";
- `cgthub operators disable olga`: she signs nothing more; `operators list` says since when.
"""

from __future__ import annotations

import re

import yaml
from sqlalchemy import select

from cgthub.settings import PROJECT_ROOT
from cgthub.store import session_scope
from cgthub.tables import Alert, Operator, OperatorDecision
from tests.test_decisions import PASSWORD, _add_operator, _cli, _held_orders

WIDE = {"COLUMNS": "400"}  # rich folds table cells to the terminal's width
SIGN = ["--meaning", "reviewed", "--text", "in hand with the CMO", "--password-stdin"]


def _open_alert(url: str, order_id: str) -> int:
    with session_scope(url) as s:
        return s.scalars(select(Alert.id).where(Alert.order_id == order_id, Alert.status == "open")).first()


def test_operators_add_keeps_a_scrypt_hash_of_the_password_never_the_password(db_url):
    added = _cli("operators", "add", "olga", "--scope", "all", "--password-stdin", url=db_url, password=PASSWORD)
    assert added.returncode == 0, added.stderr
    with session_scope(db_url) as s:
        stored = s.get(Operator, "olga").password_hash
    assert stored.startswith("scrypt$") and PASSWORD not in stored
    listed = _cli("operators", "list", url=db_url, **WIDE)
    assert "olga" in listed.stdout and "scrypt" not in listed.stdout  # never a password hash


def test_decisions_reasons_lists_each_code_with_the_actions_it_may_justify(db_url):
    shown = _cli("decisions", "reasons", url=db_url, **WIDE)
    assert shown.returncode == 0, shown.stderr
    codes = yaml.safe_load((PROJECT_ROOT / "config" / "reason_codes.yaml").read_text())["codes"]
    rows = {line.split("│")[1].strip(): line for line in shown.stdout.splitlines() if line.count("│") >= 3}
    for code in codes:
        assert code["code"] in rows, code["code"]
        assert ", ".join(code["actions"]) in rows[code["code"]], code["code"]


def test_acknowledge_leaves_the_alert_open_in_hand_and_decisions_list_says_who_what_why_and_outcome(db_url):
    held, other = _held_orders(db_url)
    _add_operator(db_url, "olga", "all")
    alert = _open_alert(db_url, held)
    listed = _cli("alerts", "list", url=db_url, **WIDE)
    assert re.search(rf"│ {alert} +│ {held}", listed.stdout), listed.stdout

    acknowledged = _cli(
        "alerts", "resolve", str(alert), "--acknowledge", "--reason", "ALERT-ACTIONED", *SIGN,
        url=db_url, password=PASSWORD, CGTHUB_OPERATOR="olga",
    )  # fmt: skip
    assert acknowledged.returncode == 0, acknowledged.stderr
    assert "by olga" in acknowledged.stdout  # no --signer: CGTHUB_OPERATOR signs
    with session_scope(db_url) as s:
        assert s.get(Alert, alert).status == "acknowledged"  # in hand, not closed
    assert f"│ {alert} " in _cli("alerts", "list", url=db_url, **WIDE).stdout  # still listed as open work

    other_alert = _open_alert(db_url, other)
    resolved = _cli(
        "alerts", "resolve", str(other_alert), "--reason", "FALSE-ALARM", *SIGN, "--signer", "olga",
        url=db_url, password=PASSWORD,
    )  # fmt: skip
    assert resolved.returncode == 0, resolved.stderr

    decided = _cli("decisions", "list", "--order", held, url=db_url, **WIDE).stdout
    with session_scope(db_url) as s:
        decision = s.scalars(select(OperatorDecision).where(OperatorDecision.order_id == held)).one()
        outcome = decision.outcome
    row = next(line for line in decided.splitlines() if f"alert:{alert}" in line)
    for fact in ("olga", "reviewed", "acknowledge_alert", "ALERT-ACTIONED", '"status": "acknowledged"'):
        assert fact in row, (fact, row)
    assert outcome.get("status") == "acknowledged"
    assert f"alert:{other_alert}" not in decided  # --order: that order's decisions only


def test_a_disabled_operator_signs_nothing_more(db_url):
    held, _other = _held_orders(db_url)
    _add_operator(db_url, "olga", "all")
    disabled = _cli("operators", "disable", "olga", url=db_url)
    assert disabled.returncode == 0 and "operator olga disabled" in disabled.stdout
    listed = _cli("operators", "list", url=db_url, **WIDE).stdout
    assert re.search(r"│ olga .*│ \d{4}-\d\d-\d\dT[\d:+-]+ +│$", next(x for x in listed.splitlines() if "olga" in x))

    refused = _cli(
        "orders", "release-hold", held, "--reason", "HOLD-CAUSE-CLEARED", *SIGN, "--signer", "olga",
        url=db_url, password=PASSWORD,
    )  # fmt: skip
    assert refused.returncode == 1 and "re-authentication failed" in refused.stderr
    with session_scope(db_url) as s:
        assert s.scalars(select(OperatorDecision)).all() == []
