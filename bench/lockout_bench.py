"""What the signature lockout's check costs a signer as the audit trail grows, and under a guesser.

Every signature first asks `decisions.locked_until` how many times the signer's password was refused
in the window (config/security.yaml: 5 within 15 minutes lock for 15 minutes, so 30 minutes back).
The trail is filled with N rows as a hub under attack would hold them: the older half spread over
30 days (decisions, configuration changes, sign-ins by 50 operators), the newest half written in
the last 11 minutes by a password guesser trying 500 user ids (5 refused passwords each, then
refusals for being locked out). Timed, per check, best of `--repeat` rounds of `--checks` checks:

  other    a signer with 2 refusals of her own, not under attack (everyone else's signing)
  victim   a user id the guesser locked out (its own check)

"before" is the count as it was until migration 0022 (copied below: probe back from the newest row
by seq to the window's start, then read every row after it); "after" is `decisions.locked_until`
as it is, through the partial index ix_audit_trail_signature_refusals. Both give the same answer
(checked). SQLite in a temporary file, and PostgreSQL (`--pg URL`, a schema of its own, dropped).

Run: .venv/bin/python -m bench.lockout_bench [--rows 10000,100000,300000] [--pg URL | --no-pg]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from cgthub import decisions
from cgthub.devtools import explain, scratch_db
from cgthub.jsontext import canonical_json
from cgthub.store import session_scope
from cgthub.tables import AuditRecord, utcnow

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
GUESSED_IDS = 500
OTHER, VICTIM = "olga", "user-7"


def _before(session: Session, user_id: str, since: datetime) -> list[datetime]:
    """decisions._failures until migration 0022 (commit 597dd01): no index on actor or time."""
    newest = session.scalar(select(func.max(AuditRecord.seq)))
    if newest is None:
        return []
    start, back = 1, 1000
    while newest - back > 1:
        at = session.scalar(select(AuditRecord.at).where(AuditRecord.seq == newest - back))
        if at is not None and at < since:
            start = newest - back
            break
        back *= 2
    rows = session.execute(
        select(AuditRecord.at, AuditRecord.details)
        .where(
            AuditRecord.seq >= start,
            AuditRecord.action == decisions.REFUSED,
            AuditRecord.actor == f"claimed:{user_id}",
        )
        .order_by(AuditRecord.seq)
    )
    return [at for at, details in rows if '"why":"signature_refused"' in details and at >= since]


def _rows(count: int, now: datetime, share: float) -> Iterator[dict[str, object]]:
    """The trail's rows in seq order (not sealed: the lockout reads no seal)."""
    attack = int(count * share)
    old = count - attack - 2
    start = now - timedelta(days=30)
    old_step = (timedelta(days=30) - timedelta(minutes=12)) / max(old, 1)
    actions = ("decision.resolve_alert", "config.changed", "console.signed_in", "decision.retry_quarantine")
    refused = {"action": "resolve_alert", "why": "signature_refused"}
    locked = {"action": "resolve_alert", "why": "signer_locked"}
    for i in range(old):
        yield _row(i + 1, start + old_step * i, f"op-{i % 50}", actions[i % 4], {"decision": i})
    tries: dict[int, int] = {}
    attack_step = timedelta(minutes=10) / max(attack, 1)
    guessed = max(8, min(GUESSED_IDS, attack // 6))  # six tries or more each: every guessed id locked
    for i in range(attack):
        who = i % guessed
        tries[who] = tries.get(who, 0) + 1
        why = refused if tries[who] <= 5 else locked
        yield _row(old + i + 1, now - timedelta(minutes=11) + attack_step * i, f"claimed:user-{who}", "x", why)
    for n, seconds in enumerate((40, 20), start=1):  # the other signer mistyped twice just now
        yield _row(count + n, now - timedelta(seconds=seconds), f"claimed:{OTHER}", "x", refused)


def _row(seq: int, at: datetime, actor: str, action: str, details: dict[str, object]) -> dict[str, object]:
    if action == "x":
        action = decisions.REFUSED
    return {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "subject": "alert:1",
        "details": canonical_json(details),
        "prev_mac": "0" * 64,
        "mac": "0" * 64,
    }


def _fill(url: str, count: int, share: float) -> datetime:
    now = utcnow()
    batch: list[dict[str, object]] = []
    with session_scope(url) as session:
        for row in _rows(count, now, share):
            batch.append(row)
            if len(batch) == 5000:
                session.execute(insert(AuditRecord), batch)
                batch = []
        if batch:
            session.execute(insert(AuditRecord), batch)
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("ANALYZE audit_trail"))
        else:
            session.execute(text("ANALYZE"))
    return now


def _time(url: str, check: Callable[[Session], object], checks: int, repeat: int) -> float:
    """Milliseconds a check, best of `repeat` rounds (each its own session, as a signature has)."""
    rounds = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(checks):
            with session_scope(url, readonly=True) as session:
                check(session)
        rounds.append((time.perf_counter() - started) * 1000 / checks)
    return min(rounds)


def _measure(url: str, count: int, share: float, checks: int, repeat: int) -> dict[str, float]:
    now = _fill(url, count, share)
    figures = {}
    for who in (OTHER, VICTIM):
        answers = []
        for label, failures in (("before", _before), ("after", decisions._failures)):
            original = decisions._failures
            decisions._failures = failures  # type: ignore[assignment]
            try:
                answers.append(_lock(url, who, now))
                figures[f"{who} {label}"] = _time(
                    url, lambda s, w=who: decisions.locked_until(s, w, now), checks, repeat
                )
            finally:
                decisions._failures = original  # type: ignore[assignment]
        assert answers[0] == answers[1], (who, answers)
        assert (answers[0] is not None) == (who == VICTIM and share > 0), (who, answers)
    return figures


def _lock(url: str, who: str, now: datetime) -> datetime | None:
    with session_scope(url, readonly=True) as session:
        return decisions.locked_until(session, who, now)


def _plan(url: str) -> str:
    """The database's plan for the check's query (decisions.failures_query), on one line."""
    with session_scope(url, readonly=True) as session:
        return explain.plan(session, decisions.failures_query(VICTIM, utcnow() - timedelta(minutes=30)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000,300000", help="audit trail sizes, comma-separated")
    parser.add_argument("--checks", type=int, default=50, help="checks a round")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg", default=PG, help="PostgreSQL server URL (a schema of its own is made and dropped)")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--attack-share", type=float, default=0.5, help="share of the trail the guesser wrote")
    parser.add_argument("--explain", action="store_true", help="print the query plan of the check at each size")
    args = parser.parse_args()
    backends = ["sqlite"] + ([] if args.no_pg else ["postgresql"])
    print(f"ms per lockout check, best of {args.repeat} rounds of {args.checks}; other: a signer not under attack,")
    print(f"victim: a user id the guesser locked out; {args.attack_share:.0%} of the trail: the guesser, last 11 min")
    head = f"{'other before':>13}{'other after':>12}  {'victim before':>14}{'victim after':>13}"
    print(f"{'backend':<11}{'rows':>8}  {head}")
    for backend in backends:
        for count in (int(n) for n in args.rows.split(",")):
            with scratch_db.migrated(backend, args.pg, prefix="lockout_bench") as url:
                f = _measure(url, count, args.attack_share, args.checks, args.repeat)
                plan = _plan(url) if args.explain else ""
            print(
                f"{backend:<11}{count:>8}  {f[f'{OTHER} before']:>13.2f}{f[f'{OTHER} after']:>12.2f}  "
                f"{f[f'{VICTIM} before']:>14.2f}{f[f'{VICTIM} after']:>13.2f}",
                flush=True,
            )
            if plan:
                print("    plan: " + plan, flush=True)
    print(f"(load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
