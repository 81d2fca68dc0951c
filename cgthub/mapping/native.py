"""A mapping rule's fast path as a plan for the C interpreter in `_vm.c`: the generated Python's steps
(`codegen`), run without Python's own dispatch.

`codegen` writes one straight-line function per rule; most of its cost is the interpreter walking
that function (about 60% of a record's instructions), not the work. Here the same decisions (what
each field reads, which transforms and checks it needs, which models and dicts hold it, what is in
each model's fields_set) become a tuple of steps, and `_vm.Build` runs them over registers. It keeps
the generated function's contract: it raises wherever that function would, and the caller then runs
the reference path for the record, which decides. Transforms without a step of their own, a JMESPath
expression, a model's check: the step calls the same Python function the generated code calls.

Without a C compiler at install the module is missing, and `codegen`'s Python serves (`available`).
`CGTHUB_MAPPING_FASTPATH=python` picks the Python one on purpose (tests run both).
"""

from __future__ import annotations

import enum
import os
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import AwareDatetime, BaseModel

from cgthub import model as canonical
from cgthub.mapping import codegen, construct
from cgthub.mapping.spec import DOTTED_PATH
from cgthub.pseudonym import pseudonymize
from cgthub.settings import get_settings

try:
    from cgthub.mapping import _vm  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - installed without a C compiler
    _vm = None

if TYPE_CHECKING:
    from cgthub.mapping.compiler import CompiledEvent, CompiledField, CompiledMapping

RECORD, PROVENANCE, RECEIVED_AT = 0, 1, 2
_SLOT_DESCRIPTORS = tuple(BaseModel.__dict__[name] for name in construct.SLOTS)
_METHODS = ("upper", "lower", "strip")
_REFUSED = object()


def available() -> bool:
    return _vm is not None and os.environ.get("CGTHUB_MAPPING_FASTPATH", "1") != "python"


class _Plan:
    """The steps, and the registers they use (0-2: the build's three arguments)."""

    def __init__(self) -> None:
        self.ops: list[tuple[int, int, int, Any, Any, Any]] = []
        self.count = 3
        self.holders: dict[str, int] = {}  # a JSON path prefix -> the register holding its object
        self.values: dict[int, frozenset[str]] = {}  # str values a register is known to take often

    def register(self) -> int:
        self.count += 1
        return self.count - 1

    def step(self, code: int, a: int, b: int = 0, o1: Any = None, o2: Any = None, o3: Any = None) -> None:
        self.ops.append((code, a, b, o1, o2, o3))


def _json_read(plan: _Plan, expr: str, into: int) -> None:
    keys = expr.split(".")
    holder = RECORD
    for depth, key in enumerate(keys[:-1]):
        prefix = ".".join(keys[: depth + 1])
        local = plan.holders.get(prefix)
        if local is None:
            local = plan.holders[prefix] = plan.register()
            plan.step(_vm.OP_HOLD, local, holder, key)
        holder = local
    plan.step(_vm.OP_READ, into, holder, keys[-1])


