"""What a mapping file says, as pydantic models, and loading one with line numbers for errors.

A mapping file lives at `mappings/<system>/<kind>/v<N>.yaml`:

    system: crm
    kind: enrollment
    version: 1
    effective: 2026-01-01
    change_note: first mapping of the CRM enrollment record
    format: json                 # json | hl7 | csv | xml
    source_time_zone: America/New_York
    code_maps: {therapy: {KYM: CART-19}}
    events:
      - name: enrolled
        event_type: order.enrolled
        when: [{from: status, in: [ENROLLED]}]
        fields:
          source_event_id: {from: id, transform: "prefix:enrol:"}
          occurred_at: {from: enrolledAt, transform: datetime, required: true}
          refs.crm_order_id: {from: id, required: true}
          order.therapy: {from: product, map: therapy}
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cgthub import partners
from cgthub.config_file import key_lines, parse
from cgthub.errors import CgthubError
from cgthub.model import EventType, SourceSystem

# A JSON path of plain keys (`patient.coiId`): read as chained lookups, not through JMESPath.
DOTTED_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class MappingError(CgthubError, ValueError):
    """A mapping file that cannot be loaded or compiled; names file, line and rule."""

    def __init__(self, file: Path | str, line: int | None, rule: str | None, problem: str) -> None:
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {f'rule {rule!r}: ' if rule else ''}{problem}")
        self.file, self.line, self.rule, self.problem = str(file), line, rule, problem


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FieldRule(_Spec):
    """How one canonical field is filled: from a source expression (or a constant), then transformed,
    mapped through a code map and validated."""

    source: str | list[str] | None = Field(default=None, alias="from")
    value: Any = None
    default: Any = None
    transform: str | list[str] = Field(default_factory=list)
    map: str | None = None
    separator: str = ""
    required: bool = False
    pattern: str | None = None
    allowed: list[Any] | None = None

    @field_validator("transform", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Condition(_Spec):
    source: str = Field(alias="from")
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    not_in: list[Any] | None = None
    exists: bool | None = None


class EventRule(_Spec):
    name: str
    event_type: EventType
    when: list[Condition] = Field(default_factory=list)
    fields: dict[str, FieldRule]


class MappingSpec(_Spec):
    system: SourceSystem
    kind: str
    also_for: list[str] = Field(default_factory=list)  # other kinds this file maps (ADT^A08 like ADT^A04)
    version: int = Field(ge=1)
    effective: date
    change_note: str
    format: Literal["json", "hl7", "csv", "xml"]
    source_time_zone: str = "UTC"
    records: str | None = None  # JMESPath to the list of records inside the payload (JSON and XML)
    unmatched: Literal["ignore", "reject"] = "ignore"  # a record no rule takes: fine, or an unknown code
    code_maps: dict[str, dict[str, Any]] = Field(default_factory=dict)
    residency: dict[str, list[str]] = Field(default_factory=dict)
    resend_ignores: list[str] = Field(default_factory=list)  # fields a resend may change (cgthub/conflicts.py)
    events: list[EventRule] = Field(min_length=1)

    @field_validator("system")
    @classmethod
    def _declared(cls, system: SourceSystem) -> SourceSystem:
        known = declared_systems()
        if system.value not in known:
            raise ValueError(
                f"no partner declares the system {system.value!r}; declared: {', '.join(known)} "
                f"(declared in <package>/<partner>/__init__.py; packages: {', '.join(partners.packages())})"
            )
        return system

    @property
    def mapping_id(self) -> str:
        return f"{self.system.value}/{self.kind}"


def declared_systems() -> list[str]:
    """The systems a mapping may be written for: the hub's own and each declared partner's, whose
    archived messages it reads (a partner's files may be archived under another's system)."""
    return sorted({SourceSystem.HUB.value, *(partner.system for partner in partners.registry().values())})


class LoadedSpec:
    """A validated spec with the line of every key, so later errors can point into the file."""

    def __init__(self, path: Path, spec: MappingSpec, lines: dict[tuple[Any, ...], int]) -> None:
        self.path, self.spec, self._lines = path, spec, lines

    def line(self, *path: Any) -> int | None:
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None

    def error(self, problem: str, *, rule: str | None = None, at: tuple[Any, ...] = ()) -> MappingError:
        return MappingError(self.path, self.line(*at), rule, problem)


def load(path: Path) -> LoadedSpec:
    """Read and validate one mapping file; every problem is a MappingError naming file and line."""
    text = path.read_text()
    try:
        node, data = parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise MappingError(path, mark.line + 1 if mark else None, None, f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or node is None:
        raise MappingError(path, 1, None, "a mapping file is a YAML mapping (system, kind, version, ... events)")
    lines = key_lines(node)
    try:
        spec = MappingSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        rule = None
        if len(loc) > 1 and loc[0] == "events" and isinstance(loc[1], int):
            events = data.get("events") or []
            rule = events[loc[1]].get("name") if loc[1] < len(events) and isinstance(events[loc[1]], dict) else None
        where = ".".join(str(p) for p in loc)
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        raise MappingError(path, line, rule, f"{where}: {first['msg']}") from exc
    expected = path.parent.parent.name, path.parent.name, f"v{spec.version}.yaml"
    actual = spec.system.value, spec.kind.replace("^", "_"), path.name
    if actual != expected:
        raise MappingError(
            path, lines.get(("system",)), None, f"file says {spec.mapping_id} v{spec.version}; its path says otherwise"
        )
    return LoadedSpec(path, spec, lines)
