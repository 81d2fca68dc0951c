"""What a partner is, declared once by the package that speaks its protocol, and how the hub finds it.

Each `<package>.<partner>/__init__.py` (default package: `connectors`) sets `PARTNER` (or
`PARTNERS`, a tuple) to a `Partner`: its name, its Airflow connection, the streams it pulls, the
order changes it is told about, how its own records are read for reconciliation, its sandbox.
Sync, outbound, reconciliation, the DAG files, `make up` and the sandbox world all read
`registry()`, so adding a partner is one folder plus one mapping directory.

The hub's core never imports a connector by name: the packages are found through importlib from
`CGTHUB_PARTNER_PACKAGES` (comma list), and functions may be given as `"module:attribute"` text so
a DAG file can list partners without importing zeep or requests.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cgthub.errors import CgthubError
from cgthub.settings import get_settings

if TYPE_CHECKING:  # the registry is read when DAG files are parsed: it stays light
    from cgthub.archive import Inbound

PACKAGES_ENV = "CGTHUB_PARTNER_PACKAGES"
DEFAULT_PACKAGES = ("connectors",)

# A function, or where to find it ("module:attribute"), resolved on first use.
FunctionRef = Callable[..., Any] | str


class PartnerUnavailable(CgthubError, RuntimeError):
    """A partner could not be read this time (outage, refusal, broken answer); the next run retries.

    Connectors raise subclasses of it; the sync records the message and keeps what was committed.
    """


@dataclass(frozen=True)
class Mark:
    """Where a stream's last committed page left it: a time watermark, a sequence cursor, or neither."""

    watermark: datetime | None = None
    cursor: str | None = None


@dataclass
class Page:
    """One answer from a partner, ready for the archive, and where its stream stands once it is in.

    `problem`: the answer was not what was asked for (archived and counted as an error).
    `refused`: the partner answered with an error document; it is archived and quarantined with this text.
    `after_commit`: what to do once the page's transaction committed (move a dropped file to done/).
    """

    items: list[Inbound]
    records: int = 0
    watermark: datetime | None = None
    cursor: str | None = None
    problem: str | None = None
    refused: str | None = None
    after_commit: Callable[[], None] | None = None


@dataclass(frozen=True)
class Pull:
    """One stream a partner is read from: `fetch(mark)` yields pages after the stream's mark."""

    stream: str
    fetch: FunctionRef


@dataclass(frozen=True)
class Push:
    """Which order changes a partner is told about (statuses; None: every change) and how."""

    deliver: FunctionRef
    statuses: frozenset[str] | None = None


@dataclass(frozen=True)
class Sandbox:
    """The partner's stand-in for development: a module with `create_app()` (HTTP) or `serve(host, port)`."""

    service: str
    module: str
    port: int
    connection_uri: str  # the connection's URI for a sandbox at {host}:{port}
    scheme: str = "http"


@dataclass(frozen=True)
class Partner:
    name: str
    describes: str
    connection_id: str | None = None
    pulls: tuple[Pull, ...] = ()
    push: Push | None = None
    snapshot: FunctionRef | None = None  # the partner's current records, for reconciliation
    sandbox: Sandbox | None = None
    schedule: timedelta | str = timedelta(minutes=10)
    deadline: timedelta = timedelta(minutes=15)
    archive_system: str = ""  # the source system its drop-folder files are archived under; default: name
    inbox: FunctionRef | None = None  # the folder the partner drops its files in, for the demo's partners
    receiver: FunctionRef | None = None  # app factory for what the partner sends us: create_app(secret=, database_url=)
    # manufacturing capacity and slot reservations: a cgthub.slots.SlotProvider factory
    slots: FunctionRef | None = None

    @property
    def system(self) -> str:
        return self.archive_system or self.name


def resolve(ref: FunctionRef) -> Callable[..., Any]:
    """The function a declaration names."""
    if callable(ref):
        return ref
    module, _, attribute = ref.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), attribute)
    return found


def origin(ref: FunctionRef) -> str:
    """The module a declared function lives in, for operators reading a summary."""
    return ref.partition(":")[0] if isinstance(ref, str) else str(getattr(ref, "__module__", ref))


def packages() -> tuple[str, ...]:
    chosen = get_settings().partner_packages
    if chosen is None:
        return DEFAULT_PACKAGES
    return tuple(name.strip() for name in chosen.split(",") if name.strip())


def registry() -> dict[str, Partner]:
    """Every declared partner by name, from the configured packages (in their order, then by folder)."""
    return dict(_discover(packages()))


@cache
def _discover(names: tuple[str, ...]) -> tuple[tuple[str, Partner], ...]:
    found: dict[str, Partner] = {}
    for package_name in names:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError as missing:
            if missing.name and package_name.startswith(missing.name):
                continue  # a build without that package: its partners are simply not there
            raise
        for module in sorted(pkgutil.iter_modules(getattr(package, "__path__", [])), key=lambda m: m.name):
            if not module.ispkg:
                continue
            declared = importlib.import_module(f"{package_name}.{module.name}")
            for partner in _declared(declared):
                if partner.name in found:
                    raise ValueError(f"partner {partner.name!r} is declared twice ({declared.__name__})")
                found[partner.name] = partner
    return tuple(found.items())


def _declared(module: Any) -> Iterator[Partner]:
    one = getattr(module, "PARTNER", None)
    many: Iterable[Partner] = getattr(module, "PARTNERS", ())
    if isinstance(one, Partner):
        yield one
    yield from (p for p in many if isinstance(p, Partner))


def refresh() -> None:
    """Forget what was discovered (after the package list or a package changed)."""
    _discover.cache_clear()


def get(name: str) -> Partner:
    try:
        return registry()[name]
    except KeyError:
        raise LookupError(f"no partner {name!r} is declared in {', '.join(packages())}") from None


def pulled() -> dict[str, Partner]:
    return {name: p for name, p in registry().items() if p.pulls}


def pushed() -> dict[str, Partner]:
    return {name: p for name, p in registry().items() if p.push is not None}


def sandboxes() -> dict[str, Sandbox]:
    """Every sandbox by its service name, in port order."""
    boxes = [p.sandbox for p in registry().values() if p.sandbox is not None]
    return {box.service: box for box in sorted(boxes, key=lambda box: box.port)}


def inbox(name: str) -> Path:
    """The folder a partner drops its files in (for the demo's partners to drop theirs)."""
    declared = get(name).inbox
    if declared is None:
        raise LookupError(f"partner {name!r} declares no drop folder")
    return Path(resolve(declared)())


def sandbox_world() -> Any:
    """The first configured package's `sandboxes` module (its `SandboxPartners`, ports and connections)."""
    for package_name in packages():
        try:
            return importlib.import_module(f"{package_name}.sandboxes")
        except ModuleNotFoundError as missing:
            if missing.name and f"{package_name}.sandboxes".startswith(missing.name):
                continue
            raise
    raise LookupError(f"none of {', '.join(packages())} has a sandbox world")
