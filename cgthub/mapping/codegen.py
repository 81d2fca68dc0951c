"""Generate one straight-line Python function per event rule: a compiled mapping's fast path.

The closures in `compiler` are the reference: each field reads, transforms, maps and validates
through a few nested calls, the event tree is then validated by pydantic. Most of that work for
a 20-field record re-establishes what the mapping already knows. The function
generated here does the same work inline, from the same compiled pieces (getters, transforms,
code maps), and builds the canonical event's models directly. At run time it checks only what the
steps have not established: a `din` transform's output is a valid DIN, a `datetime` transform's an
aware datetime, an HL7 read a string; a raw JSON value must still be shown to be a string.

Whatever it is not sure of (a transform that refuses, a value outside a code map, a value it cannot
vouch for) raises, and the caller runs the reference path for that record, which returns the same
event or rejects the payload in its usual words. So the fast path never decides a rejection and
never accepts what the reference would refuse; `tests/test_mapping_codegen.py` compares the two
on every shipped fixture and on mutated payloads. `CGTHUB_MAPPING_FASTPATH=0` turns it off.
docs/mapping-fastpath.md tells how the pieces fit and what the fast path costs.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import annotated_types
from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo
from pydantic.functional_validators import AfterValidator

from cgthub import hl7v2
from cgthub import model as canonical
from cgthub.errors import CgthubError
from cgthub.mapping import construct
from cgthub.mapping.spec import DOTTED_PATH
from cgthub.mapping.transforms import INLINE
from cgthub.pseudonym import pseudonymize
from cgthub.settings import get_settings

if TYPE_CHECKING:
    from cgthub.mapping.compiler import CompiledEvent, CompiledField, CompiledMapping

FastBuild = Callable[[Any, Any, datetime], canonical.CanonicalEvent]

_TOKEN_KIND = re.compile(r"^[a-z_]+$")
_PROVIDED = ("source_system", "event_type", "received_at", "provenance")  # set by the caller, not by rules

# What a transform's output is known to be. `token`: a pseudonym the model's check accepts.
_TRANSFORM_FACTS: dict[str, frozenset[str]] = {
    "datetime": frozenset({"aware_datetime"}),
    "din": frozenset({"str", "din"}),
    "coi": frozenset({"str", "coi"}),
    "int": frozenset({"int"}),
    "float": frozenset({"float"}),
    "bool": frozenset({"bool"}),
    **{name: frozenset({"str"}) for name in ("upper", "lower", "strip", "str", "prefix", "suffix", "split")},
}
# Validators the model declares, and the fact that satisfies each.
_VALIDATOR_FACTS: dict[Any, str] = {canonical._din: "din", canonical._coi: "coi"}
_DICT_VALIDATOR_FACTS: dict[tuple[type[BaseModel], str], str] = {(canonical.PatientRef, "_only_tokens"): "token"}
_PLAIN_FACTS = {str: "str", int: "int", float: "float", bool: "bool", AwareDatetime: "aware_datetime"}


class NoFastPath(CgthubError):
    """This rule's shape is one the generator does not handle; the reference path serves it."""


def enabled() -> bool:
    return get_settings().mapping_fastpath and construct.FAST_BUILD_WORKS


def _constant_facts(value: Any) -> frozenset[str]:
    kind = type(value)
    if kind is str:
        return frozenset({"str"})
    if kind in (int, float, bool):
        return frozenset({kind.__name__})
    return frozenset()


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(annotation) if m is not type(None)]
        if len(members) == 1:
            return members[0], len(members) < len(typing.get_args(annotation))
    return annotation, False


def _proven(annotation: Any, metadata: list[Any], validators: list[Any], facts: frozenset[str]) -> bool:
    """Whether a value with these facts passes this field's validation unchanged."""
    if metadata or validators:
        return False
    inner, _optional = _strip_optional(annotation)
    if typing.get_origin(inner) is typing.Annotated:
        base, *extras = typing.get_args(inner)
        for extra in extras:
            if not (isinstance(extra, AfterValidator) and _VALIDATOR_FACTS.get(extra.func) in facts):
                return False
        inner = base
    if typing.get_origin(inner) in (typing.Union, types.UnionType):
        # A union of plain types (an attribute value): pydantic's smart mode keeps a value of exactly
        # one of them as it is, as `construct`'s check for such a union does.
        members = [m for m in typing.get_args(inner) if m is not type(None)]
        return all(m in (str, int, float, bool) for m in members) and any(_PLAIN_FACTS[m] in facts for m in members)
    fact = _PLAIN_FACTS.get(inner)
    return fact is not None and fact in facts


