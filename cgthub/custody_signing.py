"""Ed25519 signatures on custody exports, so whoever holds one cannot re-make it.

The ledger's SHA-256 chain proves a document agrees with itself, and anyone can recompute it: a
holder who drops an entry (a temperature excursion) and rebuilds the chain and the events has a
document that still verifies. The entry seals (cgthub.ledger_anchor) cannot help a consumer, who
lacks the hub's HMAC key. So the hub signs each export with a private key only it holds
(`CGTHUB_CUSTODY_SIGNING_KEY`, made under var/ with mode 0600 in dev, required elsewhere) and
publishes the public key (`GET /custody/keys`, `cgthub api custody-key`) for consumers to pin.

The signature covers the whole document but its own field, in the hub's canonical JSON, together
with the algorithm and key id (`SIGNING_RULE`). Every key the hub has signed with is kept in a
public keyring, the table custody_signing_keys of the hub's database, so every API replica
publishes every key any of them signed with and a restart with an empty var/ forgets none: after
a rotation the old key is listed as retired, so documents signed before still verify for a
consumer who pins it. The keyring was a file under var/ before (custody-keys.jsonl): it is
imported at first use (`import_legacy_keyring`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from sqlalchemy import select

from cgthub import store
from cgthub.errors import CgthubError
from cgthub.jsontext import canonical_json
from cgthub.settings import MissingSetting, get_settings, var_dir
from cgthub.store import insert_ignoring_conflicts, session_scope
from cgthub.tables import CustodySigningKey

SIGNATURE_FIELD = "cgthub:signature"
ALGORITHM = "Ed25519"
SIGNING_RULE = (
    "value = base64url(Ed25519 signature over canonical_json({'alg': alg, 'keyId': keyId, 'document': "
    "the document without cgthub:signature})); canonical_json = sorted keys, separators (',', ':'), "
    "UTF-8 unescaped; keyId = 'ed25519:' + first 16 hex of sha256(raw 32-byte public key)"
)
KEY_VARIABLE = "CGTHUB_CUSTODY_SIGNING_KEY"
LEGACY_KEYRING_NAME = "custody-keys.jsonl"  # the keyring before the database kept it: imported once
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedKey:
    """One key a consumer may pin: its id, PEM, since when the hub signs with it, and whether it still does."""

    key_id: str
    public_key_pem: str
    first_used: str
    status: str  # "current" or "retired"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def _private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(get_settings().custody_signing_key)


def _signed_bytes(document: dict[str, Any], kid: str) -> bytes:
    body = {name: value for name, value in document.items() if name != SIGNATURE_FIELD}
    return canonical_json({"alg": ALGORITHM, "keyId": kid, "document": body}).encode()


def sign(
    document: dict[str, Any], private: Ed25519PrivateKey | None = None, *, database_url: str | None = None
) -> dict[str, Any]:
    """`document` with its `cgthub:signature` (by the hub's key, recorded in the keyring of the
    database at `database_url`, unless `private` is given)."""
    key = private or _private_key()
    kid = key_id(key.public_key())
    if private is None:
        _record(database_url, kid, public_pem(key.public_key()))
    value = base64.urlsafe_b64encode(key.sign(_signed_bytes(document, kid))).decode()
    return document | {SIGNATURE_FIELD: {"alg": ALGORITHM, "keyId": kid, "rule": SIGNING_RULE, "value": value}}


class NotAPublicKey(CgthubError, ValueError):
    """The file given as the pinned key holds no Ed25519 public key in PEM."""


def load_public_keys(pem_text: str) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in `pem_text` (one or more PEM blocks: pin the current and a retired key)."""
    marker = "-----BEGIN PUBLIC KEY-----"
    blocks = [marker + part for part in pem_text.split(marker)[1:]]
    keys: list[Ed25519PublicKey] = []
    for block in blocks:
        try:
            loaded = load_pem_public_key(block.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise NotAPublicKey(f"a PEM block is not a public key ({type(exc).__name__})") from None
        if not isinstance(loaded, Ed25519PublicKey):
            raise NotAPublicKey(f"a PEM block holds a {type(loaded).__name__}, not an Ed25519 public key")
        keys.append(loaded)
    if not keys:
        raise NotAPublicKey("no '-----BEGIN PUBLIC KEY-----' block")
    return keys


def signature_problems(document: dict[str, Any], pinned: list[Ed25519PublicKey]) -> list[str]:
    """Why the document's signature does not prove it came from the hub under a pinned key; empty when it does.

    The key is looked up among the pinned ones by the id the document names; a document carrying a
    key of its own, or naming a key that was not pinned, is refused: only the pin decides trust.
    """
    signature = document.get(SIGNATURE_FIELD)
    if not isinstance(signature, dict):
        return ["the document carries no cgthub:signature: it cannot be told apart from one its holder made"]
    if signature.get("alg") != ALGORITHM:
        return [f"the signature's algorithm is {str(signature.get('alg'))[:20]!r}, not {ALGORITHM}"]
    kid = signature.get("keyId")
    by_id = {key_id(key): key for key in pinned}
    key = by_id.get(kid) if isinstance(kid, str) else None
    if key is None or not isinstance(kid, str):
        pinned_ids = ", ".join(sorted(by_id))
        return [f"the document is signed with key {str(kid)[:40]!r}, not a pinned key ({pinned_ids})"]
    try:
        raw = base64.urlsafe_b64decode(str(signature.get("value")).encode())
        key.verify(raw, _signed_bytes(document, kid))
    except (InvalidSignature, binascii.Error, ValueError):
        return [f"the signature does not verify under pinned key {kid}: the document was changed after signing"]
    return []


def _legacy_keyring_path() -> Path:
    return var_dir() / LEGACY_KEYRING_NAME


_recorded: set[tuple[str, str]] = set()
_imported: set[tuple[str, Path]] = set()


def _record(database_url: str | None, kid: str, pem: str) -> None:
    """Add the key to the keyring the first time this process signs with it (later calls cost nothing)."""
    url = store.database_url(database_url)
    if (url, kid) in _recorded:
        return
    import_legacy_keyring(url)
    with session_scope(url) as session:
        session.execute(
            insert_ignoring_conflicts(session, CustodySigningKey),
            [{"key_id": kid, "public_key_pem": pem, "first_used": _now()}],
        )
    _recorded.add((url, kid))


def _now() -> datetime:
    return datetime.now(UTC)


def import_legacy_keyring(database_url: str | None = None) -> int:
    """Copy var/custody-keys.jsonl, the keyring before it moved into the database, into the table,
    keeping each key's first use, then rename it custody-keys.jsonl.imported; the number of keys read.

    Run once a process, at its first use of the keyring: each host's file is merged (a key already
    in the table keeps its row). A line whose PEM is not the key its id names is left out, logged.
    """
    url = store.database_url(database_url)
    path = _legacy_keyring_path()
    if (url, path) in _imported:
        return 0
    rows, refused = _legacy_rows(path)
    if refused:
        log.warning("%s: %d line(s) not imported (not a key its id names, or unreadable)", path, refused)
    if rows:
        with session_scope(url) as session:
            session.execute(insert_ignoring_conflicts(session, CustodySigningKey), rows)
        try:
            path.rename(path.with_name(path.name + ".imported"))
        except FileNotFoundError:
            pass  # another process on this host imported it at the same time
        except OSError as exc:  # a read-only var/: read again by the next process, harmlessly
            log.warning("%s imported but not renamed (%s)", path, exc.strerror)
        log.info("imported %d custody signing key(s) from %s into the database", len(rows), path)
    _imported.add((url, path))
    return len(rows)


def _legacy_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return [], 0
    rows: dict[str, dict[str, Any]] = {}
    refused = 0
    for line in filter(str.strip, lines):
        row = _legacy_row(line)
        if row is None:
            refused += 1
        else:
            rows.setdefault(row["key_id"], row)  # lines repeated by processes racing: the first
    return list(rows.values()), refused


def _legacy_row(line: str) -> dict[str, Any] | None:
    """One line of the old file as a row, or None for a line cut short or whose key is not its id."""
    try:
        entry = json.loads(line)
        kid, pem = entry["keyId"], entry["publicKeyPem"]
        (public,) = load_public_keys(pem)
        first_used = datetime.fromisoformat(entry["firstUsed"])
    except (ValueError, TypeError, KeyError, NotAPublicKey):
        return None
    if key_id(public) != kid:
        return None
    at = first_used if first_used.tzinfo else first_used.replace(tzinfo=UTC)
    return {"key_id": kid, "public_key_pem": public_pem(public), "first_used": at}


def published_keys(database_url: str | None = None) -> list[PublishedKey]:
    """The current signing key and every retired one, newest first: what a consumer pins. Current is
    this process's key; every other key any replica has signed with is retired."""
    public = _private_key().public_key()
    current = key_id(public)
    _record(database_url, current, public_pem(public))
    rows = _keyring(database_url)
    if current not in {row.key_id for row in rows}:  # recorded by this process, then the table emptied
        _recorded.discard((store.database_url(database_url), current))
        _record(database_url, current, public_pem(public))
        rows = _keyring(database_url)
    keys = [
        PublishedKey(
            key_id=row.key_id,
            public_key_pem=row.public_key_pem,
            first_used=row.first_used.isoformat(),
            status="current" if row.key_id == current else "retired",
        )
        for row in sorted(rows, key=lambda r: r.first_used, reverse=True)
    ]
    keys.sort(key=lambda k: k.status != "current")  # stable: the current key first, then newest retired
    return keys


def _keyring(database_url: str | None) -> list[CustodySigningKey]:
    with session_scope(database_url, readonly=True) as session:
        return list(session.scalars(select(CustodySigningKey)))


def signing_key_state() -> dict[str, str]:
    """The signing key as `/health/ready` reports it: `ok` with its key id, or `missing` with why
    (outside dev, CGTHUB_CUSTODY_SIGNING_KEY unset: exports cannot be signed). Never the key.

    A key that is set but malformed raises InvalidSetting (naming the variable, not its value): the
    API checks this at start and does not start with it.
    """
    try:
        public = _private_key().public_key()
    except MissingSetting:
        return {"status": "missing", "problem": f"{KEY_VARIABLE} is not set: custody exports cannot be signed"}
    return {"status": "ok", "key_id": key_id(public)}
