"""Custody exports signed with the hub's Ed25519 key, checked offline against a key the consumer pinned.

Through the paths production runs: the API over HTTP on loopback (the export, `GET /custody/keys`),
`cgthub api verify-custody` and `cgthub api custody-key` (the CLI, in a subprocess where the
environment decides which key signs).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from cgthub import cli, custody_signing
from cgthub.settings import get_settings
from tests import api_server
from tests.factories import PATIENTS
from tests.test_api_custody import _order_with_cold_chain

api = api_server.api
ROOT = Path(__file__).resolve().parent.parent


def _flat(text: str) -> str:
    return " ".join(text.split())


def _export(api: Any, n: int = 11) -> dict[str, Any]:
    (order_id,) = api_server.build_orders(api.database_url, [_order_with_cold_chain(n)])
    answer = api.client(api.key("custody:read")).get(f"/orders/{order_id}/custody")
    assert answer.status_code == 200, answer.text
    return answer.json()


def _pin(api: Any, folder: Path, *, status: str = "current") -> tuple[str, Path]:
    """What a consumer does once: fetch the hub's public key (any key, here one without PHI scope) and keep it."""
    keys = api.client(api.key("status:read")).get("/custody/keys").json()["keys"]
    chosen = [k for k in keys if k["status"] == status]
    path = folder / f"{chosen[0]['key_id'].replace(':', '-')}.pem"
    path.write_text(chosen[0]["public_key_pem"])
    return chosen[0]["key_id"], path


def _verify(document: dict[str, Any], folder: Path, *options: str) -> Any:
    path = folder / "custody.json"
    path.write_text(json.dumps(document))
    return CliRunner().invoke(cli.app, ["api", "verify-custody", str(path), *options])


def test_a_clean_export_verifies_under_the_pinned_key_and_unpinned_says_it_is_unauthenticated(api, tmp_path):
    document = _export(api)
    key_id, pinned = _pin(api, tmp_path)
    assert document["cgthub:signature"]["keyId"] == key_id and document["cgthub:signature"]["alg"] == "Ed25519"
    checked = _verify(document, tmp_path, "--public-key", str(pinned))
    assert checked.exit_code == 0, checked.output
    assert f"signed by the hub: key {key_id} (pinned)" in _flat(checked.output)
    assert "not authenticated" not in checked.output
    unpinned = _verify(document, tmp_path)
    assert unpinned.exit_code == 0, unpinned.output  # internally consistent, and it says that is all
    assert "warning: not authenticated" in _flat(unpinned.output)
    assert "its holder could have re-made it" in _flat(unpinned.output)


def test_a_document_re_signed_under_another_key_is_refused_even_with_that_key_inside(api, tmp_path):
    """An attacker edits the export (the excursion made conformant) and signs it with a key of their
    own, naming it and even carrying its public key: the verifier trusts only the pinned key."""
    document = _export(api, 12)
    hub_key_id, pinned = _pin(api, tmp_path)
    forged = copy.deepcopy(document)
    for event in forged["epcisBody"]["eventList"]:
        if event.get("disposition") == "non_conformant":
            event["disposition"] = "conformant"
    attacker = Ed25519PrivateKey.generate()
    resigned = custody_signing.sign(forged, attacker)
    resigned["cgthub:signature"]["publicKeyPem"] = custody_signing.public_pem(attacker.public_key())
    refused = _verify(resigned, tmp_path, "--public-key", str(pinned))
    assert refused.exit_code == 1, refused.output
    attacker_id = custody_signing.key_id(attacker.public_key())
    assert f"signed with key '{attacker_id}', not a pinned key ({hub_key_id})" in _flat(refused.output)
    claiming = copy.deepcopy(resigned)  # the attacker's signature relabelled with the hub's key id
    claiming["cgthub:signature"]["keyId"] = hub_key_id
    refused = _verify(claiming, tmp_path, "--public-key", str(pinned))
    assert refused.exit_code == 1, refused.output
    assert f"the signature does not verify under pinned key {hub_key_id}" in _flat(refused.output)
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello")
    refused = _verify(document, tmp_path, "--public-key", str(not_a_key))
    assert refused.exit_code == 1 and "signed by the hub" not in refused.output


