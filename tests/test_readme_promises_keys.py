"""README, Markets and sites: "An API key scoped to a site, CMO or market the registry does not list is
refused when it is created (`--force` for one not listed yet)", through `cgthub api keys create` on
SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from cgthub.api.tables import ApiKey
from cgthub.store import session_scope
from tests.test_api_cli import _cli


def _keys(url: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(ApiKey)) or 0


@pytest.mark.parametrize(
    ("option", "value", "what"),
    [("--site", "US-NOWHERE-9", "site"), ("--cmo", "CMO-NOWHERE", "CMO"), ("--market", "ZZ", "market")],
)
def test_a_key_scoped_outside_the_registry_is_refused_unless_forced(db_url, option, value, what):
    refused = _cli("keys", "create", "--name", "typo", "--scope", "status:read", option, value, url=db_url)
    assert refused.returncode == 1, refused.stdout
    assert f"unknown {what} {value}" in refused.stderr and "--force" in refused.stderr
    assert "cgt_" not in refused.stdout and _keys(db_url) == 0  # no key was made

    forced = _cli("keys", "create", "--name", "early", "--scope", "status:read", option, value, "--force", url=db_url)
    assert forced.returncode == 0, forced.stderr
    key_id = forced.stdout.strip().splitlines()[-1].split("_")[1]
    with session_scope(db_url) as session:
        row = session.get(ApiKey, key_id)
        assert row is not None and value in (row.sites + row.cmos + row.markets)


def test_a_key_scoped_to_a_listed_site_cmo_and_market_is_made(db_url):
    listed = ("--site", "US-BOS-01", "--cmo", "CMO-NJ", "--market", "DE")
    made = _cli("keys", "create", "--name", "ok", "--scope", "status:read", *listed, url=db_url)
    assert made.returncode == 0, made.stderr
    assert _keys(db_url) == 1