@dataclass
class _Leaf:
    var: str
    absent: bool  # may be absent at run time
    facts: frozenset[str]
    # A field residency drops: not placed, but its parents are there when it was (as in the
    # reference, which pops it from the tree and leaves its container, maybe empty).
    ghost_of: list[_Leaf] | None = None


@dataclass
class _ModelNode:
    model: type[BaseModel]
    children: dict[str, Any] = field(default_factory=dict)


@dataclass
class _DictNode:
    owner: type[BaseModel]
    name: str
    value_annotation: Any
    children: dict[str, _Leaf] = field(default_factory=dict)


def _place(node: _ModelNode, path: tuple[str, ...], leaf: _Leaf) -> None:
    key, rest = path[0], path[1:]
    info = node.model.model_fields.get(key)
    if info is None:
        raise NoFastPath(f"{key!r} is not a field of {node.model.__name__}")
    if not rest:
        if key in node.children:
            raise NoFastPath(f"{key!r} is set twice")
        node.children[key] = leaf
        return
    inner, _ = _strip_optional(info.annotation)
    child = node.children.get(key)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        if child is None:
            child = node.children[key] = _ModelNode(inner)
        if not isinstance(child, _ModelNode):
            raise NoFastPath(f"{key!r} is set whole and in parts")
        _place(child, rest, leaf)
        return
    if typing.get_origin(inner) is dict and len(rest) == 1 and typing.get_args(inner)[0] is str:
        if child is None:
            child = node.children[key] = _DictNode(node.model, key, typing.get_args(inner)[1])
        if not isinstance(child, _DictNode) or rest[0] in child.children:
            raise NoFastPath(f"{key!r} is set twice")
        child.children[rest[0]] = leaf
        return
    raise NoFastPath(f"cannot set {'.'.join(path)!r} inside {node.model.__name__}")


class _Writer:
    """The generated function's text and the objects its names refer to."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {
            "_A": construct.ABSENT,
            "_new": object.__new__,
            "_set": object.__setattr__,
            "_sd": construct.SET_DICT,
            "_sf": construct.SET_FIELDS_SET,
            "_sx": construct.SET_EXTRA,
            "_sp": construct.SET_PRIVATE,
            "_none": {}.get,  # what a path through a non-object reads: nothing
            "isinstance": isinstance,
            "dict": dict,
            "str": str,
            "type": type,
            "len": len,
            "float": float,
            "int": int,
            "bool": bool,
            "datetime": datetime,
        }
        self._count = 0
        self.cache: dict[str, str] = {}  # read prefixes already held in a local

    def name(self, value: Any, stem: str = "K") -> str:
        if stem == "K" and (value is None or type(value) in (bool, int, str) or value == ()):
            return repr(value)  # a literal: no name to look up
        self._count += 1
        key = f"{stem}{self._count}"
        self.names[key] = value
        return key

    def emit(self, line: str, depth: int = 1) -> None:
        self.lines.append("    " * depth + line)

    def function(self, name: str, parameters: str, filename: str) -> tuple[Any, str]:
        """The lines as a function, and its text. Every name the body uses is a variable of an
        enclosing factory: a cell, not a global, to look up, and free to bind (keyword defaults,
        the other way to make them locals, are looked up one by one on every call)."""
        outer = ", ".join(self.names)
        body = "\n".join("    " + line for line in self.lines)
        source = f"def _factory({outer}):\n    def {name}({parameters}):\n{body}\n    return {name}\n"
        namespace: dict[str, Any] = {}
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own generated text
        return namespace["_factory"](**self.names), source


def _json_read(writer: _Writer, expr: str) -> str:
    """An expression for a dotted JSON path, sharing the lookups of common prefixes. A prefix's
    local holds the `get` of the object it reaches (or `_none` where it reaches no object), tested
    once for every read below it."""
    keys = expr.split(".")
    holder = "g"
    value = ""
    for depth, key in enumerate(keys):
        prefix = ".".join(keys[: depth + 1])
        value = f"{holder}({key!r})"
        if depth < len(keys) - 1:
            local = writer.cache.get(prefix)
            if local is None:
                local = writer.cache[prefix] = f"p{len(writer.cache)}"
                writer.emit(f"{local} = {value}")
                writer.emit(f"{local} = {local}.get if isinstance({local}, dict) else _none")
            holder = local
    return value


def _hl7_read(writer: _Writer, expr: str) -> str:
    """An expression for an HL7 path's value (None for ""), after statements that read it: the
    path's own `hl7v2.read_code`, not a `Segment.get` call and its generic cuts (half the cost of a
    read). The separators and each segment's fields are locals, looked up once for all reads."""
    path = hl7v2.parse_path(expr)
    if "#separators" not in writer.cache:
        writer.cache["#separators"] = "sp"
        for line in hl7v2.separator_code("record.seps"):
            writer.emit(line)
    key = f"{path.segment}#{path.segment_rep}"
    local = writer.cache.get(key)
    if local is None:
        local = writer.cache[key] = f"s{len(writer.cache)}"
        writer.emit(f"{local} = record.segment({path.segment!r}, {path.segment_rep})")
        writer.emit(f"f{local} = {local}.fields if {local} is not None else ()")  # absent: every field ""
        writer.emit(f"n{local} = len(f{local})")
    for line in hl7v2.read_code(path, f"f{local}", f"n{local}"):
        writer.emit(line)
    return "(v or None)"