def _field(plan: _Plan, mapping: CompiledMapping, compiled: CompiledField) -> codegen._Leaf:
    """The field's value into a register, as `codegen._emit_field` writes it."""
    field = compiled.plan
    reg = plan.register()
    if field.constant is not None:
        plan.step(_vm.OP_CONST, reg, o1=field.constant)
        facts = codegen._constant_facts(field.constant)
    elif len(field.sources) == 1 and DOTTED_PATH.match(field.sources[0]):
        _json_read(plan, field.sources[0], reg)
        facts = frozenset()
    elif len(field.sources) == 1:
        plan.step(_vm.OP_CALLREAD, reg, o1=field.getters[0])
        facts = frozenset()
    else:
        plan.step(_vm.OP_CALLREAD, reg, o1=codegen._join(field.getters, field.separator))
        facts = frozenset({"str"})
    absent = False
    if field.default is not None:
        plan.step(_vm.OP_EMPTY, reg, 2, field.default)
        facts = facts & codegen._constant_facts(field.default)
    elif field.required:
        plan.step(_vm.OP_EMPTY, reg, 1)
    else:
        plan.step(_vm.OP_EMPTY, reg, 0)
        absent = True
    for written, function in field.transforms:
        kind, _, arg = written.partition(":")
        _transform(plan, reg, kind, arg, function, mapping)
        facts = codegen.transform_facts(kind, arg)
    if field.table is not None:
        if type(field.table) is not dict:
            raise codegen.NoFastPath("a code map that is not a dict")
        plan.step(_vm.OP_MAP, reg, o1=field.table)
        facts = codegen.table_facts(field.table)
        plan.values[reg] = frozenset(v for v in field.table.values() if type(v) is str)
    if field.pattern is not None:
        plan.step(_vm.OP_PATTERN, reg, o1=field.pattern.fullmatch)
    if field.allowed is not None:
        plan.step(_vm.OP_ALLOWED, reg, o1=frozenset(field.allowed))
        plan.values[reg] = plan.values.get(reg, frozenset()) | {v for v in field.allowed if type(v) is str}
    return codegen._Leaf(str(reg), absent, facts)


def _transform(plan: _Plan, reg: int, kind: str, arg: str, function: Any, mapping: CompiledMapping) -> None:
    if kind == "prefix":
        plan.step(_vm.OP_T_PREFIX, reg, o1=arg)
    elif kind == "suffix":
        plan.step(_vm.OP_T_SUFFIX, reg, o1=arg)
    elif kind == "str":
        plan.step(_vm.OP_T_STR, reg)
    elif kind in _METHODS:
        plan.step(_vm.OP_T_METHOD, reg, o1=kind)
    elif kind == "int":
        plan.step(_vm.OP_T_INT, reg)
    elif kind == "float":
        plan.step(_vm.OP_T_FLOAT, reg)
    elif kind == "pseudonymize" and arg:
        plan.step(_vm.OP_T_PSEUDO, reg, o1=arg, o2=pseudonymize, o3=get_settings)
    elif kind == "datetime":
        plan.step(_vm.OP_T_DATETIME, reg, o1=mapping.tz.utcoffset, o2=function)
    elif kind == "din":
        plan.step(_vm.OP_T_DIN, reg, o2=function)
    elif kind == "coi":
        plan.step(_vm.OP_T_COI, reg, o2=function)
    else:
        plan.step(_vm.OP_T_CALL, reg, o1=function)


def _check(
    plan: _Plan,
    reg: int,
    annotation: Any,
    metadata: list[Any],
    validators: list[Any],
    fallback: Any,
) -> None:
    """The check a leaf needs where its facts do not prove it: one of the interpreter's own for a
    plain type (as `codegen._inline_check` writes them; a step tests the type even where a fact
    says str, which costs a pointer comparison), else a call of `fallback` (the model's)."""
    shape = codegen.plain_check(annotation, metadata, validators)
    decided = _decided(fallback, plan.values.get(reg, frozenset())) if shape is None else {}
    if shape is None and decided:
        plan.step(_vm.OP_CHK_TABLE, reg, o1=decided, o2=fallback)
    elif shape is None:
        plan.step(_vm.OP_CHK_CALL, reg, o1=fallback)
    elif shape.kind is str:
        plan.step(_vm.OP_CHK_STR, reg, int(shape.optional), shape.low, shape.high)
    elif shape.kind in (int, bool):
        plan.step(_vm.OP_CHK_EXACT, reg, int(shape.optional), shape.kind)
    elif shape.kind is float:
        plan.step(_vm.OP_CHK_FLOAT, reg, int(shape.optional))
    elif shape.kind is AwareDatetime:
        plan.step(_vm.OP_CHK_AWARE, reg, int(shape.optional))
    else:  # pragma: no cover - plain_check names only these
        raise codegen.NoFastPath(f"no step checks {shape.kind!r}")


