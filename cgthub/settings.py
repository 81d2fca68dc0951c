"""Where the hub keeps its state and secrets, read from the environment once.

Defaults make a fresh clone work with no configuration: an SQLite file and dev keys under var/.
Production sets CGTHUB_DATABASE_URL, CGTHUB_PSEUDONYM_KEY and CGTHUB_ARCHIVE_KEY explicitly.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def var_dir() -> Path:
    path = Path(os.environ.get("CGTHUB_VAR_DIR", PROJECT_ROOT / "var"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _dev_key(name: str) -> bytes:
    """A 32-byte key kept in var/<name>.key, created on first use (development only)."""
    path = var_dir() / f"{name}.key"
    if not path.exists():
        path.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        path.chmod(0o600)
    return base64.urlsafe_b64decode(path.read_text().strip())


def _key(env_name: str, dev_name: str) -> bytes:
    value = os.environ.get(env_name)
    if value:
        raw = base64.urlsafe_b64decode(value.encode())
        if len(raw) != 32:
            raise ValueError(f"{env_name} must be 32 bytes, url-safe base64 encoded")
        return raw
    return _dev_key(dev_name)


@dataclass(frozen=True)
class Settings:
    database_url: str
    pseudonym_key: bytes
    archive_key: bytes


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    url = os.environ.get("CGTHUB_DATABASE_URL") or f"sqlite:///{var_dir() / 'cgthub.db'}"
    return Settings(
        database_url=url,
        pseudonym_key=_key("CGTHUB_PSEUDONYM_KEY", "pseudonym"),
        archive_key=_key("CGTHUB_ARCHIVE_KEY", "archive"),
    )