def _hl7_join(writer: _Writer, sources: list[str], separator: str) -> str:
    """An expression joining HL7 paths' values as `_join` does (the values present, by
    `separator`; None when none is), each read written out as `_hl7_read` writes it: a generic
    read per path cost about 28,000 instructions an event (an id from MSH-4 and MSH-10)."""
    parts = []
    for number, source in enumerate(sources):
        _hl7_read(writer, source)
        writer.emit(f"j{number} = v")  # a str, "" where absent: `filter` keeps what `_join` keeps
        parts.append(f"j{number}")
    return f"({writer.name(separator)}.join(filter(None, ({', '.join(parts)},))) or None)"


def _join(getters: list[Callable[[Any], Any]], separator: str) -> Callable[[Any], Any]:
    def read(record: Any) -> Any:
        present = [str(p) for p in (g(record) for g in getters) if p not in (None, "")]
        return separator.join(present) if present else None

    return read


def _emit_field(writer: _Writer, mapping: CompiledMapping, index: int, compiled: CompiledField) -> _Leaf:
    """The field's value into local `x<index>` (or the absent marker), with what is known of it."""
    plan = compiled.plan
    fmt = mapping.spec.format
    writer.emit(f"# {'.'.join(compiled.target)} <- {compiled.source!r}")  # repr: no line break gets in
    if plan.constant is not None:
        read, facts = writer.name(plan.constant), _constant_facts(plan.constant)
    elif len(plan.sources) == 1 and fmt == "hl7":
        read, facts = _hl7_read(writer, plan.sources[0]), frozenset({"str"})
    elif len(plan.sources) == 1 and fmt != "hl7" and DOTTED_PATH.match(plan.sources[0]):
        read, facts = _json_read(writer, plan.sources[0]), frozenset()
    elif len(plan.sources) == 1:
        read, facts = f"{writer.name(plan.getters[0], 'G')}(record)", frozenset()
    elif fmt == "hl7":
        read, facts = _hl7_join(writer, plan.sources, plan.separator), frozenset({"str"})
    else:
        read, facts = f"{writer.name(_join(plan.getters, plan.separator), 'J')}(record)", frozenset({"str"})
    writer.emit(f"v = {read}")
    absent = False
    # A value that is not falsy is none of the three (JSON, CSV, XML, HL7 and YAML values are all
    # built-in types): one truth test instead of three comparisons, the usual case.
    writer.emit('if not v and (v is None or v == "" or v == []):')
    if plan.default is not None:
        writer.emit(f"v = {writer.name(plan.default)}", 2)
        facts = facts & _constant_facts(plan.default)
    elif plan.required:
        writer.emit("raise LookupError", 2)
    else:
        writer.emit("v = _A", 2)
        absent = True
    depth = 2 if absent else 1
    guard = len(writer.lines)
    for written, function in plan.transforms:
        kind, _, arg = written.partition(":")
        writer.emit(f"v = {_transform_call(writer, kind, arg, function)}", depth)
        facts = transform_facts(kind, arg)
    if plan.table is not None:
        writer.emit(f"v = {writer.name(plan.table, 'M')}[str(v)]", depth)
        facts = table_facts(plan.table)
    if plan.pattern is not None:
        writer.emit(f"if not {writer.name(plan.pattern.fullmatch, 'P')}(str(v)):", depth)
        writer.emit("raise ValueError", depth + 1)
    if plan.allowed is not None:
        writer.emit(f"if str(v) not in {writer.name(frozenset(plan.allowed), 'S')}:", depth)
        writer.emit("raise ValueError", depth + 1)
    if absent and len(writer.lines) > guard:
        writer.lines.insert(guard, "    if v is not _A:")
    writer.emit(f"x{index} = v")
    return _Leaf(f"x{index}", absent, facts)


