"""Keep a running MLLP listener to the release in force: re-checked every 30 s, not only at start.

`cgthub hl7 listen` (applying) refuses to start unless the live files are the bundle promoted to
`CGTHUB_RELEASE_ENV`. Files can drift while it runs, so this watch re-runs the guard every
`every` seconds (a stat walk and one query while nothing changed: `cgthub.release_guard` keeps each
file's hash with its stat signature) and, on a drift:

- switches the listener to archive-only (its `apply` flag, read at each group commit): every
  message is still archived and ACKed AA once committed, as the production `mllp-listener` service
  does all the time, and nothing is mapped with files nobody approved. The HL7 inbox DAG applies
  what waits (status `received`) once the release is in force again, since it checks the same guard;
- logs the reason (environment, bundle, first file that differs; no message content) and raises a
  critical `release_not_in_force` alert;
- reports it on the listener's /health (`release`), still ready: it accepts and archives.

When the files are the bundle in force again, the listener applies again. Answering AE ("not
applied") instead was rejected: a hospital interface engine treats AE as an error to resend or to
park its queue on, for a message the hub has in fact stored and will apply, so the AE would cause
resends and manual work on the sending side for a condition that is the hub's to fix.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Protocol

from cgthub import release_guard
from cgthub.store import session_scope

log = logging.getLogger(__name__)

EVERY = 30.0  # seconds between two checks of a running listener


class Switchable(Protocol):
    apply: bool

    def health(self) -> tuple[bool, dict[str, object]]: ...


class ReleaseWatch:
    """Re-checks the release for a listener started applying; see the module's doc."""

    def __init__(self, listener: Switchable, *, database_url: str | None = None, every: float = EVERY) -> None:
        self.listener = listener
        self.database_url = database_url
        self.every = every
        self.bundle: str | None = None  # the bundle in force at the last check, while it held
        self.refused: release_guard.ReleaseRefused | None = None
        self.checked_at: datetime | None = None
        self.checks = 0

    def check(self) -> bool:
        """Run the guard once and switch the listener accordingly; True when the release is in force."""
        try:
            bundle = release_guard.ensure_release_in_force(self.database_url)
        except release_guard.ReleaseRefused as refused:
            self._drifted(refused)
        else:
            if self.refused is not None:
                log.warning("release %s in force again: the MLLP listener applies again", bundle[:12])
            self.bundle, self.refused = bundle, None
            self.listener.apply = True
        self.checked_at = datetime.now(UTC)
        self.checks += 1
        return self.refused is None

    def _drifted(self, refused: release_guard.ReleaseRefused) -> None:
        first = self.refused is None or self.refused.live != refused.live
        self.listener.apply = False
        self.refused, self.bundle = refused, None
        if first:
            log.error("MLLP listener switched to archive only (messages archived, not applied): %s", refused.message)
            with session_scope(self.database_url) as session:
                release_guard.alert_not_in_force(session, refused, where="the MLLP listener")

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `every` seconds until `stop` is set (a failed check is logged and tried again)."""
        while not stop.is_set():
            try:
                async with asyncio.timeout(self.every):
                    await stop.wait()
                return
            except TimeoutError:
                pass
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # the database did not answer: the listener keeps its mode until it does
                log.exception("the release check of the MLLP listener failed")

    def health(self) -> tuple[bool, dict[str, object]]:
        """The listener's health with the release it maps under (ready as the listener is)."""
        ready, state = self.listener.health()
        state["release"] = {
            "status": "in_force" if self.refused is None else "not_in_force",
            "bundle": self.bundle,
            "reason": self.refused.message if self.refused is not None else None,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "every_seconds": self.every,
        }
        return ready, state
