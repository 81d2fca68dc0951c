"""File-drop ingest: files of one HL7 message or HL7 batch files (FHS/BHS ... BTS/FTS), with
\\r, \\n or \\r\\n between segments, ingested in batches; each file then moves to done/ (even if
some of its messages were quarantined: they are archived) or to failed/ when it holds no message."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cgthub.hl7 import inbound
from cgthub.hl7.ack import ack_code
from cgthub.store import session_scope

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
    errors: int = 0
    rejected: int = 0
    failed_files: list[str] = field(default_factory=list)


def _chunks(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ingest_paths(
    paths: list[Path],
    *,
    database_url: str | None = None,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
) -> FileReport:
    report = FileReport()
    for path in paths:
        data = path.read_bytes()
        messages = split_messages(data)
        report.files += 1
        if not messages or not any(m.startswith(b"MSH") for m in messages):
            messages = [data]  # archive and quarantine what is there
        codes: list[str] = []
        for chunk in _chunks(messages, batch):
            with session_scope(database_url) as session:
                acks = inbound.apply(session, [inbound.read(m) for m in chunk], "file")
            codes.extend(ack_code(a) for a in acks)
            if progress:
                progress(len(chunk))
        report.messages += len(codes)
        report.accepted += codes.count("AA")
        report.errors += codes.count("AE")
        report.rejected += codes.count("AR")
        failed = codes.count("AR") == len(codes)
        target = path.parent / ("failed" if failed else "done")
        target.mkdir(exist_ok=True)
        path.replace(target / path.name)
        if failed:
            report.failed_files.append(path.name)
    return report
