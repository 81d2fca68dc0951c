"""Ed25519 signatures on custody exports, so whoever holds one cannot re-make it.

The ledger's SHA-256 chain proves a document agrees with itself, and anyone can recompute it: a
holder who drops an entry (a temperature excursion) and rebuilds the chain and the events has a
document that still verifies. The entry seals (cgthub.ledger_anchor) cannot help a consumer, who
lacks the hub's HMAC key. So the hub signs each export with a private key only it holds
(`CGTHUB_CUSTODY_SIGNING_KEY`, made under var/ with mode 0600 in dev, required elsewhere) and
publishes the public key (`GET /custody/keys`, `cgthub api custody-key`) for consumers to pin.

The signature covers the whole document but its own field, in the hub's canonical JSON, together
with the algorithm and key id (`SIGNING_RULE`). Every key the hub has signed with is kept in a
public keyring (var/custody-keys.jsonl): after a rotation the old key is listed as retired, so
documents signed before still verify for a consumer who pins it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from cgthub.errors import CgthubError
from cgthub.jsontext import canonical_json
from cgthub.settings import get_settings, var_dir

SIGNATURE_FIELD = "cgthub:signature"
ALGORITHM = "Ed25519"
SIGNING_RULE = (
    "value = base64url(Ed25519 signature over canonical_json({'alg': alg, 'keyId': keyId, 'document': "
    "the document without cgthub:signature})); canonical_json = sorted keys, separators (',', ':'), "
    "UTF-8 unescaped; keyId = 'ed25519:' + first 16 hex of sha256(raw 32-byte public key)"
)
KEYRING_NAME = "custody-keys.jsonl"


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


def sign(document: dict[str, Any], private: Ed25519PrivateKey | None = None) -> dict[str, Any]:
    """`document` with its `cgthub:signature` (by the hub's key unless `private` is given)."""
    key = private or _private_key()
    kid = key_id(key.public_key())
    if private is None:
        _record(kid, public_pem(key.public_key()))
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


def _keyring_path() -> Path:
    return var_dir() / KEYRING_NAME


_recorded: set[tuple[Path, str]] = set()


def _record(kid: str, pem: str) -> None:
    """Add the key to the public keyring the first time it signs (one appended line; lines repeated
    by two processes racing are read once)."""
    path = _keyring_path()
    if (path, kid) in _recorded:
        return
    if kid not in {entry["keyId"] for entry in _keyring(path)}:
        line = json.dumps({"keyId": kid, "publicKeyPem": pem, "firstUsed": datetime.now(UTC).isoformat()}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(line)
    _recorded.add((path, kid))


def _keyring(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    seen: dict[str, dict[str, str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(entry, dict) and isinstance(entry.get("keyId"), str):
            seen.setdefault(entry["keyId"], entry)
    return list(seen.values())


def published_keys() -> list[PublishedKey]:
    """The current signing key and every retired one, newest first: what a consumer pins."""
    private = _private_key()
    current = key_id(private.public_key())
    _record(current, public_pem(private.public_key()))
    entries = _keyring(_keyring_path())
    keys = [
        PublishedKey(
            key_id=entry["keyId"],
            public_key_pem=entry["publicKeyPem"],
            first_used=entry["firstUsed"],
            status="current" if entry["keyId"] == current else "retired",
        )
        for entry in entries
    ]
    keys.sort(key=lambda k: k.first_used, reverse=True)
    keys.sort(key=lambda k: k.status != "current")  # stable: the current key first, then newest retired
    return keys
