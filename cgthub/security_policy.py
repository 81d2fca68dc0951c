"""Signature lockout and release four-eyes policy: config/security.yaml, validated with pydantic.

A missing file means the defaults (5 failures within 15 minutes lock a signer for 15 minutes; only a
`dev` hub lets a bundle's builder approve it); a file that does not validate stops the signature
with the file named, rather than signing under a policy nobody wrote.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cgthub.settings import SettingError, get_settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignaturePolicy(_Strict):
    max_failures: int = Field(default=5, ge=1, le=1000)
    window_seconds: float = Field(default=900, gt=0)
    lockout_seconds: float = Field(default=900, gt=0)

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=self.window_seconds)

    @property
    def lockout(self) -> timedelta:
        return timedelta(seconds=self.lockout_seconds)


class ReleasePolicy(_Strict):
    self_approval_environments: tuple[Literal["dev", "validation", "production"], ...] = ("dev",)


class SecurityPolicy(_Strict):
    signatures: SignaturePolicy = SignaturePolicy()
    releases: ReleasePolicy = ReleasePolicy()


class PolicyError(SettingError):
    """config/security.yaml cannot be read or does not validate."""


def path() -> Path:
    return get_settings().config_dir / "security.yaml"


def policy() -> SecurityPolicy:
    """The policy in config/security.yaml of the configuration directory in force (re-read when it changes)."""
    where = path()
    try:
        stamp = where.stat().st_mtime_ns
    except FileNotFoundError:
        return SecurityPolicy()
    return _load(str(where), stamp)


@lru_cache(maxsize=4)
def _load(where: str, _mtime: int) -> SecurityPolicy:
    try:
        return SecurityPolicy.model_validate(yaml.safe_load(Path(where).read_text(encoding="utf-8")) or {})
    except OSError as exc:
        raise PolicyError(f"cannot read the security policy at {where}: {exc.strerror}", "restore the file") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise PolicyError(f"{where} is not a valid security policy: {exc}", "fix the file") from exc