def transform_facts(kind: str, arg: str) -> frozenset[str]:
    """What a transform's output is known to be."""
    if kind == "pseudonymize":
        return frozenset({"str", "token"}) if _TOKEN_KIND.match(arg) else frozenset({"str"})
    return _TRANSFORM_FACTS.get(kind, frozenset())


def table_facts(table: dict[str, Any]) -> frozenset[str]:
    """What every value of a code map is known to be."""
    values = list(table.values())
    return frozenset.intersection(*(_constant_facts(v) for v in values)) if values else frozenset()


def _transform_call(writer: _Writer, kind: str, arg: str, function: Callable[[Any], Any]) -> str:
    """The transform applied to `v`: its expression written out where it is one, else a call."""
    template = INLINE.get(kind)
    if template is None or (kind == "pseudonymize" and not arg):
        return f"{writer.name(function, 'T')}(v)"
    bound = {"arg": lambda: writer.name(arg, "A"), "pseudonymize": lambda: writer.name(pseudonymize, "H")}
    return re.sub(r"\b(arg|pseudonymize)\b", lambda m: bound[m.group(1)](), template)


@dataclass(frozen=True)
class PlainCheck:
    """A field's check when it is a plain type: exactly `kind` (or None, when `optional`), and for
    a string a length in `low`..`high`. The generated Python writes it inline."""

    kind: Any  # str, int, bool, float or AwareDatetime
    optional: bool
    low: int | None = None
    high: int | None = None


def plain_check(annotation: Any, metadata: list[Any], validators: list[Any]) -> PlainCheck | None:
    """The field's check as a `PlainCheck`, or None where it needs the model's own."""
    if validators:
        return None
    inner, optional = _strip_optional(annotation)
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.MinLen):
            low = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            high = item.max_length
        else:
            return None
    if (low is not None or high is not None) and inner is not str:
        return None
    if inner in (str, int, bool, float, AwareDatetime):
        return PlainCheck(inner, optional, low, high)
    return None


def _inline_check(
    annotation: Any, metadata: list[Any], validators: list[Any], var: str, facts: frozenset[str] = frozenset()
) -> list[str] | None:
    """Plain-type checks as inline statements (a call per field costs more than the check), or None.
    A string the steps made is not tested for being one, only for its length."""
    shape = plain_check(annotation, metadata, validators)
    if shape is None:
        return None
    inner, optional, low, high = shape.kind, shape.optional, shape.low, shape.high
    none_ok = f"{var} is not None and " if optional else ""
    # The type test first: for the value the field expects, the only comparison made.
    none_after = f" and {var} is not None" if optional else ""
    if inner is str:
        lines = [] if "str" in facts else [f"if type({var}) is not str{none_after}:", "    raise TypeError"]
        if low is not None or high is not None:
            bounds = " or ".join(
                ([f"len({var}) < {low}"] if low is not None else [])
                + ([f"len({var}) > {high}"] if high is not None else [])
            )
            lines += [f"if {none_ok}({bounds}):", "    raise TypeError"]
        return lines
    if inner in (int, bool):
        return [f"if type({var}) is not {inner.__name__}{none_after}:", "    raise TypeError"]
    if inner is float:
        return [
            f"if {none_ok}type({var}) is not float:",
            f"    if type({var}) is not int:",
            "        raise TypeError",
            f"    {var} = float({var})",
        ]
    return [f"if {none_ok}(type({var}) is not datetime or {var}.utcoffset() is None):", "    raise TypeError"]


