"""README, Operators, the console's Partner health page: "per partner: last clean sync, how far its
watermark trails, what arrived in the last hour, ..., the share of the last day's payloads
quarantined, its outbound queue and dead letters". test_console held the dead letters and
test_console_held the held payloads; here the other cells of the CRM's row, after a real CRM pull over
HTTP from its sandbox whose newest record changed an hour ago (test_metrics' story), one more CRM
payload that its mapping refuses, and one CRM message queued outbound; the console as Airflow's API
server mounts it, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

from cgthub import outbox, pipeline
from cgthub.mapping import registry
from cgthub.store import session_scope
from tests.test_console import auth_manager, console, signed_in  # noqa: F401
from tests.test_mapping_engine import _crm
from tests.test_metrics import _story


def _cells(page: str, partner: str) -> list[str]:
    row = page[page.index(f'data-partner="{partner}"') :].split("</tr>")[0]
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def test_the_crm_row_shows_sync_lag_arrivals_rejects_and_queue(db_url, console, auth_manager, monkeypatch):  # noqa: F811
    before = _cells(signed_in(console, auth_manager).get("/cgthub/console/partners").text, "crm")
    assert before[1:4] == ["never", "-", "0"]
    _story(db_url, monkeypatch)  # the pull: one record, changed an hour ago; a dead CRM message
    with session_scope(db_url) as s:
        v1 = registry.get_mapper("crm", "enrollment", version=1)
        refused = pipeline.ingest(
            s, system="crm", kind="enrollment", channel="t", payload=_crm(2, therapy="KYM-CD22"), mapper=v1
        )
        assert refused.quarantined  # a product code v1 does not know: quarantined at map
        outbox.enqueue(s, outbox.Destination("crm", "crm"), "crm-2", {"n": 2})

    partner, last_sync, lag, per_hour, _held, reject, breaker, backlog, dead, _errors = _cells(
        signed_in(console, auth_manager).get("/cgthub/console/partners").text, "crm"
    )
    assert partner == "crm" and last_sync not in ("never", "")
    assert re.fullmatch(r"1\.0 h", lag), lag  # the watermark trails by the hour since the record changed
    assert per_hour == "2" and reject == "50.0 %"  # two arrived this hour, one of them quarantined
    assert breaker == "closed" and backlog == "1" and dead.startswith("1")
