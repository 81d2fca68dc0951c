"""File-drop ingest: files of one HL7 message or HL7 batch files (FHS/BHS ... BTS/FTS), with
\\r, \\n or \\r\\n between segments, ingested in batches.

Once every message of a file is in the encrypted archive (quarantined ones too), the clear-text
file is deleted and only a receipt stays, in done/ (or failed/ when no message could be used):
its SHA-256, size and outcome counts, no content. A file with a message the archive could not
store stays where it was, to be ingested again (what was stored is then a duplicate)."""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from cgthub.errors import Rejection
from cgthub.hl7 import inbound
from cgthub.store import session_scope
from cgthub.tables import utcnow

_SEGMENT_BREAK = re.compile(rb"\r\n|\n|\r")
_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")


def split_messages(data: bytes) -> list[bytes]:
    """Messages in a file: segments normalized to \\r, batch envelope segments dropped, split at MSH."""
    messages: list[list[bytes]] = []
    for segment in _SEGMENT_BREAK.split(data.strip(b"\x0b\x1c\r\n ")):
        if not segment.strip() or segment[:3] in _BATCH_SEGMENTS:
            continue
        if segment.startswith(b"MSH") or not messages:
            messages.append([])
        messages[-1].append(segment)
    return [b"\r".join(segments) + b"\r" for segments in messages]


@dataclass
class FileReport:
    files: int = 0
    messages: int = 0
    accepted: int = 0
    errors: int = 0  # quarantined (AE): archived, held until someone acts
    rejected: int = 0  # rejected (AR): archived, but never applied as sent
    rejections: Counter[Rejection] = field(default_factory=Counter)  # why each AE or AR was answered
    failed_files: list[str] = field(default_factory=list)
    failed_reasons: Counter[Rejection] = field(default_factory=Counter)  # of the failed files' messages
    kept_files: list[str] = field(default_factory=list)  # some message not stored: left to ingest again


# Folders the ingest itself writes (receipts) and files that are not drops: never ingested.
_RECEIPT_FOLDERS = frozenset({"done", "failed"})


def files_in(paths: list[Path], *, recursive: bool = False) -> list[Path]:
    """The files to ingest: each file named, and every file in each folder named (its subfolders
    too when `recursive`), in name order; receipts (done/, failed/) and hidden files are skipped."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        for child in sorted(path.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir():
                if recursive and child.name not in _RECEIPT_FOLDERS:
                    found.extend(files_in([child], recursive=True))
            elif child.is_file():
                found.append(child)
    return found


def _chunks(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ingest_paths(
    paths: list[Path],
    *,
    database_url: str | None = None,
    batch: int = 500,
    progress: Callable[[FileReport], None] | None = None,
) -> FileReport:
    """Ingest each file; `progress` is handed the running report after every batch."""
    report = FileReport()
    for path in paths:
        data = path.read_bytes()
        messages = split_messages(data)
        report.files += 1
        if not messages or not any(m.startswith(b"MSH") for m in messages):
            messages = [data]  # archive and quarantine what is there
        codes: list[str] = []
        rejections: Counter[Rejection] = Counter()
        for chunk in _chunks(messages, batch):
            with session_scope(database_url) as session:
                answers = inbound.apply_answers(session, [inbound.read(m) for m in chunk], "file")
            codes.extend(a.code for a in answers)
            rejections.update(a.rejection for a in answers if a.rejection is not None)
            report.messages += len(answers)
            if progress:
                progress(report)
        report.accepted += codes.count("AA")
        report.errors += codes.count("AE")
        report.rejected += codes.count("AR")
        report.rejections.update(rejections)
        if rejections[Rejection.NOT_STORED]:
            report.kept_files.append(path.name)
            continue
        failed = codes.count("AR") == len(codes)
        _leave_receipt(path, path.parent / ("failed" if failed else "done"), data, codes)
        if failed:
            report.failed_files.append(path.name)
            report.failed_reasons.update(rejections)
    return report


def _leave_receipt(path: Path, target: Path, data: bytes, codes: list[str]) -> None:
    """Replace the clear-text file by a receipt naming what it held, never its content.

    The receipt is written (and synced) before the file goes: a crash between the two leaves the
    file to be ingested again, its messages then duplicates."""
    target.mkdir(mode=0o700, exist_ok=True)
    receipt = {
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "messages": len(codes),
        "acks": {code: codes.count(code) for code in sorted(set(codes))},
        "ingested_at": utcnow().isoformat(),
        "content": "in the hub's encrypted raw archive (quarantined messages too); this file was deleted",
    }
    receipt_path = target / f"{path.name}.receipt.json"
    temporary = receipt_path.with_name(receipt_path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(orjson.dumps(receipt, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(receipt_path)
    path.unlink()
