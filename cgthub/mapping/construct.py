"""Checks derived from the canonical model's own declarations, for building its instances directly.

pydantic validates a whole event tree at a cost a fast path avoids; a mapping's generated fast path
(`cgthub.mapping.codegen`) builds the same instances itself and needs, for each field it cannot
prove from its transforms, a check that behaves as pydantic's would: take the value as is (or as
pydantic converts it: an int for a float, a str for an enum, a list for a tuple), or raise `Unsure`
so the caller hands the record to pydantic. The checks are derived once per model from its fields
(types, `Annotated` validators, length limits, field validators), so a new model field needs no
edit here; a type without a rule always answers `Unsure`.

(Applying these checks to a whole tree generically costs more than pydantic does; they pay only
where generated code needs a few of them.)
"""

from __future__ import annotations

import copy
import functools
import logging
import types
import typing
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Any

import annotated_types
from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo
from pydantic.functional_validators import AfterValidator

from cgthub.errors import CgthubError
from cgthub.model import CanonicalEvent, SourceSystem

log = logging.getLogger(__name__)

Check = Callable[[Any], Any]
_new = object.__new__
_set = object.__setattr__
_REQUIRED = object()
_FACTORY = object()
ABSENT = object()  # a field the record did not fill (generated code marks it with this)


class Unsure(CgthubError):
    """The fast builder cannot vouch for a value; pydantic decides."""


SLOTS = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
# The setters of those slots' own descriptors: `object.__setattr__` finds the same descriptor by
# name for every call; calling its setter directly costs about a third less (seven models an event).
SET_DICT, SET_FIELDS_SET, SET_EXTRA, SET_PRIVATE = (BaseModel.__dict__[name].__set__ for name in SLOTS)


@functools.cache
def plain_slots(model: type[BaseModel]) -> bool:
    """Whether `model`'s four slots are BaseModel's own (no class between redefines one), so the
    setters above are what `object.__setattr__` would use."""
    return all(next(k for k in model.__mro__ if name in k.__dict__) is BaseModel for name in SLOTS)


def instance(model: type[BaseModel], values: dict[str, Any], fields_set: set[str]) -> Any:
    """An instance of `model` holding `values` (every field, in declaration order), as
    `model_construct` lays one out; the generated fast path writes the same four slots inline."""
    built = _new(model)
    if plain_slots(model):
        SET_DICT(built, values)
        SET_FIELDS_SET(built, fields_set)
        SET_EXTRA(built, None)
        SET_PRIVATE(built, None)
        return built
    _set(built, "__dict__", values)
    _set(built, "__pydantic_fields_set__", fields_set)
    _set(built, "__pydantic_extra__", None)
    _set(built, "__pydantic_private__", None)
    return built


def immutable(value: Any) -> bool:
    """Whether `value` can be one default shared by every instance: nothing in it can change
    (None, a str, number, bool or enum member; a tuple of such; a frozen model holding such)."""
    if value is None or type(value) in (str, int, float, bool) or isinstance(value, Enum):
        return True
    if type(value) is tuple:
        return all(immutable(item) for item in value)
    if isinstance(value, BaseModel) and value.model_config.get("frozen"):
        return all(immutable(item) for item in value.__dict__.values())
    return False


def _unsure(_value: Any) -> Any:
    raise Unsure


def _exact(kind: type) -> Check:
    def check(value: Any) -> Any:
        if type(value) is kind:
            return value
        raise Unsure

    return check


