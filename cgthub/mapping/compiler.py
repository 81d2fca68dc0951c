"""Compile a mapping spec into plain Python callables, once, and run them per payload.

Nothing is interpreted per record: each field becomes a closure that reads its source (an HL7
terser path, a dotted JSON path as chained lookups, or a compiled JMESPath expression), applies
its transforms and code map, and validates. `CompiledMapping.map` satisfies
`cgthub.pipeline.Mapper`; a failure raises `PayloadRejected` naming the rule, the field, the source
expression and the shape of the offending value, never the value itself.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import compress
from typing import Any

import jmespath
import jmespath.exceptions
import orjson
from lxml import etree
from pydantic import ValidationError

from cgthub import conflicts, hl7v2
from cgthub.errors import CgthubError, PayloadRejected
from cgthub.mapping import codegen, construct
from cgthub.mapping.spec import DOTTED_PATH, EventRule, FieldRule, LoadedSpec
from cgthub.mapping.transforms import TransformError, compile_transform, zone
from cgthub.model import CanonicalEvent, Provenance
from cgthub.pseudonym import mask, pseudonymize
from cgthub.quarantine import Stage

Getter = Callable[[Any], Any]
_ABSENT = object()
# Canonical fields every event must get from its rule.
REQUIRED_TARGETS = ("source_event_id", "occurred_at")
_TARGET_ROOTS = {
    "source_event_id",
    "occurred_at",
    "order_id",
    "refs",
    "patient",
    "order",
    "material",
    "shipment",
    "custody",
    "scheduled_for",
    "reason",
    "attributes",
    "supersedes",
    "former_id",
}


class FieldFailure(CgthubError):
    def __init__(self, stage: Stage, problem: str) -> None:
        super().__init__(problem)
        self.stage, self.problem = stage, problem


@dataclass
class FieldPlan:
    """The parts of one compiled field, for the code generator (`cgthub.mapping.codegen`)."""

    label: str
    sources: list[str]
    getters: list[Getter]
    constant: Any
    default: Any
    separator: str
    required: bool
    transforms: list[tuple[str, Callable[[Any], Any]]]  # (the transform as written, its function)
    table: dict[str, Any] | None
    pattern: re.Pattern[str] | None
    allowed: set[str] | None


@dataclass
class CompiledField:
    target: tuple[str, ...]
    source: str
    evaluate: Callable[[Any], Any]
    put: Callable[[dict[str, Any], Any], None]  # sets the value at `target` in an event tree
    plan: FieldPlan


def _setter(path: tuple[str, ...]) -> Callable[[dict[str, Any], Any], None]:
    if len(path) == 1:
        (key,) = path

        def put_top(tree: dict[str, Any], value: Any) -> None:
            tree[key] = value

        return put_top
    if len(path) == 2:
        parent, key = path

        def put_nested(tree: dict[str, Any], value: Any) -> None:
            node = tree.get(parent)
            if node is None:
                node = tree[parent] = {}
            node[key] = value

        return put_nested
    return lambda tree, value: _put(tree, path, value)


def _transform_step(transform: Callable[[Any], Any], label: str, shown: Callable[[Any], str]) -> Callable[[Any], Any]:
    def step(value: Any) -> Any:
        try:
            return transform(value)
        except TransformError as exc:
            raise FieldFailure(Stage.MAP, f"{label}: value {shown(value)} {exc}") from exc
        except Exception as exc:  # e.g. a date past year 9999: the payload's problem, not the hub's
            problem = f"cannot be read ({type(exc).__name__})"
            raise FieldFailure(Stage.MAP, f"{label}: value {shown(value)} {problem}") from exc

    return step


@dataclass
class CompiledEvent:
    rule: EventRule
    conditions: list[Callable[[Any], bool]]
    fields: list[CompiledField] = field(default_factory=list)
    fast: codegen.FastBuild | None = None  # the generated fast path, where the rule's shape allows one
    fast_source: str = ""


def _hl7_getter(expr: str) -> Getter:
    """The path is parsed here, once (a malformed one fails the compile), not per message."""
    path = hl7v2.parse_path(expr)
    name, occurrence = path.segment, path.segment_rep
    field, repetition, component, sub = path.field, path.repetition, path.component, path.subcomponent

    def get(message: hl7v2.Message) -> Any:
        segment = message.segment(name, occurrence)
        return (segment.get(field, repetition, component, sub) or None) if segment is not None else None

    return get


def _json_getter(expr: str) -> Getter:
    if DOTTED_PATH.match(expr):
        keys = expr.split(".")
        if len(keys) == 1:
            key = keys[0]
            return lambda record: record.get(key) if isinstance(record, dict) else None

        def get(record: Any) -> Any:
            for key in keys:
                if not isinstance(record, dict):
                    return None
                record = record.get(key)
            return record

        return get
    return jmespath.compile(expr).search


def _condition(getter: Getter, rule: Any) -> Callable[[Any], bool]:
    exists, equals = rule.exists, None if rule.equals is None else str(rule.equals)
    among = None if rule.in_ is None else frozenset(str(v) for v in rule.in_)
    excluded = None if rule.not_in is None else frozenset(str(v) for v in rule.not_in)

    def test(record: Any) -> bool:
        value = getter(record)
        if exists is not None and (value not in (None, "")) != exists:
            return False
        text = str(value)
        if equals is not None and text != equals:
            return False
        if among is not None and text not in among:
            return False
        return not (excluded is not None and text in excluded)

    return test


class CompiledMapping:
    """One mapping version, compiled; optionally specialized for a market (code maps, residency)."""

    def __init__(self, loaded: LoadedSpec, *, market: dict[str, Any] | None = None) -> None:
        spec = loaded.spec
        self.loaded = loaded
        self.spec = spec
        self.mapping_id = spec.mapping_id
        self.version = f"v{spec.version}"
        self.market = (market or {}).get("market")
        try:
            self.tz = zone(spec.source_time_zone)
        except ValueError as exc:
            raise loaded.error(str(exc), at=("source_time_zone",)) from exc
        self.code_maps = {name: {str(k): v for k, v in table.items()} for name, table in spec.code_maps.items()}
        for name, table in ((market or {}).get("code_maps") or {}).items():
            self.code_maps[name] = {**self.code_maps.get(name, {}), **{str(k): v for k, v in table.items()}}
        residency = {**spec.residency, **((market or {}).get("residency") or {})}
        self.drop = [tuple(p.split(".")) for p in residency.get("drop", [])]
        self.tokenize = [tuple(p.split(".")) for p in residency.get("tokenize", [])]
        self._get = _hl7_getter if spec.format == "hl7" else _json_getter
        self._hl7, self._json = spec.format == "hl7", spec.format == "json"
        try:
            self._records = jmespath.compile(spec.records).search if spec.records else None
        except jmespath.exceptions.ParseError as exc:
            raise loaded.error(f"records expression: {exc}", at=("records",)) from exc
        self.events = [self._compile_event(i, rule) for i, rule in enumerate(spec.events)]
        filled = {target for rule in spec.events for target in rule.fields}
        for i, name in enumerate(spec.resend_ignores):  # a misspelt name would ignore nothing, silently
            if not any(t == name or t.startswith(f"{name}.") for t in filled):
                raise loaded.error(f"resend_ignores: {name!r} is no field a rule fills", at=("resend_ignores", i))
        conflicts.declare_resend_ignores(self.mapping_id, self.version, spec.resend_ignores)
        self._select: Callable[[Any], list[bool]] | None = None
        self.select_source = ""
        if codegen.enabled():
            self._select, self.select_source = codegen.generate_selector(self)
            for event in self.events:
                try:
                    event.fast, event.fast_source = codegen.generate(self, event)
                except codegen.NoFastPath as exc:
                    event.fast_source = f"# no fast path: {exc}"
        # The CSV columns the rules read: a file whose header lacks them is not this export.
        self._columns = {
            source
            for rule in spec.events
            for source in [c.source for c in rule.when]
            + [s for f in rule.fields.values() for s in ([f.source] if isinstance(f.source, str) else f.source or [])]
        }

    # compile -----------------------------------------------------------------------------------
    def _compile_event(self, index: int, rule: EventRule) -> CompiledEvent:
        at = ("events", index)
        missing = [t for t in REQUIRED_TARGETS if t not in rule.fields]
        if missing:
            raise self.loaded.error(f"every event needs {', '.join(missing)}", rule=rule.name, at=(*at, "fields"))
        conditions = []
        for c_index, cond in enumerate(rule.when):
            try:
                conditions.append(_condition(self._get(cond.source), cond))
            except (ValueError, jmespath.exceptions.ParseError) as exc:
                raise self.loaded.error(
                    f"condition source {cond.source!r}: {exc}", rule=rule.name, at=(*at, "when", c_index)
                ) from exc
        compiled = CompiledEvent(rule, conditions)
        for target, frule in rule.fields.items():
            where = (*at, "fields", target)
            if target.split(".")[0] not in _TARGET_ROOTS:
                raise self.loaded.error(f"unknown canonical field {target!r}", rule=rule.name, at=where)
            try:
                compiled.fields.append(self._compile_field(rule.name, target, frule))
            except (ValueError, jmespath.exceptions.ParseError) as exc:
                raise self.loaded.error(f"field {target!r}: {exc}", rule=rule.name, at=where) from exc
        return compiled

    def _compile_field(self, rule_name: str, target: str, rule: FieldRule) -> CompiledField:
        sources = [rule.source] if isinstance(rule.source, str) else list(rule.source or [])
        getters = [self._get(s) for s in sources]
        transforms = [compile_transform(t, self.tz) for t in rule.transform]
        table = None
        if rule.map is not None:
            if rule.map not in self.code_maps:
                raise ValueError(f"code map {rule.map!r} is not defined in code_maps")
            table = self.code_maps[rule.map]
        pattern = re.compile(rule.pattern) if rule.pattern else None
        allowed = {str(a) for a in rule.allowed} if rule.allowed is not None else None
        constant, default, separator, required = rule.value, rule.default, rule.separator, rule.required
        source_text = " + ".join(sources) if sources else "constant"
        label = f"rule {rule_name!r} field {target!r} (from {source_text})"
        phi = target.startswith("patient.")

        def shown(value: Any) -> str:
            return mask(value) if phi else repr(value)[:60]

        # Everything that can be decided now is: the closure below runs only the steps this field has.
        read: Getter
        if constant is not None:

            def read_constant(_record: Any) -> Any:
                return constant

            read = read_constant
        elif len(getters) == 1:
            read = getters[0]
        else:

            def read_joined(record: Any) -> Any:
                present = [str(p) for p in (g(record) for g in getters) if p not in (None, "")]
                return separator.join(present) if present else None

            read = read_joined

        steps: list[Callable[[Any], Any]] = [_transform_step(t, label, shown) for t in transforms]
        if table is not None:
            name = rule.map

            def mapped(value: Any) -> Any:
                found = table.get(str(value), _ABSENT)
                if found is _ABSENT:
                    raise FieldFailure(Stage.MAP, f"{label}: value {shown(value)} is not in code map {name!r}")
                return found

            steps.append(mapped)
        if pattern is not None:

            def matches(value: Any) -> Any:
                if not pattern.fullmatch(str(value)):
                    raise FieldFailure(
                        Stage.VALIDATE, f"{label}: value {shown(value)} does not match {pattern.pattern!r}"
                    )
                return value

            steps.append(matches)
        if allowed is not None:

            def admitted(value: Any) -> Any:
                if str(value) not in allowed:
                    raise FieldFailure(Stage.VALIDATE, f"{label}: value {shown(value)} is not one of {sorted(allowed)}")
                return value

            steps.append(admitted)

        def evaluate(record: Any) -> Any:
            value = read(record)
            if value is None or value == "" or value == []:
                value = default
                if value is None:
                    if required:
                        raise FieldFailure(Stage.VALIDATE, f"{label}: required value is missing")
                    return _ABSENT
            for step in steps:
                value = step(value)
            return value

        plan = FieldPlan(
            label,
            sources,
            getters,
            constant,
            default,
            separator,
            required,
            list(zip(rule.transform, transforms, strict=True)),
            table,
            pattern,
            allowed,
        )
        path = tuple(target.split("."))
        return CompiledField(path, source_text, evaluate, _setter(path), plan)

    # run ---------------------------------------------------------------------------------------
    def records(self, payload: bytes) -> list[Any]:
        """The payload parsed into the records the rules read (one HL7 message, JSON objects, CSV rows)."""
        fmt = self.spec.format
        try:
            if fmt == "hl7":
                return [hl7v2.parse(payload)]
            if fmt == "csv":
                reader = csv.DictReader(io.StringIO(payload.decode("utf-8-sig")))
                missing = sorted(self._columns - set(reader.fieldnames or []))
                if missing:
                    raise ValueError(f"the CSV header lacks the columns {missing}")
                return list(reader)
            data = _load_json(payload) if fmt == "json" else _xml_to_dict(payload)
            return self._split(data)
        except hl7v2.HL7ParseError as exc:
            raise PayloadRejected(Stage.PARSE, f"{self.mapping_id}: not a valid HL7 message: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise PayloadRejected(
                Stage.PARSE, f"{self.mapping_id}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from exc
        except (ValueError, etree.XMLSyntaxError, UnicodeDecodeError) as exc:
            raise PayloadRejected(Stage.PARSE, f"{self.mapping_id}: cannot parse the {fmt} payload: {exc}") from exc
        except RecursionError as exc:  # a document nested deeper than the parser's stack: the sender's to fix
            raise PayloadRejected(
                Stage.PARSE, f"{self.mapping_id}: cannot parse the {fmt} payload: it is nested too deep"
            ) from exc

    def _split(self, data: Any) -> list[Any]:
        """A parsed JSON or XML document's records (raises ValueError where it has none)."""
        if self._records is not None:
            found = self._records(data)
            if found is None and not _has_parent(data, self.spec.records or ""):
                raise ValueError(f"no records at {self.spec.records!r}")
            data = found if found is not None else []  # the container is there and empty
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(item, dict) for item in items):
            raise ValueError("expected objects (one record or a list of records)")
        return items

    def _json_records(self, payload: bytes) -> list[Any]:
        """`records` for JSON, the way most payloads take: orjson, then the records. Whatever does
        not go through cleanly goes through `records` again, which decides in its own words."""
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return self.records(payload)
        if type(data) is dict and self._records is None:
            return [data]
        try:
            return self._split(data)
        except ValueError:
            return self.records(payload)

    def map(
        self,
        payload: bytes,
        *,
        raw_id: int | None,
        checksum: str,
        received_at: datetime,
        parsed: hl7v2.Message | None = None,
    ) -> list[CanonicalEvent]:
        """The payload's canonical events. `parsed`: the HL7 message as `hl7v2.parse(payload)` already
        gave it to the listener (which read its MSH), so it is not parsed twice."""
        return self._map(payload, raw_id, checksum, received_at, None, parsed)

    def map_by_rule(
        self, payload: bytes, *, raw_id: int | None, checksum: str, received_at: datetime
    ) -> list[tuple[str, CanonicalEvent]]:
        """Like `map`, with the name of the rule that made each event (fixtures check coverage)."""
        names: list[str] = []
        events = self._map(payload, raw_id, checksum, received_at, names, None)
        return list(zip(names, events, strict=True))

    def _map(
        self,
        payload: bytes,
        raw_id: int | None,
        checksum: str,
        received_at: datetime,
        names: list[str] | None,
        parsed: hl7v2.Message | None,
    ) -> list[CanonicalEvent]:
        provenance = {
            "mapping_id": self.mapping_id,
            "mapping_version": self.version,
            "raw_id": raw_id,
            "raw_checksum": checksum,
        }
        built_provenance: Any = None  # the model, shared by the payload's events, once a fast build needs it
        out: list[CanonicalEvent] = []
        if parsed is not None and self._hl7:
            records = [parsed]
        elif self._json:
            records = self._json_records(payload)
        else:
            records = self.records(payload)
        select, events = self._select, self.events
        for number, record in enumerate(records, start=1):
            taken = False
            chosen = None
            if select is not None:
                try:
                    chosen = select(record)
                except Exception:  # a read that raises: the reference conditions decide, in their order
                    chosen = None
            # The rules that hold, in order; without the selector's answers each is tested only
            # when its turn comes, as the reference does.
            for event in compress(events, chosen) if chosen is not None else _holding(events, record):
                made = None
                fast = event.fast
                if fast is not None:
                    if built_provenance is None:
                        built_provenance = _provenance(provenance)
                    if built_provenance is not False:
                        try:
                            made = fast(record, built_provenance, received_at)
                        except Exception:  # unsure: the reference path decides, in its own words
                            made = None
                if made is None:
                    made = self._build(event, record, provenance, received_at)
                out.append(made)
                if names is not None:
                    names.append(event.rule.name)
                taken = True
            if not taken and self.spec.unmatched == "reject":
                seen = self._condition_values(record)
                raise PayloadRejected(
                    Stage.MAP,
                    f"{self.mapping_id}@{self.version}: record {number} matches no rule ({seen}); "
                    "an unknown code? add a rule or a code-map entry, then replay",
                    {"mapping": self.mapping_id, "version": self.version},
                )
        return out

    def _condition_values(self, record: Any) -> str:
        """The values the rules' conditions looked at (codes, not patient data)."""
        sources = dict.fromkeys(c.source for e in self.spec.events for c in e.when)
        shown = []
        for source in sources:
            value = self._get(source)(record)
            shown.append(f"{source}={str(value)[:40]!r}")
        return ", ".join(shown) or "no conditions"

    def _build(
        self, event: CompiledEvent, record: Any, provenance: dict[str, Any], received_at: datetime
    ) -> CanonicalEvent:
        tree: dict[str, Any] = {
            "source_system": self.spec.system.value,
            "event_type": event.rule.event_type.value,
            "received_at": received_at,
            "provenance": provenance,
        }
        try:
            for compiled in event.fields:
                value = compiled.evaluate(record)
                if value is not _ABSENT:
                    compiled.put(tree, value)
        except FieldFailure as failure:
            raise PayloadRejected(
                failure.stage,
                f"{self.mapping_id}@{self.version}: {failure.problem}",
                {"mapping": self.mapping_id, "version": self.version, "rule": event.rule.name},
            ) from failure
        self._apply_residency(tree)
        try:
            return CanonicalEvent.model_validate(tree)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_input=False)
            )
            raise PayloadRejected(
                Stage.VALIDATE,
                f"{self.mapping_id}@{self.version}: rule {event.rule.name!r} made an invalid event: {problems}",
                {"mapping": self.mapping_id, "version": self.version, "rule": event.rule.name},
            ) from exc

    def _apply_residency(self, tree: dict[str, Any]) -> None:
        """Fields that must not leave the market: dropped, or replaced by a keyed token."""
        for path in self.drop:
            _pop(tree, path)
        for path in self.tokenize:
            value = _pop(tree, path)
            if value is not None:
                _put(tree, path, pseudonymize(path[-1], str(value)))