def _leaf_value(
    writer: _Writer, leaf: _Leaf, check: Callable[[Any], Any] | None, inline: list[str] | None = None
) -> str:
    """The expression placing a leaf, checked where its facts do not already prove it."""
    if (check is None and inline is None) or inline == []:
        return leaf.var
    lines = inline if inline is not None else [f"{leaf.var} = {writer.name(check, 'C')}({leaf.var})"]
    if (
        leaf.absent
        and len(lines) == 2
        and lines[0].startswith(f"if type({leaf.var}) is not ")
        and "(" not in lines[0][9:]
    ):
        # One type test, safe to make of the absent marker too (an object, of no field's type):
        # it goes first, the marker's test only where the type is not the field's.
        writer.emit(f"{lines[0][:-1]} and {leaf.var} is not _A:")
        writer.emit(lines[1])
    elif leaf.absent:
        writer.emit(f"if {leaf.var} is not _A:")
        for line in lines:
            writer.emit(line, 2)
    else:
        for line in lines:
            writer.emit(line)
    return leaf.var


def _presence(node: Any) -> str | None:
    """A run-time test for whether a node ends up in the tree, or None when it always does."""
    if isinstance(node, _Leaf) and node.ghost_of is not None:
        tests = [_presence(leaf) for leaf in node.ghost_of]
        return None if None in tests else " or ".join(f"({t})" for t in tests)
    if isinstance(node, _Leaf):
        return f"{node.var} is not _A" if node.absent else None
    tests = []
    for child in node.children.values():
        test = _presence(child)
        if test is None:
            return None
        tests.append(test)
    return " or ".join(f"({t})" for t in tests) or "False"


def _emit_model(writer: _Writer, node: _ModelNode, provided: dict[str, str] | None = None) -> str:
    """Build `node.model` from its children into a local; returns the local's name."""
    model = node.model
    values: dict[str, str] = {}
    conditional: list[tuple[str, str]] = []  # (field, presence test) for fields_set
    always: list[str] = list(provided or {})
    for name, info in model.model_fields.items():
        if provided and name in provided:
            values[name] = provided[name]
            continue
        child = node.children.get(name)
        default = _default_expr(writer, info)
        if child is None or (isinstance(child, _Leaf) and child.ghost_of is not None):
            if default is None:
                raise NoFastPath(f"{model.__name__}.{name} is required and no rule sets it")
            values[name] = default
            continue
        test = _presence(child)
        if isinstance(child, _Leaf):
            validators = _validators(model, name)
            if _proven(info.annotation, list(info.metadata), validators, child.facts):
                var = _leaf_value(writer, child, None)
            else:
                inline = _inline_check(info.annotation, list(info.metadata), validators, child.var, child.facts)
                var = _leaf_value(writer, child, construct.field_check(model, name, info), inline)
        elif isinstance(child, _ModelNode):
            var = _emit_node_guarded(writer, child, test, functools.partial(_emit_model, writer, child))
        else:
            var = _emit_node_guarded(writer, child, test, functools.partial(_emit_dict, writer, child))
        if test is None:
            values[name] = var
            always.append(name)
        else:
            if default is None:
                writer.emit(f"if not ({test}):")
                writer.emit("raise LookupError", 2)
                values[name] = var
            else:
                values[name] = f"({var} if {test} else {default})"
            conditional.append((name, test))
    local = f"o{writer._count}"
    writer._count += 1
    cls = writer.name(model, "M")
    writer.emit(f"{local}_fs = {set(always)!r}" if always else f"{local}_fs = set()")
    for name, test in conditional:
        writer.emit(f"if {test}:")
        writer.emit(f"{local}_fs.add({name!r})", 2)
    body = ", ".join(f"{name!r}: {expr}" for name, expr in values.items())
    writer.emit(f"{local} = _new({cls})")
    if construct.plain_slots(model):
        writer.emit(f"_sd({local}, {{{body}}})")
        writer.emit(f"_sf({local}, {local}_fs)")
        writer.emit(f"_sx({local}, None)")
        writer.emit(f"_sp({local}, None)")
        return local
    writer.emit(f"_set({local}, '__dict__', {{{body}}})")
    writer.emit(f"_set({local}, '__pydantic_fields_set__', {local}_fs)")
    writer.emit(f"_set({local}, '__pydantic_extra__', None)")
    writer.emit(f"_set({local}, '__pydantic_private__', None)")
    return local