def _float(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:  # pydantic's lax mode takes an int for a float, as a float
        return float(value)
    raise Unsure


def aware_datetime(value: Any) -> Any:
    if type(value) is datetime and value.utcoffset() is not None:
        return value
    raise Unsure


def _enum(kind: type[Enum]) -> Check:
    members = kind._value2member_map_

    def check(value: Any) -> Any:
        if type(value) is kind:
            return value
        if type(value) is str:
            member = members.get(value)
            if member is not None:
                return member
        raise Unsure

    return check


def _source_system(value: Any) -> Any:
    """The open source system name: its one shared instance, as its pydantic validator returns it."""
    if type(value) is SourceSystem:
        return value
    if type(value) is str:
        try:
            return SourceSystem(value)
        except ValueError:
            raise Unsure from None
    raise Unsure


def _then(first: Check, validator: Callable[[Any], Any]) -> Check:
    """A Python validator the model declares (AfterValidator, field_validator): run it as pydantic
    would; when it refuses, pydantic words the refusal."""

    def check(value: Any) -> Any:
        value = first(value)
        try:
            return validator(value)
        except (ValueError, AssertionError) as exc:
            raise Unsure from exc

    return check


def _length(first: Check, low: int | None, high: int | None) -> Check:
    def check(value: Any) -> Any:
        value = first(value)
        size = len(value)
        if (low is not None and size < low) or (high is not None and size > high):
            raise Unsure
        return value

    return check


def _constrained(first: Check, metadata: list[Any]) -> Check:
    check = first
    for item in metadata:
        if isinstance(item, AfterValidator):
            check = _then(check, item.func)  # type: ignore[arg-type]
        elif isinstance(item, annotated_types.MinLen):
            check = _length(check, item.min_length, None)
        elif isinstance(item, annotated_types.MaxLen):
            check = _length(check, None, item.max_length)
        else:
            return _unsure  # a constraint this builder has no rule for
    return check


def annotation_check(annotation: Any) -> Check:
    """The check for one annotation, or `_unsure` where this builder has no rule."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return _constrained(annotation_check(base), extras)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        optional = type(None) in members
        rest = [m for m in members if m is not type(None)]
        if len(rest) == 1:
            inner = annotation_check(rest[0])
            if not optional:
                return inner
            return lambda value: None if value is None else inner(value)
        if all(m in (str, int, float, bool) for m in rest):  # smart mode keeps an exact-type match
            allowed = frozenset(rest) | ({type(None)} if optional else set())

            def exact_member(value: Any) -> Any:
                if type(value) in allowed:
                    return value
                raise Unsure

            return exact_member
        return _unsure
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) != 2 or args[1] is not Ellipsis:
            return _unsure
        item = annotation_check(args[0])

        def as_tuple(value: Any) -> Any:
            if type(value) is tuple or type(value) is list:
                return tuple([item(v) for v in value])
            raise Unsure

        return as_tuple
    if origin is dict:
        key_check, value_check = (annotation_check(a) for a in typing.get_args(annotation))

        def as_dict(value: Any) -> Any:
            if type(value) is not dict:
                raise Unsure
            return {key_check(k): value_check(v) for k, v in value.items()}

        return as_dict
    if annotation is AwareDatetime:
        return aware_datetime
    if annotation is float:
        return _float
    if annotation in (str, int, bool):
        return _exact(annotation)
    if annotation is SourceSystem:
        return _source_system
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _enum(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_builder(annotation)
    return _unsure


def field_check(model: type[BaseModel], name: str, info: FieldInfo) -> Check:
    check = _constrained(annotation_check(info.annotation), list(info.metadata))
    for decorator in model.__pydantic_decorators__.field_validators.values():
        if name in decorator.info.fields or "*" in decorator.info.fields:
            if decorator.info.mode != "after":
                return _unsure
            check = _then(check, decorator.func)
    return check


_BUILDERS: dict[type[BaseModel], Check] = {}


def model_builder(model: type[BaseModel]) -> Check:
    """A check that turns a dict into `model` (or raises Unsure), derived once from its fields."""
    if model in _BUILDERS:
        return _BUILDERS[model]
    config = model.model_config
    plain = (
        config.get("extra") in (None, "ignore", "forbid")
        and not config.get("strict")
        and not config.get("use_enum_values")
        and not config.get("validate_default")
        and not model.__pydantic_root_model__
        and model.__pydantic_post_init__ is None
        and not model.__pydantic_decorators__.model_validators
        and not model.__pydantic_decorators__.validators
        and not model.__private_attributes__
        and all(info.alias is None and info.validation_alias is None for info in model.model_fields.values())
    )
    if not plain:
        _BUILDERS[model] = _unsure
        return _unsure
    _BUILDERS[model] = lambda value: built(value)  # recursive models find themselves
    forbid_extra = config.get("extra") == "forbid"
    checks: dict[str, Check] = {}
    template: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        checks[name] = field_check(model, name, info)
        if info.is_required():
            template[name] = _REQUIRED
            required.append(name)
        elif info.default_factory is not None:
            template[name] = _FACTORY
            factories[name] = info.default_factory  # type: ignore[assignment]
        elif immutable(info.default):
            template[name] = info.default
        else:  # a mutable default: pydantic gives each instance its own copy, so must we
            template[name] = _FACTORY
            factories[name] = functools.partial(copy.deepcopy, info.default)

    def built(value: Any) -> Any:
        if type(value) is model:
            return value
        if type(value) is not dict:
            raise Unsure
        values = template.copy()  # every field, in declaration order, as pydantic keeps them
        for key, item in value.items():
            check = checks.get(key)
            if check is None:
                if forbid_extra:
                    raise Unsure
                continue
            values[key] = check(item)
        for key in required:
            if key not in value:
                raise Unsure
        for key, factory in factories.items():
            if key not in value:
                values[key] = factory()
        return instance(model, values, {k for k in value if k in checks})

    _BUILDERS[model] = built
    return built


def _works() -> bool:
    """Whether this pydantic builds instances the way the builder assumes (checked once, at import)."""
    from datetime import UTC

    sample = {
        "source_system": "crm",
        "source_event_id": "probe",
        "event_type": "order.enrolled",
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC),
        "received_at": datetime(2026, 1, 1, tzinfo=UTC),
        "refs": {"crm_order_id": "CRM-1", "courier_shipment_ids": ["S-1"]},
        "material": {"din": "W123426000001"},
        "attributes": {"n": 1, "x": 1.5},
        "provenance": {"mapping_id": "crm/enrollment", "mapping_version": "v1"},
    }
    try:
        fast: CanonicalEvent = model_builder(CanonicalEvent)(sample)
    except Unsure:
        return False
    slow = CanonicalEvent.model_validate(sample)
    return fast == slow and fast.model_dump_json() == slow.model_dump_json()


FAST_BUILD_WORKS = _works()
if not FAST_BUILD_WORKS:  # pragma: no cover - a pydantic whose instances are laid out differently
    log.warning("this pydantic lays out instances differently; mappings take their reference path")