def _holds(event: CompiledEvent, record: Any) -> bool:
    """The reference test of a rule's conditions, in their order, stopping at the first false one."""
    return all(test(record) for test in event.conditions)


def _holding(events: list[CompiledEvent], record: Any) -> Iterator[CompiledEvent]:
    """The events whose conditions hold, each tested when the caller asks for the next."""
    for event in events:
        if _holds(event, record):
            yield event


def _provenance(provenance: dict[str, Any]) -> Provenance | bool:
    """The payload's provenance as a model, shared by its events (it is frozen); False where a value
    is not of its field's type, and the reference path lets pydantic say so."""
    mapping_id, version = provenance["mapping_id"], provenance["mapping_version"]
    raw_id, checksum = provenance["raw_id"], provenance["raw_checksum"]
    if not (
        (raw_id is None or type(raw_id) is int)
        and (checksum is None or type(checksum) is str)
        and type(mapping_id) is str
        and type(version) is str
    ):
        return False
    values = {"mapping_id": mapping_id, "mapping_version": version, "raw_id": raw_id, "raw_checksum": checksum}
    return construct.instance(Provenance, values, set(_PROVENANCE_SET))  # type: ignore[no-any-return]


_PROVENANCE_FIELDS = tuple(Provenance.model_fields)  # pydantic keeps fields in declaration order
if _PROVENANCE_FIELDS != ("mapping_id", "mapping_version", "raw_id", "raw_checksum"):  # `_provenance` lists them
    raise RuntimeError(f"Provenance's fields changed to {_PROVENANCE_FIELDS}: update mapping.compiler._provenance")
