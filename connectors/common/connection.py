"""A partner's address and credentials: the hub's Airflow Connection lookup (cgthub.connections),
named here where every connector's client reaches for it."""

from cgthub.connections import ConnectionMissing, PartnerConnection, get_connection

__all__ = ["ConnectionMissing", "PartnerConnection", "get_connection"]
