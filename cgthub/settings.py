"""Every `CGTHUB_*` variable in one place, read from the environment once per process.

Defaults make a fresh clone work with no configuration: an SQLite file and dev keys under var/.
That convenience is for development only: outside `CGTHUB_ENV=dev` (the default) a missing key is
an error naming its variable, so a deployment never runs on keys it silently made itself (lost with
the volume, readable by whoever reads var/).

Keys are decoded when first used, not at startup: a command that needs no pseudonym key (such as
`orders list`) works whatever that variable holds, and one that does names it in one line.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cgthub.errors import CgthubError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

ENV_PREFIX = "CGTHUB_"

KEY_VARIABLES = {
    "pseudonym": "CGTHUB_PSEUDONYM_KEY",
    "archive": "CGTHUB_ARCHIVE_KEY",
    "ledger": "CGTHUB_LEDGER_KEY",
}

_NEW_KEY_HINT = (
    "make one with: python -c 'import base64, secrets; "
    "print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())'"
)


class SettingError(CgthubError, RuntimeError):
    """A setting the user must fix before the command can run; `hint` says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class MissingSetting(SettingError):
    """Settings a non-development environment must give explicitly are absent."""

    def __init__(self, variables: list[str], env: str, var_dir: Path, invalid: dict[str, str] | None = None) -> None:
        # Every key problem at once: a key set but unusable is named beside the missing ones, so the
        # operator does not find it only after fixing those (its value is never quoted).
        also = "".join(f"; {variable} is not valid: {why}" for variable, why in (invalid or {}).items())
        super().__init__(
            f"{', '.join(variables)} {'is' if len(variables) == 1 else 'are'} not set{also}: CGTHUB_ENV={env} "
            "needs every key given explicitly (32 bytes, url-safe base64); dev keys are made under "
            f"{var_dir} (CGTHUB_VAR_DIR) only when CGTHUB_ENV=dev",
            "set it (see deploy/.env.example), or CGTHUB_ENV=dev on a development machine",
        )
        self.variables = variables
        self.invalid = dict(invalid or {})


class InvalidSetting(SettingError):
    """A variable is set to something the hub cannot use; the message names it, never its value."""

    def __init__(self, variable: str, why: str, hint: str | None = None) -> None:
        super().__init__(
            f"{variable} is not valid: {why}", hint or f"correct or unset {variable} (see deploy/.env.example)"
        )
        self.variable, self.why = variable, why