_PROVENANCE_SET = frozenset(_PROVENANCE_FIELDS)


def _load_json(payload: bytes) -> Any:
    """orjson (about four times the standard library's speed); what it refuses goes through `json`,
    which parses what it can (NaN, integers beyond 64 bits) and words the error as before. A document
    nested past orjson's depth limit is refused as it is: `json` would recurse into it until Python's
    own limit (a RecursionError, which read as a mapping's fault) or the stack's."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise ValueError(f"the JSON is nested deeper than the hub reads ({_JSON_DEPTH:,} levels)") from None
        return json.loads(payload)


_JSON_DEPTH = 1024  # orjson's depth limit (arrays and objects)


def _has_parent(data: Any, expression: str) -> bool:
    """For a dotted records path, whether everything above the last step is there (an empty answer)."""
    if not DOTTED_PATH.match(expression):
        return False
    node = data
    for key in expression.split(".")[:-1]:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _put(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _pop(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = tree
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
    return node.pop(path[-1], None) if isinstance(node, dict) else None


_XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _xml_to_dict(payload: bytes) -> dict[str, Any]:
    """XML (e.g. a SOAP response) as nested dicts keyed by local names; repeated elements become lists.

    DTDs, entities and network access are refused, as in zeep's hardened settings.
    """
    root = etree.fromstring(payload, parser=_XML_PARSER)
    if root.getroottree().docinfo.internalDTD is not None:
        raise ValueError("DTDs are not accepted")

    def convert(element: Any) -> Any:
        children = [c for c in element if isinstance(c.tag, str)]
        if not children:
            return (element.text or "").strip()
        out: dict[str, Any] = {}
        for child in children:
            name = etree.QName(child).localname
            value = convert(child)
            if name in out:
                existing = out[name]
                out[name] = [*existing, value] if isinstance(existing, list) else [existing, value]
            else:
                out[name] = value
        return out

    return {etree.QName(root).localname: convert(root)}
