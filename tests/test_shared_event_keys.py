"""Each hospital event's reference and identity keys are worked out once a batch: site
qualification works them out for its lookup and the ledger's preload takes them from it
(`correlation.share_answers`), only for the very events qualification judged."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cgthub import correlation
from cgthub.cli import app as cli
from cgthub.model import CanonicalEvent, EventType, ExternalRefs
from cgthub.store import session_scope
from tests.factories import T0, event
from tests.test_residency_live import _orders
from tests.test_shared_lookups import two_sites_orders_dropped


def test_a_dropped_files_events_have_their_keys_worked_out_once(db_url, monkeypatch, tmp_path: Path):
    drop = two_sites_orders_dropped(db_url, monkeypatch, tmp_path)
    worked_out: list[str] = []
    for name in ("reference_keys", "identity_keys"):
        real = getattr(CanonicalEvent, name)

        def counted(self, _real=real):  # type: ignore[no-untyped-def]
            worked_out.append(self.source_event_id)
            return _real(self)

        monkeypatch.setattr(CanonicalEvent, name, counted)
    result = CliRunner().invoke(cli, ["hl7", "ingest", str(drop)], catch_exceptions=False)
    assert "2 messages: 2 accepted" in result.output, result.output
    orders = _orders(db_url)
    assert orders["CRM-00004"].status == orders["CRM-00005"].status == "apheresis_scheduled"
    # two events, each's references and identity keys once (qualification's), none again in the ledger
    assert len(worked_out) == 4 and len(set(worked_out)) == 2, worked_out


def test_shared_keys_serve_only_the_event_they_were_worked_out_for(db_url):
    judged = event(EventType.APHERESIS_SCHEDULED, 1, at=T0, crm="CRM-1")
    other = judged.model_copy(update={"refs": ExternalRefs(crm_order_id="CRM-2")})  # another object, other keys
    with session_scope(db_url) as session:
        session.connection()
        correlation.share_answers(session, {}, {}, {id(judged): ([("crm_order_id", "CRM-1")], [], judged)})
        index = correlation.KeyIndex(session)
        index.take_answers()
        assert index.keys_of(judged) == ([("crm_order_id", "CRM-1")], [])
        assert index.keys_of(other) == ([("crm_order_id", "CRM-2")], [])
        # an event of the same id() that is not the one shared (its object gone, the id reused) is worked out
        index.event_keys[id(other)] = ([("crm_order_id", "CRM-1")], [], judged)
        assert index.keys_of(other) == ([("crm_order_id", "CRM-2")], [])
