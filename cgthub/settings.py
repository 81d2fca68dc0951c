"""Where the hub keeps its state and secrets, read from the environment once.

Defaults make a fresh clone work with no configuration: an SQLite file and dev keys under var/.
That convenience is for development only: outside `CGTHUB_ENV=dev` (the default) a missing key is
an error naming its variable, so a deployment never runs on keys it silently made itself (lost with
the volume, readable by whoever reads var/).
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cgthub.errors import CgthubError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

KEY_VARIABLES = {
    "pseudonym": "CGTHUB_PSEUDONYM_KEY",
    "archive": "CGTHUB_ARCHIVE_KEY",
    "ledger": "CGTHUB_LEDGER_KEY",
}


class MissingSetting(CgthubError, RuntimeError):
    """Settings a non-development environment must give explicitly are absent."""

    def __init__(self, variables: list[str], env: str) -> None:
        super().__init__(
            f"{', '.join(variables)} {'is' if len(variables) == 1 else 'are'} not set: CGTHUB_ENV={env} needs "
            "every key given explicitly (32 bytes, url-safe base64); dev keys are made under var/ only "
            "when CGTHUB_ENV=dev"
        )
        self.variables = variables


def var_dir() -> Path:
    path = Path(os.environ.get("CGTHUB_VAR_DIR", PROJECT_ROOT / "var"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def environment() -> str:
    """`dev` (the default) lets the hub make its own keys under var/; anything else does not."""
    return os.environ.get("CGTHUB_ENV", "dev").strip().lower() or "dev"


def _dev_key(name: str) -> bytes:
    """A 32-byte key kept in var/<name>.key, created on first use (development only)."""
    path = var_dir() / f"{name}.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    return base64.urlsafe_b64decode(path.read_text().strip())


def _keys() -> dict[str, bytes]:
    """Every key, from its variable or (dev only) its file; all missing variables named at once."""
    env = environment()
    missing = [variable for variable in KEY_VARIABLES.values() if not os.environ.get(variable)]
    if missing and env != "dev":
        raise MissingSetting(missing, env)
    keys = {}
    for name, variable in KEY_VARIABLES.items():
        value = os.environ.get(variable)
        if not value:
            keys[name] = _dev_key(name)
            continue
        raw = base64.urlsafe_b64decode(value.encode())
        if len(raw) != 32:
            raise ValueError(f"{variable} must be 32 bytes, url-safe base64 encoded")
        keys[name] = raw
    return keys


def ledger_checkpoint_path() -> Path:
    """The append-only file of signed chain heads; outside the database by design."""
    configured = os.environ.get("CGTHUB_LEDGER_CHECKPOINTS")
    return Path(configured) if configured else var_dir() / "ledger-checkpoints.jsonl"


@dataclass(frozen=True)
class Settings:
    database_url: str
    pseudonym_key: bytes
    archive_key: bytes
    ledger_key: bytes
    environment: str = "dev"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    url = os.environ.get("CGTHUB_DATABASE_URL") or f"sqlite:///{var_dir() / 'cgthub.db'}"
    keys = _keys()
    return Settings(
        database_url=url,
        pseudonym_key=keys["pseudonym"],
        archive_key=keys["archive"],
        ledger_key=keys["ledger"],
        environment=environment(),
    )