def test_the_public_keys_answer_any_key_without_phi_scope_and_the_export_still_needs_custody_read(api):
    (order_id,) = api_server.build_orders(api.database_url, [_order_with_cold_chain(13)])
    status_only = api.client(api.key("status:read"))
    assert status_only.get(f"/orders/{order_id}/custody").status_code == 403
    assert httpx.get(f"{api.base_url}/custody/keys").status_code == 401  # a key, but any key
    scoped = status_only.get("/custody/keys")
    site_only = api.client(api.key("timeline:read", sites=["US-SITE-1"])).get("/custody/keys")
    assert scoped.status_code == site_only.status_code == 200, scoped.text
    assert site_only.json() == scoped.json()
    listed = scoped.json()
    assert listed["keys"][0]["status"] == "current" and listed["signing_rule"] == custody_signing.SIGNING_RULE
    assert listed["keys"][0]["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    text = scoped.text
    seed = base64.urlsafe_b64encode(get_settings().custody_signing_key).decode()
    assert seed not in text and "PRIVATE" not in text
    for clear in (PATIENTS[0]["mrn"], PATIENTS[0]["name"], PATIENTS[0]["birth_date"], order_id):
        assert clear not in text


def test_after_a_rotation_the_old_key_is_listed_retired_and_its_documents_still_verify(api, tmp_path, monkeypatch):
    old_seed, new_seed = os.urandom(32), os.urandom(32)
    monkeypatch.setenv("CGTHUB_CUSTODY_SIGNING_KEY", base64.urlsafe_b64encode(old_seed).decode())
    before = _export(api, 14)
    old_id, old_pem = _pin(api, tmp_path)
    monkeypatch.setenv("CGTHUB_CUSTODY_SIGNING_KEY", base64.urlsafe_b64encode(new_seed).decode())
    after = _export(api, 15)
    new_id, new_pem = _pin(api, tmp_path)
    assert before["cgthub:signature"]["keyId"] == old_id != new_id == after["cgthub:signature"]["keyId"]
    listed = {k["key_id"]: k["status"] for k in api.client(api.key("custody:read")).get("/custody/keys").json()["keys"]}
    assert listed[old_id] == "retired" and listed[new_id] == "current"
    both = tmp_path / "both.pem"
    both.write_text(new_pem.read_text() + old_pem.read_text())  # a consumer pins the current and the retired key
    assert _verify(before, tmp_path, "--public-key", str(both)).exit_code == 0
    assert _verify(after, tmp_path, "--public-key", str(both)).exit_code == 0
    only_old = _verify(after, tmp_path, "--public-key", str(old_pem))
    assert only_old.exit_code == 1 and f"signed with key '{new_id}', not a pinned key" in _flat(only_old.output)


def _cgthub(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "CGTHUB_CUSTODY_SIGNING_KEY"} | env
    return subprocess.run(
        [sys.executable, "-m", "cgthub.cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=120,
    )


def test_custody_key_prints_the_pem_the_route_lists_and_production_requires_the_key(api, tmp_path):
    """In dev the key is made under the var directory (mode 0600) on first use; in production a
    missing CGTHUB_CUSTODY_SIGNING_KEY stops the command, named, with no key made."""
    dev_var = tmp_path / "dev-var"
    printed = _cgthub("api", "custody-key", CGTHUB_VAR_DIR=str(dev_var), CGTHUB_ENV="dev")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("-----BEGIN PUBLIC KEY-----") and "PRIVATE" not in printed.stdout
    key_file = dev_var / "custody-signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() not in printed.stdout + printed.stderr
    (listed,) = custody_signing.load_public_keys(printed.stdout)
    assert custody_signing.key_id(listed) in printed.stderr
    served = api.client(api.key("status:read")).get("/custody/keys").json()["keys"][0]  # this process's key
    assert _cgthub("api", "custody-key").stdout == served["public_key_pem"]
    keys = {
        v: base64.urlsafe_b64encode(bytes([n]) * 32).decode()
        for n, v in enumerate(("CGTHUB_PSEUDONYM_KEY", "CGTHUB_ARCHIVE_KEY", "CGTHUB_LEDGER_KEY"), 1)
    }
    prod_var = tmp_path / "prod-var"
    refused = _cgthub("api", "custody-key", CGTHUB_VAR_DIR=str(prod_var), CGTHUB_ENV="production", **keys)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "CGTHUB_CUSTODY_SIGNING_KEY is not set" in _flat(refused.stderr)
    assert not (prod_var / "custody-signing.key").exists()