def _decided(check: Any, values: frozenset[str]) -> dict[str, Any]:
    """`check`'s answers for the str values a register often holds (a code map's, the allowed
    ones), decided once here: the step looks them up instead of calling the model's check (a
    Python call, about 2,000 instructions, for every record). Sound because the canonical model's
    checks answer from the value alone; only answers that are safely shared (immutable) are kept,
    and a value that is not among them is checked by the call, as before."""
    decided: dict[str, Any] = {}
    for value in sorted(values):
        answer = _answer(check, value)
        if answer is None or type(answer) in (str, int, float, bool) or isinstance(answer, enum.Enum):
            decided[value] = answer
    return decided


def _answer(check: Any, value: str) -> Any:
    """What `check` makes of `value`, or `_REFUSED` (the call at run time refuses it as the model does)."""
    try:
        return check(value)
    except Exception:  # any refusal: the value is left to the call
        return _REFUSED


def _presence(node: Any) -> tuple[int, ...] | None:
    """The registers of which one present puts `node` in the tree, or None when it always is
    (`codegen._presence`, as registers)."""
    if isinstance(node, codegen._Leaf) and node.ghost_of is not None:
        tests = [_presence(leaf) for leaf in node.ghost_of]
        return None if None in tests else tuple(r for t in tests for r in t or ())
    if isinstance(node, codegen._Leaf):
        return (int(node.var),) if node.absent else None
    found: list[int] = []
    for child in node.children.values():
        test = _presence(child)
        if test is None:
            return None
        found.extend(test)
    return tuple(found)


def _default(info: Any) -> tuple[int, Any] | None:
    default = codegen.default_of(info)
    if default is None:
        return None
    factory, value = default
    return (_vm.V_FACTORY if factory else _vm.V_CONST), value


def _model(plan: _Plan, node: codegen._ModelNode, provided: dict[str, tuple[int, Any]] | None = None) -> int:
    """Steps building `node.model` from its children into a register (as `codegen._emit_model`)."""
    model = node.model
    if not construct.plain_slots(model):
        raise codegen.NoFastPath(f"{model.__name__} redefines a slot")
    fields: list[tuple[str, int, Any, Any, int, Any]] = []
    for name, info in model.model_fields.items():
        if provided and name in provided:
            kind, value = provided[name]
            fields.append((name, kind, value, None, -1, None))
            continue
        child = node.children.get(name)
        default = _default(info)
        dkind, dvalue = default if default is not None else (-1, None)
        if child is None or (isinstance(child, codegen._Leaf) and child.ghost_of is not None):
            if default is None:
                raise codegen.NoFastPath(f"{model.__name__}.{name} is required and no rule sets it")
            fields.append((name, _vm.V_DEFAULT_ONLY, None, (), dkind, dvalue))
            continue
        if isinstance(child, codegen._Leaf):
            reg = int(child.var)
            validators = codegen._validators(model, name)
            if not codegen._proven(info.annotation, list(info.metadata), validators, child.facts):
                _check(
                    plan,
                    reg,
                    info.annotation,
                    list(info.metadata),
                    validators,
                    construct.field_check(model, name, info),
                )
        elif isinstance(child, codegen._ModelNode):
            reg = _model(plan, child)
        else:
            reg = _dict(plan, child)
        fields.append((name, _vm.V_REG, reg, _presence(child), dkind, dvalue))
    reg = plan.register()
    plan.step(_vm.OP_MODEL, reg, 0, model, tuple(fields), _presence(node) if not provided else None)
    return reg


