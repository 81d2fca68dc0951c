"""The release guard: is this hub's live mapping and configuration tree the bundle in force?

`cgthub.release` builds, signs and promotes bundles; this module holds only what a caller needs to
refuse work under the wrong files: which files a bundle covers, their hashes, the bundle in force in
an environment, and `ensure_release_in_force`. It imports nothing that maps or signs, so the modules
that map (the quarantine retry in `cgthub.decisions`, the courier webhook, the MLLP listener's CLI)
call it without an import cycle (`cgthub.release` imports `cgthub.decisions` for its signatures).

Hashing every file on each check cost 5-10 ms (98 files), and finding them with pathlib's rglob
another 15-18 ms on a loaded machine. A long-running process checks often (a webhook per request,
the listener every 30 s), so the files are found with os.scandir and each file's hash is kept with
the file's stat signature (inode, size, modification and change times, nanoseconds): an unchanged
tree costs a directory walk and a stat per file. The change time cannot be set back from user space,
so an edit that restores the modification time is still seen. A file modified within a second of
being hashed is hashed again at the next check (the same "racily clean" rule git applies), so an
edit in the same clock tick as the hash is not missed.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from cgthub import alerts
from cgthub.jsontext import canonical_json
from cgthub.release_tables import ReleaseBundle, ReleasePromotion
from cgthub.settings import SettingError, get_settings
from cgthub.store import session_scope
from cgthub.tables import Alert

CONFIG_FILES = ("sites.yaml", "reason_codes.yaml")  # besides config/markets/
_RACY_NS = 1_000_000_000  # a file modified this close to its hashing is hashed again next time


class ReleaseRefused(SettingError):
    """This hub must not map: its files are not the bundle promoted to its environment.

    `environment` and `bundle` (None: nothing promoted there) say which release was expected."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        environment: str = "",
        bundle: str | None = None,
        live: str = "",
    ) -> None:
        super().__init__(message, hint)
        self.message = message
        self.environment = environment
        self.bundle = bundle
        self.live = live  # the manifest id of the live files (what they would be as a bundle)


# the files a bundle holds -------------------------------------------------------------------------


def _walk(folder: str, prefix: str, found: dict[str, Path]) -> None:
    """Every file under `folder` (symbolic links to files too; hidden entries and __pycache__ skipped),
    as `prefix/relative path`. os.scandir: a third of what pathlib's rglob cost on the 98 files."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or entry.name == "__pycache__":
                continue
            if entry.is_dir(follow_symlinks=False):
                _walk(entry.path, f"{prefix}/{entry.name}", found)
            elif entry.is_file():
                found[f"{prefix}/{entry.name}"] = Path(entry.path)


def live_files() -> dict[str, Path]:
    """Bundle path (`mappings/...`, `config/...`) -> the live file it is read from."""
    settings = get_settings()
    found: dict[str, Path] = {}
    for prefix, root in (("mappings", settings.mappings_dir), ("config/markets", settings.config_dir / "markets")):
        if root.is_dir():
            _walk(str(root), prefix, found)
    for name in CONFIG_FILES:
        path = settings.config_dir / name
        if path.is_file():
            found[f"config/{name}"] = path
    return dict(sorted(found.items()))


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_Signature = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns
_hashes: dict[str, tuple[_Signature, str]] = {}  # absolute path -> (signature when hashed, sha256)
_hashes_lock = threading.Lock()


def _cached_sha256(path: Path) -> str:
    """The file's SHA-256, from the cache while its stat signature is unchanged (see the module doc)."""
    stat = os.stat(path)
    signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    key = str(path)
    with _hashes_lock:
        known = _hashes.get(key)
    if known is not None and known[0] == signature:
        return known[1]
    hashed_at = time.time_ns()
    digest = sha256_file(path)
    if max(stat.st_mtime_ns, stat.st_ctime_ns) < hashed_at - _RACY_NS:
        with _hashes_lock:
            _hashes[key] = (signature, digest)
    return digest


def clear_cache() -> None:
    with _hashes_lock:
        _hashes.clear()


def live_manifest() -> dict[str, str]:
    """Each live file's SHA-256, by bundle path (unchanged files' hashes come from the cache)."""
    return {name: _cached_sha256(path) for name, path in live_files().items()}


def manifest_id(files: dict[str, str]) -> str:
    return hashlib.sha256(canonical_json({"files": files}).encode()).hexdigest()


