"""Outside `CGTHUB_ENV=dev`, the startup error names every key problem at once and the real var
directory, through the `cgthub` command as an operator runs it (SQLite only: the refusal comes
before the database is read).

Found in the README audit, 5 December: the error always said dev keys are made "under var/",
whatever CGTHUB_VAR_DIR said, and a key set but invalid beside missing ones was not named until the
missing ones were fixed (a second failed start)."""

from __future__ import annotations

from tests.test_readme_promises_config import KEYS, SECRET_LOOKING, _cgthub, hub_url  # noqa: F401


def test_the_error_names_every_missing_and_invalid_key_and_the_var_dir_in_force(hub_url, tmp_path):  # noqa: F811
    var_dir = tmp_path / "elsewhere" / "hub-var"
    pseudonym, archive, ledger = KEYS
    run = _cgthub(
        "orders",
        "list",
        var_dir=var_dir,
        CGTHUB_DATABASE_URL=hub_url,
        CGTHUB_ENV="production",
        **{pseudonym: SECRET_LOOKING},
    )
    said = run.stdout + run.stderr
    assert run.returncode == 1, said
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert f"{archive}, {ledger} are not set" in error, error
    assert f"{pseudonym} is not valid: must be 32 bytes, url-safe base64" in error, error
    assert f"dev keys are made under {var_dir} (CGTHUB_VAR_DIR) only when CGTHUB_ENV=dev" in error, error
    assert "under var/" not in error
    assert SECRET_LOOKING not in said and "Traceback" not in said
    assert not var_dir.exists() or not any(var_dir.rglob("*.key"))  # no dev key was made


def test_keys_that_are_only_missing_are_named_without_an_invalid_one(hub_url, tmp_path):  # noqa: F811
    run = _cgthub("sites", "list", var_dir=tmp_path / "v", CGTHUB_DATABASE_URL=hub_url, CGTHUB_ENV="validation")
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert f"{', '.join(KEYS)} are not set: CGTHUB_ENV=validation" in error, error
    assert "is not valid" not in error and f"under {tmp_path / 'v'} (CGTHUB_VAR_DIR)" in error
