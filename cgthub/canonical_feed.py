"""Canonical JSON feeds: partner data that arrives already in the hub's canonical form.

Some sources (a partner's integration team, a migration, the demo's synthetic partners) deliver
canonical events as JSON files in a drop folder, `var/inbox/<system>/*.json` (one event or a list);
files in the partner's own format go in a folder named after their kind, `var/inbox/<system>/<kind>/`,
and are mapped by that kind's mapping file (the SFTP-style file exchange of CMOs and CRMs).
They take the same path as everything else: raw archive first, then this mapper, then the ledger.
Processed files move to `done/`; a file that does not parse is archived and quarantined, not lost.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from cgthub import quarantine
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


def pending_files(system: str) -> list[Path]:
    return sorted(inbox(system).glob("*.json"))


def native_files(system: str) -> list[tuple[str, Path]]:
    """Partner-format files waiting in `inbox/<system>/<kind>/`: (kind, path), mapped by mappings/<system>/<kind>."""
    found: list[tuple[str, Path]] = []
    for folder in sorted(p for p in inbox(system).iterdir() if p.is_dir() and p.name != "done"):
        found.extend((folder.name, path) for path in sorted(folder.iterdir()) if path.is_file())
    return found


def mark_done(path: Path) -> None:
    done = path.parent / "done"
    done.mkdir(exist_ok=True)
    path.replace(done / path.name)
