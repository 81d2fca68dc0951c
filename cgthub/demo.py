"""`make demo`: the hub's main job, end to end, on one machine in about a minute.

What runs: the real Airflow DAGs of `dags/`, each executed with `dag.test()` (one in-process
DagRun per call, on Airflow's SQLite metadata DB under var/airflow). That is Airflow's documented
way to run a DAG without a scheduler; it exercises the same DAG files, tasks, Assets, XComs and
callbacks as `make up` does on a schedule, with none of the scheduler's heartbeats to wait for.

The story (cgthub.demo_scenario): 25 synthetic patients in the US and Germany, enrolled over the
last seven weeks, replayed in three waves of partner traffic. Each wave the partners record what
happened since the last one in their own systems (connectors.sandboxes: the CRM, ERP, courier and
CMO sandboxes on loopback, the CMO's nightly CSV export into the hub's drop directory, the
hospital's HL7 v2 over MLLP to the hub's listener); then every ingest DAG pulls its partner
through its connector, the HL7 inbox DAG applies what the listener archived, the outbound DAG
tells the partners (REST, SOAP, and ORR^O02 over MLLP to the hospital's receiver), and the
monitoring and reconciliation DAGs judge deadlines and cross-system consistency at that moment.
Every payload goes through its mapping in mappings/; synthetic identities enter only as the
pseudonyms the mappings make. Then a day at the scheduling desk (`scheduling_desk`): an enrolment
from a site whose qualification lapsed is refused, two orders are booked on the CMO's slots with
their lead times (the second loses the last place to the first and takes the next feasible slot),
the outbound DAG books their couriers, and a bedside scan of the wrong bag holds an order. The demo
ends by printing the order transparency table (with the booked dates) and where to look next.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cgthub.settings import PROJECT_ROOT, get_settings

if TYPE_CHECKING:
    from cgthub.demo_scenario import Emission

SandboxPartners = Any  # the configured partner packages' sandbox world (cgthub.partners.sandbox_world)

DEMO_VAR = get_settings().demo_dir or PROJECT_ROOT / "var" / "demo"
INGEST_DAGS = ["crm", "erp", "courier", "cmo", "cmo_batch"]


def _shown() -> Path:
    """The demo directory as the user should type it."""
    return DEMO_VAR.relative_to(PROJECT_ROOT) if DEMO_VAR.is_relative_to(PROJECT_ROOT) else DEMO_VAR


def _prepare_environment() -> None:
    """A fresh hub state under var/demo; Airflow's metadata under var/airflow (kept: migrating takes a while)."""
    if DEMO_VAR.exists():
        shutil.rmtree(DEMO_VAR)
    DEMO_VAR.mkdir(parents=True)
    os.environ["CGTHUB_VAR_DIR"] = str(DEMO_VAR)
    os.environ.pop("CGTHUB_DATABASE_URL", None)
    os.environ.pop("CGTHUB_CONNECTORS", None)  # every partner through its connector
    # The demo writes its drop folders' files whole, then runs the DAGs at once (cgthub.drop_folder).
    os.environ.setdefault("CGTHUB_DROP_MIN_AGE_SECONDS", "0")
    get_settings.cache_clear()  # settings are read once per process: read them again
    from cgthub import airflow_env

    airflow_env.configure(home=PROJECT_ROOT / "var" / "airflow")


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """Alerts and task logs go to var/demo/demo.log; the terminal shows the story. The loggers are
    as they were afterwards: run in-process (a test, a notebook), the demo must not leave the hub's
    log lines going only to its file, where a caller's own capture would see none of them."""
    handler = logging.FileHandler(DEMO_VAR / "demo.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in ("cgthub", "airflow", "airflow.task", "sqlalchemy", "alembic"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO if name == "cgthub" else logging.WARNING)
    try:
        yield
    finally:
        for logger, handlers, propagate, level in saved:
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.setLevel(level)
        handler.close()


class Hub:
    """The hub's own listener for the hospital (MLLP on loopback, archive-only) and the sandbox partners."""

    def __init__(self) -> None:
        self.partners: SandboxPartners | None = None
        self.mllp: tuple[str, int] | None = None
        self._listener: tuple[Any, Any, Any] | None = None

    def start(self) -> SandboxPartners:
        from cgthub.partners import sandbox_world

        self._start_mllp_listener()
        self.partners = sandbox_world().SandboxPartners.start(listener=self.mllp)
        return self.partners

    def _start_mllp_listener(self) -> None:
        """Archive-only, as `make up` runs it: ACK after commit; the HL7 inbox DAG maps and applies."""
        import asyncio
        import threading

        from cgthub.hl7.event_loop import new_listener_loop
        from cgthub.hl7.listener import MllpListener

        loop = new_listener_loop()  # as `cgthub hl7 listen` runs it: CGTHUB_LISTENER_EVENT_LOOP, uvloop by default
        listener = MllpListener("127.0.0.1", 0, apply=False)
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(listener.start())
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=serve, name="demo-mllp", daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the MLLP listener did not start")
        self.mllp = ("127.0.0.1", listener.port)
        self._listener = (loop, listener, thread)

    def stop(self) -> None:
        if self.partners is not None:
            self.partners.stop()
        if self._listener is not None:
            import asyncio

            loop, listener, thread = self._listener
            asyncio.run_coroutine_threadsafe(listener.stop(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)


def deliver(emissions: list[Emission], partners: SandboxPartners) -> dict[str, int]:
    """The partners' side of a wave: each records its messages in its own system, the hospital sends
    its HL7 over MLLP, and the CMO runs its nightly export into the hub's drop directory."""
    from cgthub.partners import inbox

    by_kind: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for emission in emissions:
        if emission.native is not None:
            by_kind[(emission.system, emission.kind)].append(emission.native)
    counts: dict[str, int] = defaultdict(int)
    for (system, kind), records in by_kind.items():
        partners.record(system, kind, records)
        counts[f"{system}/{kind}"] += len(records)
    if ("cmo", "batch_record") in by_kind:
        partners.export_batch_records(inbox("cmo_batch"))
    counts["hl7"] = partners.send_hl7(e.hl7 for e in emissions if e.system == "hl7")
    return dict(counts)


class Runner:
    """Runs the repo's DAGs with dag.test(), counting runs and seconds per DAG."""

    def __init__(self) -> None:
        from airflow.dag_processing.dagbag import DagBag

        from cgthub.airflow_env import DAGS_FOLDER, run_dag_test

        self._run = run_dag_test

        bag = DagBag(dag_folder=str(DAGS_FOLDER))
        if bag.import_errors:
            raise SystemExit(f"DAG import errors: {bag.import_errors}")
        self.dags = bag.dags
        self.seconds: dict[str, float] = defaultdict(float)
        self.runs = 0

    def run(self, dag_id: str, conf: dict[str, Any] | None = None) -> None:
        started = time.monotonic()
        dag_run = self._run(self.dags[dag_id], conf)
        self.seconds[dag_id] += time.monotonic() - started
        self.runs += 1
        if dag_run.state != "success":
            raise SystemExit(f"{dag_id} ended {dag_run.state}; see {_shown()}/demo.log")


# How each partner speaks to the hub, for the first lines of the output.
CHANNELS = {
    "crm": "REST, OAuth2, modified-since pages",
    "erp": "SOAP (zeep against the sandbox's WSDL)",
    "courier": "REST tracking feed",
    "cmo": "REST event feed",
    "cmo_batch": "the CMO's nightly CSV export",
    "hl7": "HL7 v2 ORR^O02 over MLLP",
}


def _partner_paths(hub: Hub) -> list[str]:
    from cgthub import outbound, partners
    from cgthub.partners import inbox

    assert hub.partners is not None and hub.mllp is not None
    urls = {**hub.partners.urls, "cmo_batch": str(inbox("cmo_batch")).replace(f"{PROJECT_ROOT}/", ""), "hl7": ""}
    lines = []
    for partner in INGEST_DAGS:
        module = partners.origin(partners.get(partner).pulls[0].fetch)
        lines.append(f"  {partner:<10} in : {module} ({CHANNELS[partner]}) <- {urls[partner]}")
    where = ":".join(map(str, hub.mllp))
    lines.append(f"  hl7        in : HL7 v2 ORU^R01, SIU^S12 over MLLP to the hub's listener on {where}")
    lines.append("                  (archive-only, ACK after commit), mapped by mappings/hl7 in the HL7 inbox DAG")
    for partner in outbound.interests():
        target = hub.partners.urls["hospital" if partner == "hl7" else partner]
        via = outbound.deliverer(partner)[0]
        lines.append(f"  {partner:<10} out: {via} ({CHANNELS[partner] if partner == 'hl7' else 'push'}) -> {target}")
    return lines


def main() -> int:
    started = time.monotonic()
    _prepare_environment()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from cgthub import airflow_env, demo_scenario, store
    from cgthub.tables import utcnow

    print("cgthub demo: 25 synthetic patients (US, DE), the real Airflow DAGs run with dag.test()")
    store.upgrade()
    airflow_env.migrate_metadata_db()
    with _quiet_logs():
        now = utcnow().replace(minute=0, second=0, microsecond=0)
        people, emissions = demo_scenario.world(now)
        hub = Hub()
        try:
            hub.start()
            return _run(runner_started=started, now=now, people=people, emissions=emissions, hub=hub)
        finally:
            hub.stop()


def _run(*, runner_started: float, now: datetime, people: list[Any], emissions: list[Emission], hub: Hub) -> int:
    from cgthub import demo_scenario

    assert hub.partners is not None
    print("partners (sandboxes on loopback, each through its connector):")
    print("\n".join(_partner_paths(hub)))
    runner = Runner()
    cuts = [now - timedelta(days=30), now - timedelta(days=12), now]
    previous = datetime.min.replace(tzinfo=now.tzinfo)
    for wave, cut in enumerate(cuts, start=1):
        batch = [e for e in emissions if previous < e.at <= cut]
        previous = cut
        delivered = deliver(batch, hub.partners)
        if cut == now:
            extract = DEMO_VAR / "snapshots" / "crm.json"
            extract.parent.mkdir(exist_ok=True)
            extract.write_text(json.dumps(demo_scenario.crm_extract(people, now), indent=1))
        for partner in INGEST_DAGS:
            runner.run(f"cgthub_ingest_{partner}")
        runner.run("cgthub_hl7_inbox")
        runner.run("cgthub_outbound")
        runner.run("cgthub_monitoring", {"now": cut.isoformat()})
        runner.run("cgthub_reconciliation", {"now": cut.isoformat()})
        sent = ", ".join(f"{k} {v}" for k, v in sorted(delivered.items()))
        print(f"wave {wave} (up to {cut:%Y-%m-%d}): partners recorded {sent}; 9 DAG runs done")
    print()
    print("\n".join(scheduling_desk(now, people, hub.partners, runner)))
    print()
    print(render_table(now))
    print(where_next(runner, time.monotonic() - runner_started, hub.partners))
    return 0


def scheduling_desk(now: datetime, people: list[Any], partners: SandboxPartners, runner: Runner) -> list[str]:
    """Today at the scheduling desk: three enrolments arrive from the CRM (one from a site whose
    qualification lapsed, refused), two orders are booked on the CMO's slots with the lead times of
    config/scheduling.yaml (the second asks for the place the first just took, is told so and takes
    the next feasible date), the outbound DAG books their couriers, and a nurse scans the wrong bag
    at a bedside. Every step goes through the hub's own functions, the partners' sandboxes and the
    real DAGs; the bookings are signed decisions."""
    import secrets

    from sqlalchemy import select

    from cgthub import booking, decisions, demo_scenario, slots
    from cgthub.scan_verification import Scan, Step, verify
    from cgthub.store import session_scope
    from cgthub.tables import LedgerEntry, OrderKey, QuarantineEntry

    desk = demo_scenario.desk(now)
    partners.record("crm", "enrollment", [e.native for e in desk.enrolments if e.native is not None])
    runner.run("cgthub_ingest_crm")
    lines = ["scheduling desk (today; bookings signed by demo-scheduler):"]
    refused, first, second = desk.refused, desk.first, desk.second
    with session_scope(readonly=True) as session:
        held = session.scalars(
            select(QuarantineEntry).where(QuarantineEntry.stage == "qualify", QuarantineEntry.status == "open")
        ).first()
        found = session.execute(select(OrderKey.value, OrderKey.order_id).where(OrderKey.kind == "crm_order_id"))
        ids: dict[str, str] = {value: order_id for value, order_id in found}
    why = held.reason.split("; judged by")[0] if held is not None else "not refused (see demo.log)"
    lines.append(f"  qualification: {refused.crm} enrolled at {refused.site}: refused, quarantined at qualify: {why}")

    slots.sync()  # the CMO's published capacity, through its connector
    with session_scope(readonly=True) as session:
        earliest = slots.options_for(session, ids[first.crm])[0]
    partners.publish_capacity(  # the CMO's planners: one place left on that day
        [{"cmo": earliest.cmo, "therapy": "CART-19", "date": earliest.slot_day.isoformat(), "capacity": 1}]
    )
    slots.sync()
    password = secrets.token_urlsafe(18)
    with session_scope() as session:
        decisions.add_operator(session, "demo-scheduler", password, ["book_slot"])
    signature = decisions.Signature(
        signer="demo-scheduler",
        password=password,  # pydantic keeps it as a SecretStr
        meaning=decisions.Meaning.APPROVED,
        reason_code="SLOT-AGREED-WITH-SITE",
        reason_text="date agreed with the apheresis unit",
    )
    asked = booking.BookingRequest(apheresis_on=earliest.apheresis_on, cmo=earliest.cmo)
    made = booking.run_booking(None, ids[first.crm], asked, signature)
    lines.append(f"  slot booked:   {first.crm} {_chain(made)}")
    try:
        booking.run_booking(None, ids[second.crm], asked, signature)
        conflict = "booked as well (the CMO had a second place)"
    except slots.SchedulingError as taken:
        conflict = f"refused ({getattr(taken, 'code', 'conflict')}: {taken})"
    with session_scope(readonly=True) as session:
        later = slots.options_for(session, ids[second.crm])[0]
    moved = booking.run_booking(
        None, ids[second.crm], booking.BookingRequest(apheresis_on=later.apheresis_on, cmo=later.cmo), signature
    )
    lines.append(f"  slot conflict: {second.crm} asked for the same last place: {conflict}")
    lines.append(f"                 resolved with the next feasible slot: {_chain(moved)}")

    runner.run("cgthub_outbound")  # books the couriers, sends the hospital its SIU^S12
    with session_scope(readonly=True) as session:
        for patient in (first, second):
            leg = session.scalars(
                select(LedgerEntry.body).where(
                    LedgerEntry.order_id == ids[patient.crm], LedgerEntry.event_type == "shipment.booked"
                )
            ).first()
            lines.append(f"  courier:       {patient.crm} {_pickup(leg)}")

    bedside, wrong = people[desk.bedside - 1], people[desk.wrong_bag - 1]
    scanned = f"={wrong.din[:13]}00"  # as the barcode reads: '=', the 13 data characters, two flags
    with session_scope() as session:
        result = verify(session, Scan(ids[bedside.crm], Step.BEDSIDE, "demo-nurse", din=scanned, location="INF-BAY-4"))
    outcome = "no match: the order is on hold, critical alert scan_mismatch" if not result.match else "match"
    lines.append(f"  bedside scan:  {bedside.crm}'s infusion, the bag scanned carries {wrong.crm}'s DIN: {outcome}")
    return lines


def _chain(made: Any) -> str:
    """A booked slot chain with its lead times, as the desk reads it."""
    return (
        f"apheresis {made.apheresis_on:%m-%d} at {made.site} -> {made.cmo} slot {made.slot_day:%m-%d} -> "
        f"released {made.release_on:%m-%d} -> at site {made.at_site_on:%m-%d} -> infusion {made.infusion_on:%m-%d} "
        f"({(made.infusion_on - made.apheresis_on).days} d vein to vein)"
    )


def _pickup(body: str | None) -> str:
    if body is None:
        return "no courier booking (see demo.log)"
    event = json.loads(body)
    shipment, attributes = event.get("shipment") or {}, event.get("attributes") or {}
    start = datetime.fromisoformat(event["scheduled_for"]).astimezone(UTC) if event.get("scheduled_for") else None
    end = attributes.get("pickup_window_end")
    end = datetime.fromisoformat(end).astimezone(UTC) if end else None
    window = f"{start:%m-%d %H:%M} to {end:%m-%d %H:%M} UTC" if start and end else "no window"
    return (
        f"booked {shipment.get('shipment_id')} (air waybill {shipment.get('tracking_id')}), "
        f"pickup {window} at {attributes.get('pickup_location')}"
    )


def render_table(now: datetime) -> str:
    """The order transparency table: one line per order, what an operator looks at first."""
    from sqlalchemy import select

    from cgthub import alerts
    from cgthub.lifecycle import MAIN_PATH, OrderProjection
    from cgthub.scheduling_tables import SlotBooking
    from cgthub.store import session_scope
    from cgthub.tables import Order

    with session_scope(readonly=True) as session:
        orders = sorted(
            (OrderProjection.model_validate(p) for p in session.scalars(select(Order.projection))),
            key=lambda o: o.refs.crm_order_id or o.order_id,
        )
        slot_days = {oid: day for oid, day in session.execute(select(SlotBooking.order_id, SlotBooking.slot_day))}
        open_by_order: dict[str, list[str]] = defaultdict(list)
        for alert in alerts.open_alerts(session):
            if alert.order_id:
                open_by_order[alert.order_id].append(_alert_label(alert.kind, alert.severity))
    header = (
        f"{'order':<20} {'CRM order':<9} {'market':<6} {'site':<9} {'status':<19} {'aph / slot':<13} "
        f"{'milestones reached, latest':<40} {'vein-to-vein':>12}  open alerts"
    )
    lines = [header, "-" * len(header)]
    for order in orders:
        reached = [s for s in MAIN_PATH if s.value in order.milestones]
        last = reached[-1] if reached else None
        marks = f"{len(reached):>2} of {len(MAIN_PATH)}"
        if last is not None:
            marks += f", {last.value} {order.milestones[last.value]:%m-%d}"
        if order.released_under_exception:
            marks += " *"
        v2v = order.vein_to_vein_days(now)
        apheresis, slot = order.scheduled.get("apheresis"), slot_days.get(order.order_id)
        booked = f"{f'{apheresis:%m-%d}' if apheresis else '-'} / {f'{slot:%m-%d}' if slot else '-'}"
        lines.append(
            f"{order.order_id:<20} {order.refs.crm_order_id or '':<9} {order.market or '':<6} {order.site or '':<9} "
            f"{order.status.value:<19} {booked:<13} {marks:<40} {'' if v2v is None else f'{v2v:g} d':>12}  "
            f"{', '.join(sorted(open_by_order.get(order.order_id, []))) or '-'}"
        )
    lines += ["", *_TABLE_LEGEND]
    return "\n".join(lines)


_TABLE_LEGEND = (
    "aph / slot: the planned apheresis date and, when the hub booked it, the CMO's manufacturing slot day.",
    "milestones reached: how many of the main path's steps (enrolled ... infused) the order has passed,",
    "  then the latest one and its date (month-day); * = the batch failed a QC specification (OOS) and",
    "  was released under a documented exception.",
    "vein-to-vein: days from apheresis collection to infusion, or to now while the order is open.",
    "open alerts: the kinds still open on the order; ! = critical.",
)


def _alert_label(kind: str, severity: str) -> str:
    return kind.removeprefix("reconciliation.") + ("!" if severity == "critical" else "")


def where_next(runner: Runner, elapsed: float, partners: SandboxPartners) -> str:
    from sqlalchemy import func, select

    from cgthub import alerts
    from cgthub.ops_tables import ReconciliationReport
    from cgthub.outbox import OutboxMessage
    from cgthub.store import session_scope
    from cgthub.tables import LedgerEntry, Order, QuarantineEntry, RawMessage

    with session_scope(readonly=True) as session:
        entries = session.scalar(select(func.count()).select_from(LedgerEntry))
        raw = session.scalar(select(func.count()).select_from(RawMessage))
        resent_ids = list(
            session.scalars(select(RawMessage.id).where(RawMessage.system == "hl7", RawMessage.receive_count > 1))
        )
        resent_orders = sorted(
            {
                (projection.get("refs") or {}).get("crm_order_id") or order_id
                for order_id, projection in session.execute(
                    select(Order.id, Order.projection).where(
                        Order.id.in_(select(LedgerEntry.order_id).where(LedgerEntry.raw_id.in_(resent_ids)))
                    )
                )
            }
        )
        quarantined = session.scalars(select(QuarantineEntry).where(QuarantineEntry.status == "open")).all()
        open_alerts = alerts.open_alerts(session)
        delivered = dict(
            session.execute(
                select(OutboxMessage.destination_kind, func.count())
                .where(OutboxMessage.status == "delivered")
                .group_by(OutboxMessage.destination_kind)
            ).all()
        )
        report = session.scalars(select(ReconciliationReport).order_by(ReconciliationReport.id.desc())).first()
    kinds: dict[str, int] = defaultdict(int)
    for alert in open_alerts:
        kinds[_alert_label(alert.kind, alert.severity)] += 1
    shown = _shown()
    db = f"CGTHUB_VAR_DIR={shown}"
    return f"""
{raw} partner payloads archived, {entries} ledger entries, {len(quarantined)} in quarantine, \
{sum(delivered.values())} outbound messages delivered ({", ".join(f"{k} {v}" for k, v in sorted(delivered.items()))}): \
{partners.crm_status_updates()} status updates PATCHed into the CRM sandbox, \
{partners.hospital_messages()} ORR^O02 ACKed by the hospital's receiver.
resent by the hospital, received twice and applied once: {len(resent_ids)} HL7 message(s) of {", ".join(resent_orders)}
open alerts: {", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))}  ("!" = critical)
last reconciliation report #{report.id if report else "-"}: {json.dumps(report.counts if report else {})}
{runner.runs} DAG runs in {sum(runner.seconds.values()):.0f} s; demo finished in {elapsed:.0f} s.

Where to look next:
  {db} .venv/bin/cgthub orders list
      every order, filterable by status/market/site
  {db} .venv/bin/cgthub orders show <order>
      one order's timeline, milestones and custody
  {db} .venv/bin/cgthub quarantine list
      what was held back and why (the COI mismatch, the orphan shipment, the unqualified site)
  {db} .venv/bin/cgthub slots show <order>
      the feasible apheresis dates and the booked slot chain of an order
  {db} .venv/bin/cgthub ledger verify
      re-check every order's hash chain
  {db} .venv/bin/cgthub api serve
      the order transparency API (keys: cgthub api keys create --help)
  {shown}/demo.log
      task logs and every alert as the notifier sent it
  make up
      the same DAGs on a schedule, Airflow UI on http://localhost:8080
"""


if __name__ == "__main__":
    sys.exit(main())