def _dict(plan: _Plan, node: codegen._DictNode) -> int:
    value_check = construct.annotation_check(node.value_annotation)
    entries = []
    facts_all: frozenset[str] | None = None
    for key, leaf in node.children.items():
        if leaf.ghost_of is not None:
            continue
        facts_all = leaf.facts if facts_all is None else facts_all & leaf.facts
        if not codegen._proven(node.value_annotation, [], [], leaf.facts):
            _check(plan, int(leaf.var), node.value_annotation, [], [], value_check)
        entries.append((key, int(leaf.var)))
    reg = plan.register()
    plan.step(_vm.OP_DICT, reg, 0, tuple(entries), codegen.dict_check(node, facts_all), _presence(node))
    return reg


def generate(mapping: CompiledMapping, event: CompiledEvent) -> codegen.FastBuild:
    """The rule's build as a `_vm.Build`: called as `build(record, provenance, received_at)`."""
    if _vm is None:
        raise codegen.NoFastPath("the C interpreter is not built")
    if mapping.spec.format == "hl7":
        # Its reads would be calls of the reference's getters: the generated Python reads the
        # segment's fields inline, and was faster (HL7 ORM: 21,600 records/s against 15,900).
        raise codegen.NoFastPath("HL7 paths are read faster by the generated Python")
    plan = _Plan()
    placed = [(compiled.target, _field(plan, mapping, compiled)) for compiled in event.fields]
    placed = codegen.residency(
        mapping, placed, lambda leaf, function: plan.step(_vm.OP_TOKENIZE, int(leaf.var), o1=function)
    )
    root = codegen._ModelNode(canonical.CanonicalEvent)
    for target, leaf in placed:
        if target[0] in codegen._PROVIDED:
            raise codegen.NoFastPath(f"rules may not set {target[0]!r}")
        codegen._place(root, target, leaf)
    plan.step(_vm.OP_CHK_AWARE, RECEIVED_AT)  # pydantic's AwareDatetime, which the reference words
    top = _model(
        plan,
        root,
        {
            "source_system": (_vm.V_CONST, canonical.SourceSystem(mapping.spec.system.value)),
            "event_type": (_vm.V_CONST, canonical.EventType(event.rule.event_type.value)),
            "received_at": (_vm.V_REG, RECEIVED_AT),
            "provenance": (_vm.V_REG, PROVENANCE),
        },
    )
    plan.step(_vm.OP_RETURN, top)
    build: codegen.FastBuild = _vm.Build(tuple(plan.ops), plan.count, construct.ABSENT, _SLOT_DESCRIPTORS)
    return build


def runner(mapping: CompiledMapping) -> Any:
    """`mapping.map` for a JSON payload of one object, whole in C, where every rule has its C build
    (None otherwise): the object's conditions as `codegen.generate_selector` tests them, the
    provenance as `compiler._provenance` makes it, the builds. It answers None where `map` has more
    to decide, and `map` then runs as before."""
    builds = tuple(event.fast for event in mapping.events)
    if _vm is None or not builds or not all(type(b) is _vm.Build for b in builds):
        return None
    if mapping.spec.format != "json" or mapping._records is not None or not construct.plain_slots(canonical.Provenance):
        return None
    kinds = {"equals": _vm.C_EQUALS, "in_": _vm.C_IN, "not_in": _vm.C_NOT_IN}
    conditions = []
    for event in mapping.events:
        tests: list[tuple[Any, Any, int, Any]] = []
        for cond in event.rule.when:
            dotted = DOTTED_PATH.match(cond.source)
            keys, getter = (tuple(cond.source.split(".")), None) if dotted else ((), mapping._get(cond.source))
            if cond.exists is not None:
                tests.append((keys, getter, _vm.C_EXISTS, cond.exists))
            for name, kind in kinds.items():
                operand = getattr(cond, name)
                if operand is not None:
                    value = str(operand) if kind == _vm.C_EQUALS else frozenset(str(v) for v in operand)
                    tests.append((keys, getter, kind, value))
        conditions.append(tuple(tests))
    names = tuple(canonical.Provenance.model_fields)
    return _vm.Runner(
        orjson.loads, canonical.Provenance, names, mapping.mapping_id, mapping.version, tuple(conditions), builds
    )
