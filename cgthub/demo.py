"""`make demo`: the hub's main job, end to end, on one machine in a couple of minutes.

What runs: the real Airflow DAGs of `dags/`, each executed with `dag.test()` (one in-process
DagRun per call, on Airflow's SQLite metadata DB under var/airflow). That is Airflow's documented
way to run a DAG without a scheduler; it exercises the same DAG files, tasks, Assets, XComs and
callbacks as `make up` does on a schedule, with none of the scheduler's heartbeats to wait for.

The story (cgthub.demo_scenario): 25 synthetic patients in the US and Germany, enrolled over the
last seven weeks, replayed in three waves of partner traffic. Each wave the partners deliver what
happened since the last one; then every ingest DAG pulls its partner, the HL7 inbox DAG applies
what the hospital sent over MLLP, the outbound DAG tells the partners, and the monitoring and
reconciliation DAGs judge deadlines and cross-system consistency at that moment. The demo ends by
printing the order transparency table and where to look next.

Partners: a partner whose connector and sandbox are installed (today the CRM) runs its sandbox on
loopback and is pulled and pushed through its real connector; the others
deliver through their canonical drop folders (var/demo/inbox/<partner>/) and the hospital's HL7
messages go through the raw archive exactly as the MLLP listener leaves them. The first lines of
the output say which path each partner took. The hospital speaks real HL7 v2 (ORU^R01 collection
reports, SIU^S12 infusion bookings), the CRM its therapy-order records and the courier its tracking
events, each through its mapping in mappings/ (synthetic identities the mappings pseudonymize); the
ERP and the CMO deliver canonical JSON in this demo.
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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cgthub.settings import PROJECT_ROOT

DEMO_VAR = Path(os.environ.get("CGTHUB_DEMO_DIR") or PROJECT_ROOT / "var" / "demo")
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
    # Partners come through their drop folders and the HL7 archive here; connectors pulling their
    # sandboxes are enabled partner by partner once the demo starts those sandboxes.
    os.environ.setdefault("CGTHUB_CONNECTORS", "")
    from cgthub import airflow_env

    airflow_env.configure(home=PROJECT_ROOT / "var" / "airflow")


def _quiet_logs() -> None:
    """Alerts and task logs go to var/demo/demo.log; the terminal shows the story."""
    handler = logging.FileHandler(DEMO_VAR / "demo.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("cgthub", "airflow", "airflow.task", "sqlalchemy", "alembic"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO if name == "cgthub" else logging.WARNING)


class Sandboxes:
    """The partner sandboxes the demo runs on loopback: those whose connector package is installed.

    A partner with a running sandbox is pulled (and pushed to) through its real connector, with its
    Airflow connection pointing at the sandbox; the partner's story is posted into the sandbox.
    """

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}
        self._servers: list[Any] = []
        self.mllp: tuple[str, int] | None = None
        self._listener: tuple[Any, Any, Any] | None = None

    def start(self) -> None:
        self._start_mllp_listener()
        try:
            from connectors.common.sandbox import SandboxServer
            from connectors.crm import sandbox as crm_sandbox
        except ModuleNotFoundError:
            return
        server = SandboxServer(crm_sandbox.create_app()).start()
        self._servers.append(server)
        self.urls["crm"] = server.base_url
        os.environ["AIRFLOW_CONN_CRM_API"] = f"http://cgthub:sandbox-secret@127.0.0.1:{server.port}"
        try:
            from connectors.courier import sandbox as courier_sandbox
        except ModuleNotFoundError:
            courier_sandbox = None
        if courier_sandbox is not None:
            courier = SandboxServer(courier_sandbox.create_app()).start()
            self._servers.append(courier)
            self.urls["courier"] = courier.base_url
            os.environ["AIRFLOW_CONN_COURIER_API"] = f"http://cgthub:courier-key@127.0.0.1:{courier.port}"
        try:
            from connectors.cmo import sandbox as cmo_sandbox
        except ModuleNotFoundError:
            cmo_sandbox = None
        if cmo_sandbox is not None:
            cmo = SandboxServer(cmo_sandbox.create_app()).start()
            self._servers.append(cmo)
            self.urls["cmo"] = cmo.base_url
            os.environ["AIRFLOW_CONN_CMO_API"] = f"http://cgthub:cmo-key@127.0.0.1:{cmo.port}"
        os.environ["CGTHUB_CONNECTORS"] = ",".join(self.urls)

    def post(self, system: str, records: list[dict[str, Any]]) -> None:
        """A partner's own records into its sandbox, where its connector will pull them from."""
        if system == "crm":
            self.post_crm_records(records)
        elif system == "courier":
            self.post_courier_events(records)
        elif system == "cmo":
            import httpx

            for record in records:  # the CMO's MES recording each step; its connector reads the feed
                httpx.post(f"{self.urls['cmo']}/sandbox/events", json=record, timeout=10).raise_for_status()
        else:
            raise ValueError(f"no sandbox for {system}")

    def post_courier_events(self, events: list[dict[str, Any]]) -> None:
        """The courier's own tracking: each shipment booked once, then its events recorded."""
        import httpx

        base = self.urls["courier"]
        for event in events:
            shipment = event["shipmentId"]
            booking = {
                "shipmentId": shipment,
                "direction": event["direction"],
                "reference": event.get("reference") or {},
            }
            headers = {"X-API-Key": "courier-key", "Idempotency-Key": f"demo-book-{shipment}"}
            httpx.post(f"{base}/v1/shipments", json=booking, headers=headers, timeout=10).raise_for_status()
            body = {k: v for k, v in event.items() if k != "shipmentId"}
            httpx.post(f"{base}/sandbox/shipments/{shipment}/events", json=body, timeout=10).raise_for_status()

    def post_crm_records(self, records: list[dict[str, Any]]) -> None:
        import httpx

        for record in records:  # the CRM's users editing therapy orders
            httpx.post(f"{self.urls['crm']}/sandbox/orders", json=record, timeout=10).raise_for_status()

    def crm_status_updates(self) -> int:
        import httpx

        if "crm" not in self.urls:
            return 0
        statuses = httpx.get(f"{self.urls['crm']}/sandbox/statuses", timeout=10).json()
        return sum(len(updates) for updates in statuses.values())

    def _start_mllp_listener(self) -> None:
        """The hospital's MLLP listener on loopback, archive-only: it ACKs after commit, the HL7 inbox DAG maps."""
        try:
            from cgthub.hl7.listener import MllpListener
        except ModuleNotFoundError:
            return
        import asyncio
        import threading

        loop = asyncio.new_event_loop()
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

    def send_hl7(self, messages: list[str]) -> None:
        """The hospital's interface engine: one MLLP connection, each message sent and its ACK awaited."""
        import socket

        from cgthub.hl7.mllp import frame

        assert self.mllp is not None
        with socket.create_connection(self.mllp, timeout=30) as connection:
            for message in messages:
                connection.sendall(frame(message.encode()))
                ack = b""
                while not ack.endswith(b"\x1c\r"):
                    chunk = connection.recv(65536)
                    if not chunk:
                        raise RuntimeError("the MLLP listener closed the connection before its ACK")
                    ack += chunk
                if b"MSA|AA" not in ack:
                    raise RuntimeError(f"the MLLP listener refused a message: {ack[:200]!r}")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
        if self._listener is not None:
            import asyncio

            loop, listener, thread = self._listener
            asyncio.run_coroutine_threadsafe(listener.stop(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)


def deliver(emissions: list[Any], wave: int, sandboxes: Sandboxes | None = None) -> dict[str, int]:
    """The partners' side of a wave: files into drop folders, HL7 messages into the archive (as the listener does)."""
    from cgthub import archive, canonical_feed
    from cgthub.store import session_scope
    from cgthub.tables import utcnow

    by_system: dict[str, list[Any]] = defaultdict(list)
    native: dict[tuple[str, str], list[Any]] = defaultdict(list)
    hl7: list[Any] = []
    for emission in emissions:
        if emission.system == "hl7":
            hl7.append(emission)
        elif emission.native is not None:
            native[(emission.system, emission.kind)].append(emission.native)
        elif emission.system == "cmo" and sandboxes is not None and "cmo" in sandboxes.urls:
            native[("cmo", "batch_event")].append(cmo_native(emission.event))
        else:
            by_system[emission.system].append(emission)
    counts: dict[str, int] = defaultdict(int)
    for system, items in by_system.items():
        counts[system] += len(items)
        path = canonical_feed.inbox(system) / f"wave{wave}-{system}.json"
        path.write_text(json.dumps([e.event for e in items], indent=1))
    for (system, kind), records in native.items():  # one page per partner document kind, in its own format
        counts[system] += len(records)
        if sandboxes is not None and system in sandboxes.urls:
            sandboxes.post(system, records)
            continue
        folder = canonical_feed.inbox(system) / kind
        folder.mkdir(exist_ok=True)
        page = {"crm": "items", "courier": "events"}[system]
        (folder / f"wave{wave}.json").write_text(json.dumps({page: records}, indent=1))
    if sandboxes is not None and sandboxes.mllp is not None:
        sandboxes.send_hl7([e.hl7 for e in hl7 if e.hl7])  # over MLLP, to the real listener
        hl7_files = [e for e in hl7 if not e.hl7]
    else:
        hl7_files = hl7
    with session_scope() as session:
        for emission in hl7_files:  # as the MLLP listener does: archive under the control id, ACK, nothing else
            real = bool(emission.hl7)
            archive.store(
                session,
                system="hl7",
                kind=emission.kind if real else canonical_feed.KIND,
                channel="mllp",
                payload=emission.hl7.encode() if real else json.dumps(emission.event, sort_keys=True).encode(),
                received_at=utcnow(),
                dedupe_key=emission.message_id,
                content_type="x-application/hl7-v2+er7" if real else "application/json",
            )
    counts["hl7"] = len(hl7)
    return dict(counts)


CMO_EVENT_TYPES = {
    "cmo.material_received": "MATERIAL_RECEIVED",
    "cmo.manufacturing_started": "MANUFACTURING_STARTED",
    "cmo.qc_started": "QC_STARTED",
    "cmo.out_of_specification": "OOS",
    "cmo.released": "RELEASED",
    "cmo.released_under_exception": "RELEASED_UNDER_EXCEPTION",
    "cmo.terminated": "TERMINATED",
}


def cmo_native(event: dict[str, Any]) -> dict[str, Any]:
    """The story's CMO step in the CMO's own REST format (mappings/cmo/batch_event)."""
    refs, material = event.get("refs") or {}, event.get("material") or {}
    record = {
        "messageId": event["source_event_id"],
        "eventType": CMO_EVENT_TYPES[event["event_type"]],
        "eventTime": event["occurred_at"],
        "orderReference": refs.get("crm_order_id"),
        "batchId": refs.get("cmo_batch_id"),
        "din": material.get("din"),
        "lot": material.get("lot"),
        "bags": material.get("bag_ids"),
        "finding": event.get("reason"),
    }
    return {k: v for k, v in record.items() if v is not None}


class Runner:
    """Runs the repo's DAGs with dag.test() and keeps their task results."""

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

    def run(self, dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        started = time.monotonic()
        dag_run = self._run(self.dags[dag_id], conf)
        self.seconds[dag_id] += time.monotonic() - started
        self.runs += 1
        if dag_run.state != "success":
            raise SystemExit(f"{dag_id} ended {dag_run.state}; see {_shown()}/demo.log")
        return {}


def _partner_paths(sandboxes: Sandboxes) -> list[str]:
    from cgthub import outbound, partner_sync

    lines = []
    for partner in INGEST_DAGS:
        connector = partner_sync.connector_pull(partner) if partner_sync.connector_enabled(partner) else None
        native = {"crm": "enrollment", "courier": "tracking_event"}.get(partner)
        files = f"{_shown()}/inbox/{partner}/{native}/ (own format, mappings/{partner}/{native})" if native else None
        sandbox = f" <- sandbox {sandboxes.urls[partner]}" if partner in sandboxes.urls else ""
        via = f"connector {partner_sync.CONNECTOR_PULLS[partner][0]}{sandbox}" if connector else None
        via = via or files or f"{_shown()}/inbox/{partner}/ (canonical JSON)"
        lines.append(f"  {partner:<10} in : {via}")
    if sandboxes.mllp:
        where = ":".join(map(str, sandboxes.mllp))
        lines.append(f"  hl7        in : HL7 v2 ORU^R01, SIU^S12 over MLLP to the listener on {where}")
        lines.append("                  (archive-only, ACK after commit), mapped by mappings/hl7 in the HL7 inbox DAG;")
        lines.append(
            "                  infusion completed: canonical JSON into the archive (no HL7 mapping for it yet)"
        )
    else:
        lines.append("  hl7        in : HL7 v2 ORU^R01, SIU^S12 archived as the MLLP listener leaves them, mapped by")
        lines.append("                  mappings/hl7 in the HL7 inbox DAG (infusion completed: canonical JSON for now)")
    for partner in outbound.PARTNERS:
        lines.append(f"  {partner:<10} out: {outbound.deliverer(partner)[0].replace(str(PROJECT_ROOT) + '/', '')}")
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
    _quiet_logs()
    now = utcnow().replace(minute=0, second=0, microsecond=0)
    people, emissions = demo_scenario.world(now)
    sandboxes = Sandboxes()
    sandboxes.start()
    try:
        return _run(runner_started=started, now=now, people=people, emissions=emissions, sandboxes=sandboxes)
    finally:
        sandboxes.stop()


def _run(*, runner_started: float, now: datetime, people: list[Any], emissions: list[Any], sandboxes: Sandboxes) -> int:
    from cgthub import demo_scenario

    print("partners:")
    print("\n".join(_partner_paths(sandboxes)))
    runner = Runner()
    cuts = [now - timedelta(days=30), now - timedelta(days=12), now]
    previous = datetime.min.replace(tzinfo=now.tzinfo)
    for wave, cut in enumerate(cuts, start=1):
        batch = [e for e in emissions if previous < e.at <= cut]
        previous = cut
        delivered = deliver(batch, wave, sandboxes)
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
        print(f"wave {wave} (up to {cut:%Y-%m-%d}): partners sent {sent} messages; 9 DAG runs done")
    print()
    print(render_table(now))
    print(where_next(runner, time.monotonic() - runner_started, sandboxes))
    return 0


def render_table(now: datetime) -> str:
    """The order transparency table: one line per order, what an operator looks at first."""
    from sqlalchemy import select

    from cgthub import alerts
    from cgthub.lifecycle import MAIN_PATH, OrderProjection
    from cgthub.store import session_scope
    from cgthub.tables import Order

    with session_scope(readonly=True) as session:
        orders = sorted(
            (OrderProjection.model_validate(p) for p in session.scalars(select(Order.projection))),
            key=lambda o: o.refs.crm_order_id or o.order_id,
        )
        open_by_order: dict[str, list[str]] = defaultdict(list)
        for alert in alerts.open_alerts(session):
            if alert.order_id:
                open_by_order[alert.order_id].append(_alert_label(alert.kind, alert.severity))
    header = (
        f"{'order':<20} {'crm':<9} {'mkt':<3} {'site':<9} {'status':<19} {'milestones':<36} {'v2v d':>5}  open alerts"
    )
    lines = [header, "-" * len(header)]
    for order in orders:
        reached = [s for s in MAIN_PATH if s.value in order.milestones]
        last = reached[-1] if reached else None
        marks = f"{len(reached):>2}/{len(MAIN_PATH)}"
        if last is not None:
            marks += f" {last.value} {order.milestones[last.value]:%m-%d}"
        if order.released_under_exception:
            marks += " (OOS->exc)"
        v2v = order.vein_to_vein_days(now)
        lines.append(
            f"{order.order_id:<20} {order.refs.crm_order_id or '':<9} {order.market or '':<3} {order.site or '':<9} "
            f"{order.status.value:<19} {marks:<36} {'' if v2v is None else f'{v2v:g}':>5}  "
            f"{', '.join(sorted(open_by_order.get(order.order_id, []))) or '-'}"
        )
    return "\n".join(lines)


def _alert_label(kind: str, severity: str) -> str:
    return kind.removeprefix("reconciliation.") + ("!" if severity == "critical" else "")


def where_next(runner: Runner, elapsed: float, sandboxes: Sandboxes) -> str:
    from sqlalchemy import func, select

    from cgthub import alerts
    from cgthub.ops_tables import ReconciliationReport
    from cgthub.outbox import OutboxMessage
    from cgthub.store import session_scope
    from cgthub.tables import LedgerEntry, Order, QuarantineEntry, RawMessage

    with session_scope(readonly=True) as session:
        entries = session.scalar(select(func.count()).select_from(LedgerEntry))
        raw = session.scalar(select(func.count()).select_from(RawMessage))
        resent_ids = list(session.scalars(select(RawMessage.id).where(RawMessage.receive_count > 1)))
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
        delivered = session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == "delivered")
        )
        report = session.scalars(select(ReconciliationReport).order_by(ReconciliationReport.id.desc())).first()
    kinds: dict[str, int] = defaultdict(int)
    for alert in open_alerts:
        kinds[_alert_label(alert.kind, alert.severity)] += 1
    shown = _shown()
    db = f"CGTHUB_VAR_DIR={shown}"
    return f"""
{raw} partner payloads archived, {entries} ledger entries, {len(quarantined)} in quarantine, \
{delivered} outbound messages delivered ({sandboxes.crm_status_updates()} status updates PATCHed into the CRM sandbox).
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
      what was held back and why (the COI mismatch, the orphan shipment)
  {db} .venv/bin/cgthub ledger verify
      re-check every order's hash chain
  {shown}/outbound/<partner>/
      what the hub told the CRM, ERP, hospital and CMO
  {shown}/demo.log
      task logs and every alert as the notifier sent it
  make up
      the same DAGs on a schedule, Airflow UI on http://localhost:8080
"""


if __name__ == "__main__":
    sys.exit(main())
