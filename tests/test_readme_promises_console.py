"""README, Operators: "`config/console_roles.yaml` maps each Airflow role to hub scopes and a data
scope ...; `users:` overrides it per Airflow user, and a role not listed sees nothing." The console
as Airflow's API server mounts it, signed in by Airflow's JWT, on SQLite and PostgreSQL: a user named
under `users:` gets that entry's scopes and data whatever their role, while another user of the
same role keeps the role's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_console import auth_manager, console, seed, signed_in  # noqa: F401

ROLES = """\
roles:
  op:
    scopes: [status:read, timeline:read, orders:release-hold, alerts:resolve]
    data: all
users:
  dora:
    scopes: [status:read]
    data: {markets: [DE]}
  vic:
    scopes: [status:read, orders:release-hold]
    data: all
"""


@pytest.fixture
def roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "console_roles.yaml").write_text(ROLES)
    monkeypatch.setenv("CGTHUB_CONFIG_DIR", str(config))


def test_a_users_entry_overrides_the_role_for_that_user_only(db_url, console, auth_manager, roles):  # noqa: F811
    ids = seed(db_url)  # US orders
    olga = signed_in(console, auth_manager, "olga", "op")
    assert ids["held"] in olga.get("/cgthub/console/orders").text
    assert 'id="release-hold"' in olga.get(f"/cgthub/console/orders/{ids['held']}").text

    dora = signed_in(console, auth_manager, "dora", "op")  # an op, but her entry says DE and read-only
    assert ids["held"] not in dora.get("/cgthub/console/orders").text
    assert dora.get(f"/cgthub/console/orders/{ids['held']}").status_code == 404

    vic = signed_in(console, auth_manager, "vic", "nobody")  # a role not listed, yet his entry lets him see
    page = vic.get(f"/cgthub/console/orders/{ids['held']}")
    assert page.status_code == 200 and 'id="release-hold"' in page.text and "Resolve" not in page.text

    sam = signed_in(console, auth_manager, "sam", "nobody")  # neither listed: sees nothing
    assert ids["held"] not in sam.get("/cgthub/console/orders").text
