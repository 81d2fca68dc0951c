"""What runs in-process leaves the hub's loggers as it found them, and a test's log capture hears them
whatever an earlier test did: otherwise a check that a patient's name is *not* in the log passes on an
empty capture. Real loggers, a real demo log file, the real `cgthub hl7 ingest`."""

from __future__ import annotations

import logging

from typer.testing import CliRunner

from cgthub import demo
from cgthub.cli import app
from tests.hub_log import hub_log

WATCHED = ("cgthub", "cgthub.pipeline", "cgthub.hl7.listener", "airflow", "sqlalchemy", "alembic")


def _state() -> dict[str, tuple[object, ...]]:
    loggers = {name: logging.getLogger(name) for name in WATCHED}
    return {name: (lg.propagate, lg.disabled, lg.level, tuple(lg.handlers)) for name, lg in loggers.items()}


def test_the_demo_in_process_leaves_the_loggers_as_it_found_them(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(demo, "DEMO_VAR", tmp_path)
    before = _state()
    pipeline = logging.getLogger("cgthub.pipeline")
    with demo._quiet_logs():
        pipeline.warning("quarantined during the demo")
        assert not logging.getLogger("cgthub").propagate  # the terminal shows the story only
    pipeline.warning("quarantined after the demo")
    assert _state() == before
    assert "quarantined during the demo" in (tmp_path / "demo.log").read_text()
    assert "quarantined after the demo" in caplog.text and "during the demo" not in caplog.text


def test_cgthub_hl7_ingest_in_process_leaves_the_pipeline_logger_as_it_found_it(db_url, tmp_path, caplog):
    """It quiets the pipeline's warnings for its own summary; it left them silenced for the rest of
    the process (so every later test in a pytest worker captured no pipeline line)."""
    caplog.set_level(logging.INFO)
    junk = tmp_path / "junk.hl7"
    junk.write_bytes(b"\x00\x01 not a message")
    before = _state()
    result = CliRunner().invoke(app, ["hl7", "ingest", str(junk)])
    assert "1 file, 1 message:" in result.output, result.output
    assert _state() == before
    logging.getLogger("cgthub.pipeline").warning("quarantined after the ingest")
    assert "quarantined after the ingest" in caplog.text


def test_hub_log_hears_loggers_an_earlier_test_quieted_and_puts_them_back(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(logging.getLogger("cgthub"), "propagate", False)  # as the demo's used to be left
    pipeline = logging.getLogger("cgthub.pipeline")
    listener = logging.getLogger("cgthub.hl7.listener")
    monkeypatch.setattr(listener, "disabled", True)  # as a dictConfig with disable_existing_loggers leaves it
    pipeline.setLevel(logging.ERROR)  # as `cgthub hl7 ingest` used to leave it
    try:
        before = _state()
        with hub_log() as logged:
            pipeline.warning("quarantined raw #1")
            listener.info("MLLP listener on 127.0.0.1:2575")
            assert logged.hears("cgthub.routing")
        assert _state() == before
    finally:
        pipeline.setLevel(logging.NOTSET)
    assert "WARNING cgthub.pipeline: quarantined raw #1" in logged.text
    assert "INFO cgthub.hl7.listener: MLLP listener" in logged.text
    assert "quarantined raw #1" not in caplog.text  # what a caplog-only absence check would have read
