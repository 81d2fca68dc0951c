"""README, Markets and sites: "An API key scoped to a site, CMO or market the registry does not list is
refused when it is created (`--force` for one not listed yet)", through `cgthub api keys create`
(the CLI's own app, in process) on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select
from typer.testing import CliRunner

from cgthub.api.tables import ApiKey
from cgthub.cli import app as cli
from cgthub.cli.common import CliError
from cgthub.store import session_scope

CREATE = ["api", "keys", "create", "--scope", "status:read"]
UNLISTED = (("--site", "US-NOWHERE-9", "site"), ("--cmo", "CMO-NOWHERE", "CMO"), ("--market", "ZZ", "market"))


def _keys(url: str) -> list[ApiKey]:
    with session_scope(url) as session:
        rows = list(session.scalars(select(ApiKey)))
        session.expunge_all()
        return rows


def test_a_key_scoped_outside_the_registry_is_refused_unless_forced(db_url):
    for option, value, what in UNLISTED:
        refused = CliRunner().invoke(cli, [*CREATE, "--name", "typo", option, value])
        assert isinstance(refused.exception, CliError) and refused.exception.exit_code == 1, refused.output
        assert f"unknown {what} {value}" in refused.exception.message and "--force" in (refused.exception.hint or "")
        assert "cgt_" not in refused.output and _keys(db_url) == []  # no key was made

    forced = CliRunner().invoke(cli, [*CREATE, "--name", "early", "--site", "US-NOWHERE-9", "--force"])
    assert forced.exit_code == 0, forced.output
    (row,) = _keys(db_url)
    assert row.sites == ["US-NOWHERE-9"] and f"cgt_{row.id}_" in forced.output


def test_a_key_scoped_to_a_listed_site_cmo_and_market_is_made(db_url):
    listed = ["--site", "US-BOS-01", "--cmo", "CMO-NJ", "--market", "DE"]
    made = CliRunner().invoke(cli, [*CREATE, "--name", "ok", *listed])
    assert made.exit_code == 0, made.output
    (row,) = _keys(db_url)
    assert (row.sites, row.cmos, row.markets) == (["US-BOS-01"], ["CMO-NJ"], ["DE"])
