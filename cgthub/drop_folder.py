"""Drop folders as senders really fill them: which files are ready, how one is read, when it may go.

Shared by the three readers of partner files (`cgthub hl7 ingest`, the canonical and partner-format
inbox folders, the CMO batch drop) so each meets careless and hostile writers the same way:
- a file younger than CGTHUB_DROP_MIN_AGE_SECONDS, or named as a temporary (`.tmp`, `.part`, `~`,
  hidden), may still be written: left for the next run;
- a symlink, FIFO, socket, device or directory is never opened or followed (lstat, then O_NOFOLLOW
  and O_NONBLOCK on the open): reported and left where it is;
- a file over CGTHUB_DROP_MAX_FILE_BYTES is not read: moved to failed/ beside it, nothing deleted;
- after reading, before its file is deleted or moved, a drop is checked unchanged (same inode, size
  and modification time as the open file had): one still growing is left for the next run, where
  what was archived from it is a duplicate.
Report lines name the file and the rule, never its content.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cgthub.settings import get_settings

_TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")
MIN_AGE_VARIABLE = "CGTHUB_DROP_MIN_AGE_SECONDS"
MAX_BYTES_VARIABLE = "CGTHUB_DROP_MAX_FILE_BYTES"
# Folders the readers themselves fill beside the drops (moved files, receipts): never drops.
RECEIPT_FOLDERS = frozenset({"done", "failed"})


@dataclass
class Scan:
    """A folder's files ready to read, and a line for each entry left alone (and why)."""

    ready: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Drop:
    """A file read whole through one descriptor, with what fstat said of it when opened."""

    path: Path
    data: bytes
    opened: os.stat_result

    def change(self) -> str | None:
        """Why the file may not be released now (another writer or run touched it), or None."""
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return f"{self.path.name}: gone before it was released (another run took it)"
        same = (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (
            self.opened.st_dev,
            self.opened.st_ino,
            self.opened.st_size,
            self.opened.st_mtime_ns,
        )
        if same and len(self.data) == self.opened.st_size:
            return None
        return f"{self.path.name}: changed while it was read (still being written?): left for the next run"


def is_temporary(name: str) -> bool:
    return name.startswith(".") or name.endswith(_TEMPORARY_SUFFIXES)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _too_big(path: Path, size: int, cap: int) -> str:
    where = _set_aside(path, "failed")
    return f"{path.name}: {size} bytes, over {MAX_BYTES_VARIABLE}={cap}: not read, {where}"


def _move(path: Path, into: str) -> None:
    """`path` into the folder `into`/ beside it (made owner-only if missing)."""
    target = path.parent / into
    target.mkdir(mode=0o700, exist_ok=True)
    os.rename(path, target / path.name)  # rename moves the entry itself, never what a link names


def _set_aside(path: Path, into: str) -> str:
    try:
        _move(path, into)
    except OSError as error:
        return f"left where it is (could not move it to {into}/: {error.strerror})"
    return f"moved to {into}/"


def scan(
    entries: Iterable[Path],
    *,
    wanted: Callable[[Path], bool] = lambda _path: True,
    named: bool = False,
) -> Scan:
    """Which of `entries` (a folder's children, or paths an operator `named`) are ready to read.

    Names are filtered (`wanted`, temporaries) only for a folder's children: a file an operator
    names is meant. Age and kind are checked for both, from lstat: nothing is opened or moved (the
    size is checked by `read`, on the open file)."""
    settings = get_settings()
    result = Scan()
    now = time.time()
    for path in entries:
        if not named and (is_temporary(path.name) or not wanted(path)):
            continue
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue  # taken meanwhile by another run
        if not named and stat.S_ISDIR(info.st_mode) and path.name in RECEIPT_FOLDERS:
            continue
        if not stat.S_ISREG(info.st_mode):
            result.skipped.append(f"{path.name}: {_kind(info.st_mode)}, not a regular file: left alone")
            continue
        age = now - info.st_mtime
        if age < settings.drop_min_age_seconds:
            result.skipped.append(
                f"{path.name}: written {max(age, 0):.0f} s ago, younger than "
                f"{MIN_AGE_VARIABLE}={settings.drop_min_age_seconds:g}: left for the next run"
            )
            continue
        result.ready.append(path)
    return result


def read(path: Path) -> Drop | str:
    """The file read whole, or a report line saying why not (it is then left alone or set aside).

    Opened without following a link and without blocking (a FIFO swapped in after the scan), and
    checked again on the descriptor: the kind and size the scan saw may have changed since."""
    cap = get_settings().drop_max_file_bytes
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{path.name}: gone before it was read (another run took it)"
    except OSError as error:  # ELOOP: a symlink swapped in after the scan
        return f"{path.name}: not opened ({error.strerror}): left alone"
    with os.fdopen(fd, "rb", buffering=0) as handle:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            return f"{path.name}: {_kind(opened.st_mode)}, not a regular file: left alone"
        if opened.st_size > cap:
            return _too_big(path, opened.st_size, cap)
        chunks: list[bytes] = []
        size = 0
        while chunk := handle.read(1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                return _too_big(path, size, cap)
    return Drop(path, b"".join(chunks), opened)


def release(drop: Drop, into: str) -> str | None:
    """Move a read drop to `into`/ beside it, unless it changed since it was read: None, or why not."""
    changed = drop.change()
    if changed:
        return changed
    try:
        _move(drop.path, into)
    except FileNotFoundError:
        return f"{drop.path.name}: gone before it was released (another run took it)"
    return None
