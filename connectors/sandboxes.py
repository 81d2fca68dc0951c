"""The sandbox partners as one world: where each listens, the Airflow connections that point the
hub's connectors at them, and the partners' side of a story (what each partner's own users record).

`make demo` starts them in this process on free loopback ports (`SandboxPartners.start`); `make up`
and docker-compose run each as its own service (`python -m cgthub.services sandbox <partner>`, fixed
ports) and the demo feeder finds them through the same `AIRFLOW_CONN_*` connections the connectors
read (`SandboxPartners.from_connections`). Either way the hub sees only the partners' protocols:
REST for the CRM, courier and CMO, SOAP for the ERP, a CSV export for the CMO's batch records, and
MLLP both ways with the hospital.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cgthub import partners
from cgthub.settings import get_settings

# The sandboxes as the partners declare them (connectors/<partner>/__init__.py), in port order.
SANDBOXES = partners.sandboxes()
PARTNERS = tuple(SANDBOXES)
FIXED_PORTS = {name: box.port for name, box in SANDBOXES.items()}
# sandbox -> (Airflow connection id, its URI for a sandbox at {host}:{port}); the credentials are the sandboxes'.
CONNECTIONS = {
    name: (partner.connection_id, partner.sandbox.connection_uri)
    for partner in partners.registry().values()
    if partner.sandbox is not None and partner.connection_id is not None
    for name in [partner.sandbox.service]
}
LISTENER_ENV = "CGTHUB_MLLP_LISTENER"  # where the hospital sends its HL7 (the hub's listener), host:port


def connection_env(ports: dict[str, int], host: str = "127.0.0.1") -> dict[str, str]:
    """`AIRFLOW_CONN_*` variables pointing each connector at its sandbox."""
    return {
        f"AIRFLOW_CONN_{conn_id.upper()}": uri.format(host=host, port=ports[partner])
        for partner, (conn_id, uri) in CONNECTIONS.items()
        if partner in ports
    }


@dataclass
class SandboxPartners:
    """The sandbox partners at their addresses (root URLs; the hospital's receiver as host, port)."""

    urls: dict[str, str]
    listener: tuple[str, int] | None = None
    _servers: list[Any] = field(default_factory=list, repr=False)  # in-process: each has start() and stop()
    _hospital: Any = field(default=None, repr=False)

    @classmethod
    def start(cls, listener: tuple[str, int] | None = None) -> SandboxPartners:
        """Every sandbox in this process on a free loopback port, and the connections set to them."""
        import importlib

        from connectors.common.sandbox import SandboxServer
        from connectors.hospital.receiver import HospitalReceiver

        world = cls(urls={}, listener=listener)
        for name, box in SANDBOXES.items():
            if box.scheme != "http":
                continue
            server = SandboxServer(importlib.import_module(box.module).create_app()).start()
            world._servers.append(server)
            world.urls[name] = server.base_url
        hospital = world._hospital = HospitalReceiver().start()
        world._servers.append(hospital)
        world.urls["hospital"] = f"mllp://{hospital.host}:{hospital.port}"
        ports = {partner: int(urlsplit(url).port or 0) for partner, url in world.urls.items()}
        os.environ.update(connection_env(ports))
        return world

    @classmethod
    def from_connections(cls) -> SandboxPartners:
        """The sandboxes the connectors' Airflow connections name (the `make up` and compose services)."""
        from connectors.common.connection import get_connection

        urls = {}
        for partner, (conn_id, _uri) in CONNECTIONS.items():
            parts = urlsplit(get_connection(conn_id).base_url)
            urls[partner] = f"{SANDBOXES[partner].scheme}://{parts.hostname}:{parts.port}"
        host, _, port = (get_settings().mllp_listener or "127.0.0.1:2575").rpartition(":")
        return cls(urls=urls, listener=(host, int(port)))

    def stop(self) -> None:
        for server in self._servers:
            server.stop()

    # -- the partners' own users, recording what happened -------------------------------------

    def record(self, system: str, kind: str, records: list[dict[str, Any]]) -> None:
        """A partner's records of one document kind, into its sandbox, for its connector to read."""
        if system == "crm":  # the CRM's users editing therapy orders
            self._post_each("crm", "/sandbox/orders", records)
        elif system == "erp":  # sales orders entered in the ERP
            self._post_each("erp", "/sandbox/sales_orders", records)
        elif system == "courier":
            self._track(records)
        elif system == "cmo" and kind == "batch_event":  # the CMO's MES, read through its event feed
            self._post_each("cmo", "/sandbox/events", records)
        elif system == "cmo" and kind == "batch_record":  # the same MES, for the nightly export
            self._post("cmo", "/sandbox/batch_records", records)
        else:
            raise ValueError(f"no sandbox takes {system}/{kind}")

    def export_batch_records(self, directory: Path) -> str | None:
        """The CMO's nightly export: a CSV of the steps recorded since the last one, into the drop directory."""
        return self._post("cmo", "/sandbox/export", {"directory": str(directory)})["file"]

    def send_hl7(self, messages: Iterable[str]) -> int:
        """The hospital's interface engine: one MLLP connection, each message sent and its ACK awaited."""
        from cgthub.hl7.mllp import FrameDecoder, frame

        if self.listener is None:
            raise RuntimeError("no MLLP listener to send the hospital's HL7 to")
        sent = 0
        decoder = FrameDecoder()
        with socket.create_connection(self.listener, timeout=30) as connection:
            for message in messages:
                connection.sendall(frame(message.encode()))
                ack: bytes | None = None
                while ack is None:
                    chunk = connection.recv(65536)
                    if not chunk:
                        raise RuntimeError("the MLLP listener closed the connection before its ACK")
                    ack = next((a for a in decoder.feed(chunk) if isinstance(a, bytes)), None)
                if b"MSA|AA" not in ack:
                    raise RuntimeError(f"the MLLP listener refused a message: {ack[:200]!r}")
                sent += 1
        return sent

    def publish_capacity(self, rows: list[dict[str, Any]]) -> None:
        """The CMO's planners publish places per day: [{cmo, therapy, date, capacity}]."""
        self._post("cmo", "/sandbox/capacity", rows)

    def crm_status_updates(self) -> int:
        return sum(len(updates) for updates in self._get("crm", "/sandbox/statuses").values())

    def hospital_messages(self) -> int:
        """How many status messages the hospital's receiver ACKed (in-process sandboxes only)."""
        return len(self._hospital.received) if self._hospital is not None else 0

    def _track(self, events: list[dict[str, Any]]) -> None:
        """The courier's own tracking: each event recorded on the shipment booked for its order's leg,
        the hub's booking when the hub booked first, else one the courier's staff book now."""
        for event in events:
            shipment = event["shipmentId"]
            booking = {
                "shipmentId": shipment,
                "direction": event["direction"],
                "reference": event.get("reference") or {},
            }
            headers = {"X-API-Key": "courier-key", "Idempotency-Key": f"sandbox-book-{shipment}"}
            booked = self._post("courier", "/v1/shipments", booking, headers=headers)["shipmentId"]
            own = ("shipmentId", "trackingNumber", "shipper") if booked != shipment else ("shipmentId",)
            body = {k: v for k, v in event.items() if k not in own}
            self._post("courier", f"/sandbox/shipments/{booked}/events", body)

    def _post_each(self, partner: str, path: str, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._post(partner, path, record)

    def _post(self, partner: str, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        import httpx

        answer = httpx.post(f"{self.urls[partner]}{path}", json=body, headers=headers, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def _get(self, partner: str, path: str) -> Any:
        import httpx

        answer = httpx.get(f"{self.urls[partner]}{path}", timeout=30)
        answer.raise_for_status()
        return answer.json()
