"""API keys: who is calling, what they may do (scopes) and which orders they may see (data scope).

A key is `cgt_<key id>_<secret>`. Only SHA-256 of the secret is stored: the secret has 256 random
bits, so a plain hash cannot be brute-forced, and the key is shown once, at creation. The data scope
narrows every query: a treatment site's key sees its site's orders, a CMO's key its batches, a
market key its country; keys that see everything are created explicitly with `all_data`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, false, select
from sqlalchemy.orm import Session

from cgthub import audit_trail
from cgthub.api.tables import ApiKey
from cgthub.errors import CgthubError
from cgthub.tables import utcnow

TOKEN_PREFIX = "cgt"  # noqa: S105  (a public prefix, not a secret)


class Scope(StrEnum):
    STATUS_READ = "status:read"  # order status, milestones, references, alerts, change feed, subscriptions
    TIMELINE_READ = "timeline:read"  # the PHI-free event timeline
    CUSTODY_READ = "custody:read"  # EPCIS custody chain, FHIR bundle, patient pseudonyms
    ADMIN = "admin"  # everything above, plus operating webhooks (dead-letter replay)
    OPERATE = "operate"  # signed operator decisions (each also needs the signer's re-authentication)
    SCAN = "scan:write"  # record label scans at handoffs and the bedside (POST /verify); a mismatch holds the order


class InvalidKeyRequest(CgthubError, ValueError):
    """A key that cannot be created as asked (the message says why)."""


@dataclass(frozen=True)
class Principal:
    """The caller behind a valid key."""

    key_id: str
    name: str
    scopes: frozenset[str]
    sites: frozenset[str]
    cmos: frozenset[str]
    markets: frozenset[str]
    all_data: bool

    def has(self, scope: Scope) -> bool:
        return scope.value in self.scopes or Scope.ADMIN.value in self.scopes

    def can_see(self, *, site: str | None, cmo: str | None, market: str | None) -> bool:
        if self.all_data:
            return True
        if not (self.sites or self.cmos or self.markets):
            return False
        return (
            (not self.sites or site in self.sites)
            and (not self.cmos or cmo in self.cmos)
            and (not self.markets or market in self.markets)
        )

    def data_filter(self, site: Any, cmo: Any, market: Any) -> list[ColumnElement[bool]]:
        """SQL conditions on (site, cmo, market) columns that keep only this key's orders."""
        if self.all_data:
            return []
        if not (self.sites or self.cmos or self.markets):
            return [false()]
        conditions: list[ColumnElement[bool]] = []
        if self.sites:
            conditions.append(site.in_(sorted(self.sites)))
        if self.cmos:
            conditions.append(cmo.in_(sorted(self.cmos)))
        if self.markets:
            conditions.append(market.in_(sorted(self.markets)))
        return conditions


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    session: Session,
    *,
    name: str,
    scopes: Iterable[str],
    sites: Iterable[str] = (),
    cmos: Iterable[str] = (),
    markets: Iterable[str] = (),
    all_data: bool = False,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the bearer token, which is never shown again."""
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in {m.value for m in Scope}]
    if unknown:
        raise InvalidKeyRequest(f"unknown scope(s) {unknown}; choose from {[m.value for m in Scope]}")
    if not wanted:
        raise InvalidKeyRequest("a key needs at least one scope")
    site_list, cmo_list = sorted(set(sites)), sorted(set(cmos))
    market_list = sorted({m.upper() for m in markets})
    if not all_data and not (site_list or cmo_list or market_list):
        raise InvalidKeyRequest("a key needs a data scope: sites, CMOs or markets, or all_data for every order")
    if all_data and (site_list or cmo_list or market_list):
        raise InvalidKeyRequest("all_data cannot be combined with sites, CMOs or markets")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        id=key_id,
        name=name,
        secret_hash=hash_secret(secret),
        scopes=wanted,
        sites=site_list,
        cmos=cmo_list,
        markets=market_list,
        all_data=all_data,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    audit_trail.record(session, "api_key.created", f"api_key:{key_id}", {"name": name, "scopes": wanted})
    return row, f"{TOKEN_PREFIX}_{key_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal of a valid, unrevoked key; None for anything else (no hint which part was wrong)."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.secret_hash, hash_secret(secret)):
        return None
    return principal_of(row)


def principal_of(row: ApiKey) -> Principal:
    return Principal(
        key_id=row.id,
        name=row.name,
        scopes=frozenset(row.scopes),
        sites=frozenset(row.sites),
        cmos=frozenset(row.cmos),
        markets=frozenset(row.markets),
        all_data=row.all_data,
    )


def revoke(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit_trail.record(session, "api_key.revoked", f"api_key:{key_id}")
    return True


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


class PrincipalCache:
    """Valid keys remembered for `ttl` seconds, so a request costs no key lookup.

    The price is that a revoked key keeps working for up to `ttl` seconds in a running server.
    Unknown or invalid tokens are never cached (a flood of random tokens cannot fill memory).
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, token: str, lookup: Callable[[str], Principal | None]) -> Principal | None:
        if self.ttl <= 0:
            return lookup(token)
        digest = hash_secret(token)
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = lookup(token)
        if principal is not None:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                    if len(self._entries) >= self.max_entries:
                        self._entries.clear()
                self._entries[digest] = (now + self.ttl, principal)
        return principal
