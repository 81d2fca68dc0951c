"""A partner's address and credentials, read from its Airflow Connection (`AIRFLOW_CONN_<ID>`).

The core owns the lookup: connectors build their clients on it, and the hub's own HL7 status
sender reads the hospital's address through it.

Like Airflow's HTTP provider: the hook reads the connection; nothing secret lives in config files.
`repr` and `str` never show the password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cgthub.errors import CgthubError


class ConnectionMissing(CgthubError, LookupError):
    """The Airflow Connection is not defined."""


@dataclass(frozen=True)
class PartnerConnection:
    conn_id: str
    base_url: str
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)


def get_connection(conn_id: str) -> PartnerConnection:
    """The connection `conn_id` from Airflow's secrets backends (environment variables included)."""
    from airflow.sdk import BaseHook  # heavy import: only when a connector actually runs

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # Airflow raises its own not-found types, by version
        raise ConnectionMissing(
            f"Airflow connection {conn_id!r} is not defined: set AIRFLOW_CONN_{conn_id.upper()} "
            "(e.g. https://client-id:secret@host:port/api) or add it in Airflow"
        ) from exc
    scheme = "https" if (conn.conn_type or "").lower() in ("https", "") else "http"
    if (conn.conn_type or "").lower() == "http":
        scheme = "http"
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema.strip('/')}" if conn.schema else ""
    return PartnerConnection(
        conn_id=conn_id,
        base_url=f"{scheme}://{conn.host}{port}{path}",
        login=conn.login,
        password=conn.password,
        extra=dict(conn.extra_dejson or {}),
    )
