"""File-drop ingest: files of one HL7 message or HL7 batch files (FHS/BHS ... BTS/FTS), with
\\r, \\n or \\r\\n between segments, ingested in batches.

Once every message of a file is in the encrypted archive (quarantined ones too), the clear-text
file is deleted and only a receipt stays, in done/ (or failed/ when no message could be used):
its SHA-256, size and outcome counts, no content. A file with a message the archive could not
store stays where it was, to be ingested again (what was stored is then a duplicate), and so does
one that changed while it was read; which files are ready and how each is read are
cgthub.drop_folder's rules."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from cgthub import drop_folder
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
    skipped: list[str] = field(default_factory=list)  # files not read, set aside or left: a line each, why


def files_in(paths: list[Path], *, recursive: bool = False) -> drop_folder.Scan:
    """The files to ingest: each file named, and every file in each folder named (its subfolders
    too when `recursive`), in name order; receipts (done/, failed/), temporaries and hidden files are
    skipped, and what is not ready (cgthub.drop_folder: too young, not a regular file, too big) is
    left with a line saying why."""
    found = drop_folder.Scan()
    named: list[Path] = []
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            _folder(path, recursive, found)
        else:
            named.append(path)
    listed = drop_folder.scan(named, named=True)
    found.ready[:0] = listed.ready
    found.skipped[:0] = listed.skipped
    return found


def _folder(folder: Path, recursive: bool, found: drop_folder.Scan) -> None:
    children = sorted(folder.iterdir())
    # lstat: a symlink to a folder is not a subfolder (drop_folder.scan reports it)
    subfolders = [c for c in children if _is_folder(c) and not drop_folder.is_temporary(c.name)]
    listed = drop_folder.scan([c for c in children if c not in subfolders or not recursive])
    found.ready.extend(listed.ready)
    found.skipped.extend(listed.skipped)
    if recursive:
        for child in subfolders:
            if child.name not in drop_folder.RECEIPT_FOLDERS:
                _folder(child, True, found)


def _is_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


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
        drop = drop_folder.read(path)
        if isinstance(drop, str):
            report.skipped.append(drop)
            continue
        data = drop.data
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
        changed = drop.change()
        if changed:  # the sender still writes it: what was archived is a duplicate next time
            report.skipped.append(changed)
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
    path.unlink(missing_ok=True)  # another run at once may have taken it: its messages were deduped