def _decode_key(variable: str, value: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(value.strip().encode())
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise InvalidSetting(variable, "must be 32 bytes, url-safe base64", _NEW_KEY_HINT)
    return raw


class Settings(BaseSettings):
    """The hub's configuration; each field is the variable `CGTHUB_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    env: Literal["dev", "validation", "production"] = "dev"
    var_dir: Path = PROJECT_ROOT / "var"
    database_url_text: str | None = Field(default=None, validation_alias="CGTHUB_DATABASE_URL")
    pseudonym_key_text: SecretStr | None = Field(default=None, validation_alias="CGTHUB_PSEUDONYM_KEY")
    archive_key_text: SecretStr | None = Field(default=None, validation_alias="CGTHUB_ARCHIVE_KEY")
    ledger_key_text: SecretStr | None = Field(default=None, validation_alias="CGTHUB_LEDGER_KEY")
    # The Ed25519 seed custody exports are signed with (cgthub.custody_signing); asked for when the
    # first export is signed, so a command that signs none does not need it, and checked when the API
    # starts (malformed: it does not start; missing outside dev: /health/ready says so).
    custody_signing_key_text: SecretStr | None = Field(default=None, validation_alias="CGTHUB_CUSTODY_SIGNING_KEY")
    ledger_checkpoints: Path | None = None
    config_dir: Path = PROJECT_ROOT / "config"
    mappings_dir: Path = PROJECT_ROOT / "mappings"
    ops_config: Path | None = None
    alert_webhook_url: str | None = None
    connectors: str | None = None  # comma list of partners pulled through their connector; unset = all
    webhook_allow: str = ""  # comma list of internal webhook targets an operator vouches for
    mllp_listener: str = ""  # host:port the hospital sends its HL7 to (the hub's listener)
    mapping_fastpath: bool = True
    sandbox_faults: str = ""
    cmo_drop_dir: Path | None = None
    demo_dir: Path | None = None
    partner_packages: str | None = None  # comma list of partner packages to load; unset = all
    courier_webhook_secret: str = ""  # shared with the courier for its webhook; empty is refused
    operator: str = ""  # who runs an operator command, when not given on the command line
    # The release environment this hub runs as: unset, the mapping and config files as they are on
    # disk; `validation` or `production`, only the bundle last promoted there (cgthub.release).
    release_env: Literal["", "validation", "production"] = ""
    # What one client may hold open on the hub's live edges. The API (`cgthub api serve`, the courier's
    # webhook receiver): seconds for a request's head to arrive, after which the connection is answered
    # 408 and closed (cgthub.api.http_protocol), and for its body to follow the head's end (408 if the
    # app has not begun answering; closed either way). The MLLP listener: connections open from one address
    # at a time (cgthub.hl7.connection_limits); a hospital's senders behind one NAT share an address.
    api_header_timeout: float = Field(default=10.0, gt=0)
    api_body_timeout: float = Field(default=30.0, gt=0)
    # Bytes a request's body may hold (cgthub.api.http_protocol: 413 past it, the excess never read). The
    # largest legitimate body, a bulk quarantine retry of 10,000 row ids, is about 200 KB.
    api_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    # Seconds an answer's unsent bytes may wait without shrinking (a client that asks and never reads)
    # before the connection is cut off (cgthub.api.http_protocol); a slow reader that reads is kept.
    api_write_timeout: float = Field(default=30.0, gt=0)
    mllp_max_connections_per_address: int = Field(default=32, ge=1)
    # The event loop the MLLP listener runs on (cgthub.hl7.event_loop): uvloop's (libuv, in C), or the
    # standard library's `asyncio` loop as a way back.
    listener_event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Outbound webhooks (cgthub.api.webhooks): seconds one delivery may take in all, however the
    # receiver dribbles its answer (each read is also bounded by 10 s), and how many subscriptions are
    # delivered to at once, so one slow or silent receiver holds no other subscriber's deliveries.
    webhook_delivery_deadline: float = Field(default=20.0, gt=0)
    webhook_delivery_workers: int = Field(default=8, ge=1)
    # Pull connectors (connectors.common.http, the ERP's zeep transport): bytes a partner's answer may
    # hold once decompressed (a CRM page of 200 records is about 200 KB), and seconds a call may take
    # from sending its request to its answer's last byte, head (status line, headers) included.
    partner_max_response_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    partner_response_deadline: float = Field(default=60.0, gt=0)
    # Seconds any task of the hub's DAGs may run before Airflow fails it (cgthub.dag_defaults); unset:
    # sized from the partner deadline and retries (see task_timeout_seconds).
    task_execution_timeout: float | None = Field(default=None, gt=0)
    # Drop folders (cgthub.drop_folder): seconds a file must have been left unmodified before it is
    # read (a sender may still be writing it in place), and bytes a dropped file may hold before it is
    # set aside in failed/ unread.
    drop_min_age_seconds: float = Field(default=3.0, ge=0)
    drop_max_file_bytes: int = Field(default=256 * 1024 * 1024, ge=1)

    @field_validator("env", mode="before")
    @classmethod
    def _env_in_any_case(cls, value: object) -> object:
        return (value.strip().lower() or "dev") if isinstance(value, str) else value

    @property
    def environment(self) -> str:
        return self.env

    @property
    def task_timeout_seconds(self) -> float:
        """CGTHUB_TASK_EXECUTION_TIMEOUT, else room for ten partner calls at their worst: every attempt
        (a pull makes up to 6) at the partner deadline, 3,600 s at its default of 60 s."""
        if self.task_execution_timeout is not None:
            return self.task_execution_timeout
        return 10 * 6 * self.partner_response_deadline

    @cached_property
    def database_url(self) -> str:
        """The configured URL, or an SQLite file in the var directory (not created here)."""
        return self.database_url_text or f"sqlite:///{self.var_dir / 'cgthub.db'}"

    @cached_property
    def pseudonym_key(self) -> bytes:
        return self._key("pseudonym")

    @cached_property
    def archive_key(self) -> bytes:
        return self._key("archive")

    @cached_property
    def ledger_key(self) -> bytes:
        return self._key("ledger")

    @cached_property
    def custody_signing_key(self) -> bytes:
        """The 32-byte Ed25519 seed: from CGTHUB_CUSTODY_SIGNING_KEY, or var/custody-signing.key in dev."""
        variable = "CGTHUB_CUSTODY_SIGNING_KEY"
        text = self.custody_signing_key_text
        if text and text.get_secret_value():
            return _decode_key(variable, text.get_secret_value())
        if self.env != "dev":
            raise MissingSetting([variable], self.env, self.var_dir)
        return _dev_key(self.var_dir, "custody-signing")

    @property
    def ledger_checkpoint_path(self) -> Path:
        """The append-only file of signed chain heads; outside the database by design."""
        return self.ledger_checkpoints or self.var_dir / "ledger-checkpoints.jsonl"

    def missing_keys(self) -> list[str]:
        texts = {"pseudonym": self.pseudonym_key_text, "archive": self.archive_key_text, "ledger": self.ledger_key_text}
        return [KEY_VARIABLES[name] for name, text in texts.items() if not (text and text.get_secret_value())]

    def invalid_keys(self) -> dict[str, str]:
        """The keys that are set but cannot be used, each with why (never its value)."""
        out: dict[str, str] = {}
        for name, variable in KEY_VARIABLES.items():
            text: SecretStr | None = getattr(self, f"{name}_key_text")
            if text and text.get_secret_value():
                try:
                    _decode_key(variable, text.get_secret_value())
                except InvalidSetting as exc:
                    out[variable] = exc.why
        return out

    def _key(self, name: str) -> bytes:
        variable = KEY_VARIABLES[name]
        text: SecretStr | None = getattr(self, f"{name}_key_text")
        if text and text.get_secret_value():
            return _decode_key(variable, text.get_secret_value())
        if self.env != "dev":
            raise MissingSetting([variable], self.env, self.var_dir)
        return _dev_key(self.var_dir, name)


def _dev_key(folder: Path, name: str) -> bytes:
    """A 32-byte key kept in var/<name>.key, created on first use (development only)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    return _decode_key(str(path), path.read_text())


def _variable_of(location: tuple[int | str, ...]) -> str:
    field = str(location[0]) if location else ""
    alias = Settings.model_fields[field].validation_alias if field in Settings.model_fields else None
    return alias if isinstance(alias, str) else ENV_PREFIX + field.upper()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (cached: asked on every session and message). Outside dev, every key
    variable must be present (checked here, at startup); its value is checked when first used."""
    try:
        settings = Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidSetting(_variable_of(error["loc"]), error["msg"].lower()) from None
    missing = settings.missing_keys()
    if missing and settings.env != "dev":
        raise MissingSetting(missing, settings.env, settings.var_dir, settings.invalid_keys())
    return settings


def var_dir() -> Path:
    """The hub's own working directory (made on first use): receipts, journals, dev keys."""
    path = get_settings().var_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


def environment() -> str:
    """`dev` (the default) lets the hub make its own keys under var/; anything else does not."""
    return get_settings().env


def ledger_checkpoint_path() -> Path:
    """The append-only file of signed chain heads; outside the database by design."""
    return get_settings().ledger_checkpoint_path