def _emit_node_guarded(writer: _Writer, node: Any, test: str | None, emit: Callable[[], str]) -> str:
    """Emit a sub-node's construction, only when it is present (its parent's default otherwise)."""
    if test is None:
        return emit()
    # Build the node unconditionally would place defaults for an absent node: guard it.
    start = len(writer.lines)
    var = emit()
    body = writer.lines[start:]
    del writer.lines[start:]
    writer.emit(f"{var} = None")
    writer.emit(f"if {test}:")
    writer.lines.extend("    " + line for line in body)
    return var


def _emit_dict(writer: _Writer, node: _DictNode) -> str:
    local = f"d{writer._count}"
    writer._count += 1
    writer.emit(f"{local} = {{}}")
    value_check = construct.annotation_check(node.value_annotation)
    facts_all: frozenset[str] | None = None
    for key, leaf in node.children.items():
        if leaf.ghost_of is not None:
            continue
        proven = _proven(node.value_annotation, [], [], leaf.facts)
        facts_all = leaf.facts if facts_all is None else facts_all & leaf.facts
        inline = None if proven else _inline_check(node.value_annotation, [], [], leaf.var)
        var = _leaf_value(writer, leaf, None if proven else value_check, inline)
        if leaf.absent:
            writer.emit(f"if {var} is not _A:")
            writer.emit(f"{local}[{key!r}] = {var}", 2)
        else:
            writer.emit(f"{local}[{key!r}] = {var}")
    post = dict_check(node, facts_all)
    if post is not None:
        writer.emit(f"{local} = {writer.name(post, 'C')}({local})")
    return local


def dict_check(node: _DictNode, facts_all: frozenset[str] | None) -> Callable[[Any], Any] | None:
    """The model's check of the whole dict, or None where its entries' facts (`facts_all`, what
    every placed entry is known to be) prove what its validators ask."""
    info = node.owner.model_fields[node.name]
    validators = _validators(node.owner, node.name)
    proven_by = {_DICT_VALIDATOR_FACTS.get((node.owner, v.cls_var_name)) for v in validators}
    if list(info.metadata) or (validators and not (None not in proven_by and proven_by <= (facts_all or set()))):
        return construct.field_check(node.owner, node.name, info)
    return None


def _validators(model: type[BaseModel], name: str) -> list[Any]:
    return [
        d
        for d in model.__pydantic_decorators__.field_validators.values()
        if name in d.info.fields or "*" in d.info.fields
    ]


def default_of(info: FieldInfo) -> tuple[bool, Any] | None:
    """A field's default as (is a factory, the factory or the value), None where it is required."""
    if info.is_required():
        return None
    if info.default_factory is not None:
        return True, info.default_factory
    if construct.immutable(info.default):  # one shared value serves every instance
        return False, info.default
    raise NoFastPath(f"default {info.default!r} may be mutable")


def _default_expr(writer: _Writer, info: FieldInfo) -> str | None:
    default = default_of(info)
    if default is None:
        return None
    factory, value = default
    return f"{writer.name(value, 'F')}()" if factory else writer.name(value)


def generate_selector(mapping: CompiledMapping) -> tuple[Callable[[Any], list[bool]], str]:
    """One function that answers, for a record, which rules' conditions hold: the reads are shared
    (a source tested by several rules, as ORC-1 is, is read once; an HL7 segment looked up once),
    the code lists compared as sets.
    It evaluates every condition, where the reference stops at an event's first false one; a read
    that raises makes the caller fall back to the reference's own order."""
    writer = _Writer()
    if mapping.spec.format != "hl7":
        writer.emit("g = record.get")
    answers = []
    read_into: dict[str, str] = {}  # source -> the local holding its value (rules test the same fields)
    for e_index, event in enumerate(mapping.events):
        tests = []
        for c_index, cond in enumerate(event.rule.when):
            local = read_into.get(cond.source, "")
            if not local:
                if mapping.spec.format == "hl7":
                    read = _hl7_read(writer, cond.source)
                elif DOTTED_PATH.match(cond.source):
                    read = _json_read(writer, cond.source)
                else:
                    read = f"{writer.name(mapping._get(cond.source), 'G')}(record)"
                local = read_into[cond.source] = f"c{e_index}_{c_index}"
                writer.emit(f"{local} = {read}")
                compared = (c for e in mapping.events for c in e.rule.when if c.source == cond.source)
                if any(c.equals is not None or c.in_ is not None or c.not_in is not None for c in compared):
                    writer.emit(f"t{local} = str({local})")  # the text the comparisons test, made once
            text = f"t{local}"
            if cond.exists is not None:
                tests.append(f'(({local} is not None and {local} != "") == {cond.exists!r})')
            if cond.equals is not None:
                tests.append(f"{text} == {str(cond.equals)!r}")
            if cond.in_ is not None:
                tests.append(f"{text} in {writer.name(frozenset(str(v) for v in cond.in_), 'S')}")
            if cond.not_in is not None:
                tests.append(f"{text} not in {writer.name(frozenset(str(v) for v in cond.not_in), 'S')}")
        answers.append(" and ".join(f"({t})" for t in tests) or "True")
    # Every test is a comparison or a membership test, and `and` of bools is a bool: no `bool()` call.
    writer.emit(f"return [{', '.join(answers)}]")
    return writer.function("select", "record", f"<mapping {mapping.mapping_id}@{mapping.version} conditions>")


