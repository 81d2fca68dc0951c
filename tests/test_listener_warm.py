"""An applying listener compiles the HL7 mappings in force before it accepts a connection, so after a
restart or a failover the first message of every sender does not wait for mapping files to be read
(bench: 124 -> 22 ms for the first message, docs/benchmarks.md); a mapping file that no longer loads
does not stop it from starting: the first message of that kind is quarantined, to replay once it is fixed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sqlalchemy import select

from cgthub import ledger, settings
from cgthub.hl7.ack import ack_code
from cgthub.hl7.mllp import frame
from cgthub.mapping import registry
from cgthub.store import session_scope
from cgthub.tables import QuarantineEntry
from tests.factories import enrolment
from tests.test_hl7_listener import ORM, ORU, Running, exchange


def _in_force(kinds: set[str]) -> set[tuple[str, str | None]]:
    return {(key[1], key[3]) for key in registry._compiled if key[0] == "hl7" and key[1] in kinds}


def test_the_mappings_in_force_are_compiled_before_the_first_connection(db_url, tmp_path, monkeypatch):
    registry.clear_cache()
    kinds = {f.kind for f in registry.discover() if f.system == "hl7"}
    assert not _in_force(kinds)
    with Running(db_url, apply=True):
        warmed = _in_force(kinds)
    markets = registry.configured_markets()
    assert {kind for kind, _market in warmed} == kinds  # every kind, before any message came
    assert {market for _kind, market in warmed} == {None, *markets}  # neutral and each market's rules
    registry.clear_cache()
    with Running(db_url, apply=False):  # archive only maps nothing: nothing to compile
        assert not _in_force(kinds)


def test_a_mapping_file_that_no_longer_loads_does_not_stop_the_listener(db_url, tmp_path, monkeypatch):
    root = tmp_path / "mappings"
    shutil.copytree(Path(registry.mappings_dir()), root)
    for path in (root / "hl7" / "ORU_R01").glob("v*.yaml"):
        path.write_text("system: hl7\nkind: [unclosed\n")
    monkeypatch.setenv("CGTHUB_MAPPINGS_DIR", str(root))
    settings.get_settings.cache_clear()
    registry.clear_cache()
    with session_scope(db_url) as s:
        ledger.append(s, enrolment(1))
    with Running(db_url, apply=True) as running:
        answers = [exchange(running.port, frame(message), 1)[0] for message in (ORM, ORU)]
    registry.clear_cache()
    assert [ack_code(a) for a in answers] == ["AA", "AE"]  # the ORM applied; the ORU waits for its file
    with session_scope(db_url) as s:
        (reason,) = s.scalars(select(QuarantineEntry.reason))
    # The operator is told which file and line to fix (not "an unexpected MappingError"), in the
    # quarantine reason and the ACK's ERR-8, and that the message waits for a replay.
    where = re.escape(str(root / "hl7" / "ORU_R01")) + r"/v\d+\.yaml:3: not valid YAML"
    assert re.search(f"could not be applied: its mapping file does not load: {where}", reason), reason
    assert reason.endswith("; it is archived, replay it once the cause is fixed"), reason
    assert re.search(where.encode(), answers[1].split(b"\r")[2]), answers[1]  # ERR-8
