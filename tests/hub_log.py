"""The hub's log lines as a test reads them, whatever an earlier test in the same worker did to logging.

caplog's handler sits on the root logger, so it sees nothing from a logger that stopped propagating
(the demo's `_quiet_logs`, before it restored what it changed), was disabled (a `dictConfig` with
`disable_existing_loggers`), or was raised to ERROR (`cgthub hl7 ingest` quiets `cgthub.pipeline`
in-process): a check that a name is *not* in caplog.text then passes whatever was logged. `hub_log`
reads the records at the named loggers themselves, every one of their descendants enabled down to
`level` (a descendant that stops propagating stays so: none of the hub's does), and puts each
logger back as it was. A test still asserts it saw the lines it expects
before it asserts what is absent, so an empty capture fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

CANARY = "hub_log: is this logger heard?"


class Lines(logging.Handler):
    """Every record that reaches a logger it is attached to, formatted as a log file shows it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))  # a traceback included
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def hears(self, name: str) -> bool:
        """Whether a record logged at `name` reaches this capture now: where the code under test is
        expected to log nothing, a check of absence first needs this."""
        logging.getLogger(name).critical(CANARY)
        return any(r.name == name and r.getMessage() == CANARY for r in self.records)

    @property
    def text(self) -> str:
        return "\n".join(self.format(record) for record in self.records)


@contextmanager
def hub_log(*names: str, level: int = logging.DEBUG) -> Iterator[Lines]:
    """Capture the records of `names` (default: the hub's `cgthub`) and all their descendants."""
    names = names or ("cgthub",)
    lines = Lines()
    manager = logging.Logger.manager
    loggers = [logging.getLogger(name) for name in names]
    descendants = [
        found
        for known, found in list(manager.loggerDict.items())
        if isinstance(found, logging.Logger) and any(known.startswith(name + ".") for name in names)
    ]
    saved = [(logger, logger.level, logger.disabled) for logger in [*loggers, *descendants]]
    try:
        for logger in descendants:  # their propagation is left alone: it decides uvicorn's access log, for one
            logger.disabled = False
            if logger.level > level:
                logger.setLevel(logging.NOTSET)  # its ancestor's level below decides
        for logger in loggers:
            logger.disabled = False
            logger.setLevel(level)
            logger.addHandler(lines)
        yield lines
    finally:
        for logger in loggers:
            logger.removeHandler(lines)
        for logger, was_level, was_disabled in saved:
            logger.disabled = was_disabled
            logger.setLevel(was_level)  # and clears the cache of levels in force