@dataclass(frozen=True)
class FileDifference:
    name: str
    expected: str | None  # None: the bundle has no such file
    actual: str | None  # None: the file is missing

    def __str__(self) -> str:
        if self.actual is None:
            return f"{self.name} is missing (the bundle has it with sha256 {self.expected})"
        if self.expected is None:
            return f"{self.name} is not in the bundle (found sha256 {self.actual})"
        return f"{self.name} differs: expected sha256 {self.expected}, found {self.actual}"


def differences(expected: dict[str, str], actual: dict[str, str]) -> list[FileDifference]:
    return [
        FileDifference(name, expected.get(name), actual.get(name))
        for name in sorted(expected.keys() | actual.keys())
        if expected.get(name) != actual.get(name)
    ]


def manifest_of(bundle: ReleaseBundle) -> dict[str, str]:
    files: dict[str, str] = orjson.loads(bundle.manifest)["files"]
    return files


# the bundle in force --------------------------------------------------------------------------------


def promotions(
    session: Session, *, environment: str | None = None, bundle_id: str | None = None
) -> list[ReleasePromotion]:
    query = select(ReleasePromotion).order_by(ReleasePromotion.id)
    if environment:
        query = query.where(ReleasePromotion.environment == environment)
    if bundle_id:
        query = query.where(ReleasePromotion.bundle_id == bundle_id)
    return list(session.scalars(query))


def stack(session: Session, environment: str) -> list[str]:
    """The bundles an environment went through, the one in force last: a promotion pushes, a
    rollback pops, so rolling back twice goes two promotions back."""
    held: list[str] = []
    for row in promotions(session, environment=environment):
        if row.action == "rolled_back":
            held.pop()
        else:
            held.append(row.bundle_id)
    return held


def in_force(session: Session, environment: str) -> str | None:
    held = stack(session, environment)
    return held[-1] if held else None


# the guard ------------------------------------------------------------------------------------------


def ensure_release_in_force(database_url: str | None = None) -> str:
    """The id of the release the live files are (the bundle id they would have when not built).

    On a hub with `CGTHUB_RELEASE_ENV` set, refuse to go on unless the bundle last promoted to that
    environment is exactly what the live files are; the error names the environment, the bundle and
    each file that differs (file names and hashes only: nothing a payload carries)."""
    if not get_settings().release_env:
        return manifest_id(live_manifest())
    with session_scope(database_url, readonly=True) as session:
        return check_in_force(session)


def check_in_force(session: Session) -> str:
    """`ensure_release_in_force` reading the promotions with the caller's session (in its transaction)."""
    environment = get_settings().release_env
    live = live_manifest()
    if not environment:
        return manifest_id(live)
    current = in_force(session, environment)
    bundle = session.get(ReleaseBundle, current) if current else None
    expected = manifest_of(bundle) if bundle else None
    if bundle is None or expected is None:
        raise ReleaseRefused(
            f"CGTHUB_RELEASE_ENV={environment}: no release bundle is promoted to {environment}, "
            "so nothing may be mapped",
            f"build, approve and promote one: cgthub release build, approve, promote --env {environment}",
            environment=environment,
            live=manifest_id(live),
        )
    found = differences(expected, live)
    if found:
        more = f" (and {len(found) - 1} more file(s))" if len(found) > 1 else ""
        raise ReleaseRefused(
            f"the live files are not release bundle {bundle.id[:12]} in force in {environment}: {found[0]}{more}",
            f"put the file back (cgthub release rollback or promote --env {environment} reinstalls a bundle), "
            "or build, approve and promote a new bundle with the change",
            environment=environment,
            bundle=bundle.id,
            live=manifest_id(live),
        )
    return bundle.id


def alert_not_in_force(session: Session, refused: ReleaseRefused, *, where: str) -> Alert:
    """A critical alert that `where` (a service) holds work back because the release is not in force;
    one per environment, bundle and state of the live files, so a new drift opens a new one."""
    return alerts.raise_alert(
        session,
        kind="release_not_in_force",
        severity=alerts.Severity.CRITICAL,
        message=f"{where} is not applying: {refused.message}",
        dedupe_key=f"release_not_in_force:{refused.environment}:{refused.bundle}:{refused.live}:{where}"[:200],
        details={"environment": refused.environment, "bundle": refused.bundle, "live": refused.live, "where": where},
    )
