"""Mapping speed on one core: compiled mappings vs a naive interpreter of the same YAML, same run.

Prints records/s for a 20-field JSON mapping and for the HL7 ORM^O01 mapping (the fast path as it
serves: the rules as generated Python; and the compiled reference path it hands over to: closures
plus pydantic), beside two naive baselines in the same run: one that walks the parsed YAML rules
for every record (no compilation: JMESPath parsed per use, transforms looked up by name, paths split
per record), and one that also reads the YAML for every record (the issue's "interprets the YAML per
record"); and the ratios. Also the decoding alone (orjson.loads, a plain split), which every path
pays first: a reading of the machine, which this VM changes by two to three times between sessions;
bench/mapping_instructions.py counts the fast path's instructions instead, which do not move.
Target: >= 100,000 JSON records/s and >= 20x the naive baseline.
Run: .venv/bin/python -m bench.mapping_bench [--records N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jmespath
import orjson
import yaml

from cgthub import hl7v2, runtime
from cgthub.devtools.samples import json_record
from cgthub.identifiers import normalize_din, validate_coi_id
from cgthub.mapping import registry
from cgthub.mapping.transforms import parse_datetime, zone
from cgthub.model import CanonicalEvent
from cgthub.pseudonym import pseudonymize

HERE = Path(__file__).parent
JSON_MAPPING = HERE / "mappings" / "crm" / "order_record" / "v1.yaml"
HL7_MAPPING = registry.mappings_dir() / "hl7" / "ORM_O01" / "v1.yaml"
NOW = datetime(2026, 3, 2, tzinfo=UTC)


def hl7_record(n: int) -> bytes:
    return (
        f"MSH|^~\\&|EPIC|US-BOS-01|CGTHUB|HUB|20260303112000||ORM^O01|BOS{n:08d}|P|2.5.1\r"
        f"PID|1||MRN{n:08d}^^^US-BOS-01^MR~CHW123426{n % 1_000_000:06d}^^^COI^PN||Doe^Jane||19700101|F\r"
        f"ORC|NW|PL-{n}|FL-{n}|CRM-{n:06d}|SC||||20260303112000\r"
        f"OBR|1|PL-{n}|FL-{n}|APH^Apheresis collection^L|||20260309080000\r"
    ).encode()


class NaiveMapper:
    """The same YAML, interpreted rule by rule for every record: what a mapping engine without a
    compile step does. `reload=True` also reads the YAML text for every record, as the issue's
    baseline ("interprets the YAML per record") does; without it the parsed rules are kept."""

    def __init__(self, path: Path, *, reload: bool = False) -> None:
        self.path, self.reload = path, reload
        self.spec = yaml.safe_load(path.read_text())

    def map(self, payload: bytes) -> list[CanonicalEvent]:
        if self.reload:
            self.spec = yaml.safe_load(self.path.read_text())
        spec = self.spec
        record: Any = hl7v2.parse(payload) if spec["format"] == "hl7" else json.loads(payload)
        out = []
        for rule in spec["events"]:
            if not all(self._test(record, c) for c in rule.get("when", [])):
                continue
            tree: dict[str, Any] = {
                "source_system": spec["system"],
                "event_type": rule["event_type"],
                "received_at": NOW,
                "provenance": {"mapping_id": f"{spec['system']}/{spec['kind']}", "mapping_version": "v1"},
            }
            for target, frule in rule["fields"].items():
                value = self._value(record, frule)
                if value is None:
                    continue
                node = tree
                keys = target.split(".")
                for key in keys[:-1]:
                    node = node.setdefault(key, {})
                node[keys[-1]] = value
            out.append(CanonicalEvent.model_validate(tree))
        return out

    def _get(self, record: Any, expr: str) -> Any:
        if self.spec["format"] == "hl7":
            return record.get(expr) or None
        return jmespath.search(expr, record)

    def _test(self, record: Any, cond: dict[str, Any]) -> bool:
        value = self._get(record, cond["from"])
        if "equals" in cond:
            return str(value) == str(cond["equals"])
        if "not_in" in cond:
            return str(value) not in [str(v) for v in cond["not_in"]]
        return True

    def _value(self, record: Any, frule: dict[str, Any]) -> Any:
        value = self._get(record, frule["from"]) if "from" in frule else frule.get("value")
        if value in (None, ""):
            return None
        transforms = frule.get("transform", [])
        for name in [transforms] if isinstance(transforms, str) else transforms:
            kind, _, arg = name.partition(":")
            if kind == "datetime":
                value = parse_datetime(value, zone(self.spec.get("source_time_zone", "UTC")))
            elif kind == "prefix":
                value = arg + str(value)
            elif kind == "suffix":
                value = str(value) + arg
            elif kind == "upper":
                value = str(value).upper()
            elif kind == "float":
                value = float(value)
            elif kind == "int":
                value = int(value)
            elif kind == "din":
                value = normalize_din(str(value))
            elif kind == "coi":
                value = validate_coi_id(str(value))
            elif kind == "pseudonymize":
                value = pseudonymize(arg, str(value))
        if "map" in frule:
            value = self.spec["code_maps"][frule["map"]][str(value)]
        return value


def _comparable(event: CanonicalEvent) -> dict[str, Any]:
    return {k: v for k, v in event.to_json_dict().items() if k != "provenance"}


def _split_hl7(payload: bytes) -> list[list[str]]:
    return [segment.split("|") for segment in payload.decode().split("\r") if segment]


# What every mapping of a format pays before any rule: the figure to read the others against,
# since this VM's speed swings two to three times between sessions (and within one).
DECODERS: dict[Any, tuple[str, Any]] = {json_record: ("orjson.loads", orjson.loads), hl7_record: ("split", _split_hl7)}


def measure(label: str, fn: Any, payloads: list[bytes]) -> float:
    for payload in payloads[:200]:
        fn(payload)  # warm caches
    started = time.perf_counter()
    for payload in payloads:
        fn(payload)
    rate = len(payloads) / (time.perf_counter() - started)
    print(f"  {label:<28} {rate:>12,.0f} records/s")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000)
    args = parser.parse_args()
    runtime.tune_gc()
    for title, path, make in (
        ("20-field JSON mapping", JSON_MAPPING, json_record),
        ("HL7 ORM^O01 mapping", HL7_MAPPING, hl7_record),
    ):
        payloads = [make(n) for n in range(args.records)]
        compiled = registry.compile_file(path)
        naive = NaiveMapper(path)
        same = [_comparable(e) for e in compiled.map(payloads[0], raw_id=None, checksum="", received_at=NOW)]
        if same != [_comparable(e) for e in naive.map(payloads[0])]:
            raise SystemExit(f"{title}: the naive baseline does not produce the same events; the comparison is void")
        rules = len(compiled.events)
        generated = sum(e.fast is not None for e in compiled.events)
        print(f"{title} ({args.records:,} records, one core; of {rules} rules {generated} run as generated Python):")
        fast = measure(
            "compiled, fast path", lambda p, m=compiled: m.map(p, raw_id=1, checksum="", received_at=NOW), payloads
        )
        os.environ["CGTHUB_MAPPING_FASTPATH"] = "0"
        reference = registry.compile_file(path)
        del os.environ["CGTHUB_MAPPING_FASTPATH"]
        measure(
            "compiled, reference path",
            lambda p, m=reference: m.map(p, raw_id=1, checksum="", received_at=NOW),
            payloads[: max(1, args.records // 2)],
        )
        slow = measure("naive, rules walked", naive.map, payloads[: max(1, args.records // 5)])
        reread = NaiveMapper(path, reload=True)
        slowest = measure("naive, YAML read per record", reread.map, payloads[: max(1, args.records // 100)])
        decode = measure(f"decode only ({DECODERS[make][0]})", DECODERS[make][1], payloads)
        print(f"  {'ratio to rules walked':<28} {fast / slow:>12.1f}x")
        print(f"  {'ratio to YAML per record':<28} {fast / slowest:>12.1f}x")
        print(f"  {'fast path / decode only':<28} {fast / decode:>12.1%}   (same records, same run)")


if __name__ == "__main__":
    main()
