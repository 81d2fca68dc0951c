"""Canonical JSON feeds: partner data that arrives already in the hub's canonical form.

Some sources (a partner's integration team, a migration, the demo's synthetic partners) deliver
canonical events as JSON files in a drop folder, `var/inbox/<system>/*.json` (one event or a list);
files in the partner's own format go in a folder named after their kind, `var/inbox/<system>/<kind>/`,
and are mapped by that kind's mapping file (the SFTP-style file exchange of CMOs and CRMs).
They take the same path as everything else: raw archive first, then this mapper, then the ledger.
Processed files move to `done/`; a file that does not parse is archived and quarantined, not lost.
Which files are ready, how each is read and when it may move are cgthub.drop_folder's rules.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from cgthub import drop_folder, quarantine
from cgthub.errors import PayloadRejected
from cgthub.model import CanonicalEvent, Provenance
from cgthub.settings import var_dir

KIND = "canonical+json"


class CanonicalJsonMapper:
    """Maps a canonical JSON payload (one event or a list) to events, stamping their provenance."""

    mapping_id = "canonical/json"
    version = "1"

    def map(self, payload: bytes, *, raw_id: int, checksum: str, received_at: datetime) -> list[CanonicalEvent]:
        try:
            data = json.loads(payload)
        except json.JSONDecodeError as error:
            raise PayloadRejected(quarantine.Stage.PARSE, f"not JSON: {error.msg} at byte {error.pos}") from None
        except UnicodeDecodeError as error:
            raise PayloadRejected(quarantine.Stage.PARSE, f"not JSON: not UTF-8 text at byte {error.start}") from None
        items = data if isinstance(data, list) else [data]
        events: list[CanonicalEvent] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise PayloadRejected(quarantine.Stage.PARSE, f"item {index} is not a JSON object")
            item = {**item, "received_at": item.get("received_at") or received_at.isoformat()}
            item["provenance"] = Provenance(
                mapping_id=self.mapping_id, mapping_version=self.version, raw_id=raw_id, raw_checksum=checksum
            ).model_dump()
            try:
                events.append(CanonicalEvent.model_validate(item))
            except ValidationError as error:
                # pydantic's messages name fields and rules; input values are left out (they may be PHI)
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
                raise PayloadRejected(quarantine.Stage.VALIDATE, f"item {index}: {problems}") from None
        return events


def inbox(system: str) -> Path:
    path = var_dir() / "inbox" / system
    path.mkdir(parents=True, exist_ok=True)
    return path


def _canonical(system: str) -> drop_folder.Scan:
    return drop_folder.scan(sorted(inbox(system).iterdir()), wanted=lambda path: path.suffix == ".json")


def pending_files(system: str) -> list[Path]:
    """Canonical JSON files ready in `inbox/<system>/` (cgthub.drop_folder says which are)."""
    return _canonical(system).ready


def waiting(system: str) -> tuple[list[tuple[str, Path]], list[str]]:
    """Every file ready in the system's inbox, (kind, path), canonical JSON first; and a line for
    each entry left alone or set aside, saying why (cgthub.drop_folder)."""
    canonical = _canonical(system)
    native, skipped = native_files(system)
    return [(KIND, path) for path in canonical.ready] + native, canonical.skipped + skipped


def native_files(system: str) -> tuple[list[tuple[str, Path]], list[str]]:
    """Partner-format files ready in `inbox/<system>/<kind>/`: (kind, path), mapped by mappings/<system>/<kind>;
    and a line for each entry left alone. A kind folder is a real directory, never a link to one."""
    found: list[tuple[str, Path]] = []
    skipped: list[str] = []
    for folder in sorted(inbox(system).iterdir()):
        if folder.name in drop_folder.RECEIPT_FOLDERS or folder.is_symlink() or not folder.is_dir():
            continue  # a link is never followed, even to a folder
        listed = drop_folder.scan(sorted(folder.iterdir()))
        found.extend((folder.name, path) for path in listed.ready)
        skipped.extend(f"{folder.name}/{line}" for line in listed.skipped)
    return found, skipped


def mark_done(drop: drop_folder.Drop) -> str | None:
    """Move a read file to done/ beside it, unless it changed since: None, or why it stays."""
    return drop_folder.release(drop, "done")
