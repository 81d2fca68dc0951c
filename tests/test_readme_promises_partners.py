"""README, Partners: "the partner's name is its events' `source_system` (a lower-case letter, then lower
case, digits and `_`; 2 to 32 characters)", as `cgthub mappings validate` meets a mapping whose
`system:` breaks the form: refused naming the file, the line and the form whole (rich markup once ate
the form's `[a-z]` out of the message), while a well-formed name of 32 is refused only for being
declared by no partner. No database is read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgthub.settings import PROJECT_ROOT

COURIER = PROJECT_ROOT / "mappings" / "courier" / "tracking_event" / "v1.yaml"
FORM = "'^[a-z][a-z0-9_]{1,31}$'"


def _validate(tmp_path: Path, system: str) -> tuple[subprocess.CompletedProcess[str], Path, int]:
    path = tmp_path / "mappings" / system / "shipment_event" / "v1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(COURIER.read_text().replace("system: courier", f"system: {system}"))
    line = 1 + next(i for i, text in enumerate(path.read_text().splitlines()) if text.startswith("system:"))
    env = {
        **os.environ,
        "CGTHUB_MAPPINGS_DIR": str(tmp_path / "mappings"),
        "CGTHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'not-made.db'}",
        "COLUMNS": "400",
    }
    run = subprocess.run(
        [sys.executable, "-m", "cgthub.cli", "mappings", "validate"], capture_output=True, text=True, env=env
    )
    return run, path, line


@pytest.mark.parametrize("system", ["Toy", "toy-partner", "9toy", "t", "a" * 33])
def test_a_system_name_out_of_form_is_refused_naming_file_line_and_form(tmp_path, system):
    run, path, line = _validate(tmp_path, system)
    assert run.returncode == 1
    said = " ".join(run.stdout.split())
    assert f"{path}:{line}: system:" in said and FORM in said, said


def test_a_well_formed_name_of_32_is_refused_only_as_undeclared(tmp_path):
    run, path, line = _validate(tmp_path, "a" * 32)
    said = " ".join(run.stdout.split())
    assert run.returncode == 1 and f"{path}:{line}: system:" in said
    assert f"no partner declares the system '{'a' * 32}'" in said and FORM not in said