def residency(
    mapping: CompiledMapping,
    placed: list[tuple[tuple[str, ...], _Leaf]],
    tokenize: Callable[[_Leaf, Callable[[Any], str]], None],
) -> list[tuple[tuple[str, ...], _Leaf]]:
    """The market's residency over the placed leaves: a dropped field is still evaluated (its
    failures count) but becomes a ghost, not placed; a tokenized one gets `tokenize(leaf, function)`
    (code that replaces a present value by `function(value)`, and hands None to the reference)."""
    for path in mapping.drop:
        if path[0] in _PROVIDED or any(t[: len(path)] != path and path[: len(t)] == t for t, _ in placed):
            raise NoFastPath(f"residency drop {'.'.join(path)!r} reaches inside a value")
        dropped = [leaf for t, leaf in placed if t[: len(path)] == path]
        placed = [(t, leaf) for t, leaf in placed if t[: len(path)] != path]
        if dropped:
            placed.append((path, _Leaf("", True, frozenset(), ghost_of=dropped)))
    for path in mapping.tokenize:
        if path[0] in _PROVIDED or any(
            t != path and (t[: len(path)] == path or path[: len(t)] == t) for t, _ in placed
        ):
            raise NoFastPath(f"residency tokenize {'.'.join(path)!r} is not one field")
        for target, leaf in placed:
            if target == path:

                def token(value: Any, kind: str = path[-1]) -> str:
                    return pseudonymize(kind, str(value))

                tokenize(leaf, token)
                leaf.facts = frozenset({"str", "token"}) if _TOKEN_KIND.match(path[-1]) else frozenset({"str"})
    return placed


def generate(mapping: CompiledMapping, event: CompiledEvent) -> tuple[FastBuild, str]:
    """The fast build function for one event rule of `mapping`, and its source (for reading)."""
    writer = _Writer()
    if mapping.spec.format != "hl7":
        writer.emit("g = record.get")
    placed: list[tuple[tuple[str, ...], _Leaf]] = []
    for index, compiled in enumerate(event.fields):
        placed.append((compiled.target, _emit_field(writer, mapping, index, compiled)))

    def tokenize(leaf: _Leaf, function: Callable[[Any], str]) -> None:
        name = writer.name(function, "R")
        writer.emit(f"if {leaf.var} is not _A:")
        writer.emit(f"if {leaf.var} is None:", 2)  # the reference then removes the key
        writer.emit("raise LookupError", 3)
        writer.emit(f"{leaf.var} = {name}({leaf.var})", 2)

    placed = residency(mapping, placed, tokenize)
    root = _ModelNode(canonical.CanonicalEvent)
    for target, leaf in placed:
        if target[0] in _PROVIDED:
            raise NoFastPath(f"rules may not set {target[0]!r}")
        _place(root, target, leaf)
    system = writer.name(canonical.SourceSystem(mapping.spec.system.value))
    event_type = writer.name(canonical.EventType(event.rule.event_type.value))
    writer.emit("if type(received_at) is not datetime or received_at.utcoffset() is None:")
    writer.emit("raise TypeError", 2)  # pydantic's AwareDatetime, which the reference path words
    top = _emit_model(
        writer,
        root,
        {"source_system": system, "event_type": event_type, "received_at": "received_at", "provenance": "provenance"},
    )
    # The caller's provenance and received_at are fields of the top model, in declaration order.
    writer.emit(f"return {top}")
    where = f"<mapping {mapping.mapping_id}@{mapping.version} rule {event.rule.name}>"
    return writer.function("build", "record, provenance, received_at", where)
