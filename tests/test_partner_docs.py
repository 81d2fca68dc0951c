"""The README's partner table and the compose file's sandbox services describe the partner registry.

Both are written by hand for people and Docker; these checks keep them from going stale when a
partner is added, renamed or given a sandbox, and say what is missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cgthub import partners
from cgthub.partners import Partner, Pull, Sandbox

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_PROFILE = "sandbox"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Partner]]:
    """The partners this repository declares (whatever package list the environment names)."""
    monkeypatch.delenv(partners.PACKAGES_ENV, raising=False)
    partners.refresh()
    yield partners.registry()
    partners.refresh()


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _readme_rows() -> dict[str, list[str]]:
    """The partner table under README's `## Partners`: partner name -> its cells."""
    section = (ROOT / "README.md").read_text().split("\n## Partners\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([a-z][a-z0-9_]*)`", cells[0]) if line.startswith("|") else None
        if name:
            assert name.group(1) not in rows, f"README names partner {name.group(1)!r} twice"
            rows[name.group(1)] = cells
    return rows


def compose_problems(registry: dict[str, Partner], compose: dict[str, Any]) -> list[str]:
    """What docker-compose.yml lacks (or has left over) for the registry's sandboxes."""
    services: dict[str, Any] = compose["services"]
    environment: dict[str, str] = compose["x-airflow-common"]["environment"]
    problems = []
    expected = set()
    for partner in registry.values():
        box = partner.sandbox
        if box is None:
            continue
        service = f"{box.service}-sandbox"
        expected.add(service)
        found = services.get(service)
        if found is None:
            problems.append(f"{partner.name}: no compose service {service!r} (profile {SANDBOX_PROFILE})")
            continue
        if SANDBOX_PROFILE not in found.get("profiles", []):
            problems.append(f"{service}: not in the {SANDBOX_PROFILE!r} profile")
        if found.get("command", [])[2:5] != ["cgthub.services", "sandbox", box.service]:
            problems.append(f"{service}: does not run `cgthub.services sandbox {box.service}`")
        if str(box.port) not in found.get("healthcheck", {}).get("test", []):
            problems.append(f"{service}: its healthcheck does not probe port {box.port}")
        if partner.connection_id:
            variable = f"AIRFLOW_CONN_{partner.connection_id.upper()}"
            uri = box.connection_uri.format(host=service, port=box.port)
            if environment.get(variable) != f"${{{variable}:-{uri}}}":
                problems.append(f"{partner.name}: {variable} does not default to {uri}")
    for name, service in services.items():
        if name.endswith("-sandbox") and SANDBOX_PROFILE in service.get("profiles", []) and name not in expected:
            problems.append(f"{name}: no registered partner declares this sandbox")
    return problems


def readme_problems(registry: dict[str, Partner], rows: dict[str, list[str]]) -> list[str]:
    """Where README's partner table and the registry disagree."""
    problems = [f"{name}: registered, but README's partner table has no row" for name in registry if name not in rows]
    problems += [f"{name}: README's partner table names no registered partner" for name in rows if name not in registry]
    for name in rows.keys() & registry.keys():
        partner, (_name, _what, connection, pulls, sandbox) = registry[name], rows[name]
        if connection != (f"`{partner.connection_id}`" if partner.connection_id else "none"):
            problems.append(f"{name}: README says connection {connection}, the registry {partner.connection_id}")
        streams = [pull.stream for pull in partner.pulls]
        if (pulls.split(", ") if streams else pulls.split(" ")[:1]) != (streams or ["none"]):
            problems.append(f"{name}: README says it pulls {pulls}, the registry {streams}")
        box = partner.sandbox
        if sandbox != (f"`{box.service}-sandbox` :{box.port}" if box else "none"):
            problems.append(f"{name}: README says sandbox {sandbox}, the registry {box}")
    return problems


def test_every_partner_sandbox_is_a_compose_service_on_its_port(registry):
    assert any(partner.sandbox for partner in registry.values())
    assert compose_problems(registry, _compose()) == []


def test_readmes_partner_table_lists_exactly_the_registered_partners(registry):
    rows = _readme_rows()
    assert sorted(rows) == sorted(registry)
    assert readme_problems(registry, rows) == []


def test_a_partner_added_without_its_docs_or_compose_service_is_named(registry):
    toy = Partner(
        name="toy",
        describes="a toy courier",
        connection_id="toy_api",
        pulls=(Pull("events", "toyhub.toy.feed:pages"),),
        sandbox=Sandbox("toy", "toyhub.toy.sandbox", 8799, "http://{host}:{port}"),
    )
    grown = {**registry, "toy": toy}
    assert compose_problems(grown, _compose()) == ["toy: no compose service 'toy-sandbox' (profile sandbox)"]
    assert readme_problems(grown, _readme_rows()) == ["toy: registered, but README's partner table has no row"]
    shrunk = {name: partner for name, partner in registry.items() if name != "crm"}
    assert compose_problems(shrunk, _compose()) == ["crm-sandbox: no registered partner declares this sandbox"]
    assert readme_problems(shrunk, _readme_rows()) == ["crm: README's partner table names no registered partner"]
    moved = {**registry, "erp": Partner(**{**vars(registry["erp"]), "sandbox": Sandbox("erp", "m", 9702, "x")})}
    assert "erp-sandbox: its healthcheck does not probe port 9702" in compose_problems(moved, _compose())
    assert any(p.startswith("erp: README says sandbox") for p in readme_problems(moved, _readme_rows()))
