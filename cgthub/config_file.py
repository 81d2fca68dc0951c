"""A YAML configuration file read into a pydantic model, its errors naming the file and line.

Sites, markets and the other files under config/ are edited by people; a mistake there must read
like a compiler's (`config/markets/DE.yaml:7: residency.drop: Input should be a valid list`), not
as a traceback from wherever the value is first used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cgthub.errors import CgthubError

Model = TypeVar("Model", bound=BaseModel)

# libyaml's parser when PyYAML was built with it (its wheels are): about ten times the pure-Python one,
# which made a listener's first message wait ~0.2 s for its mapping files. Same documents, same marks.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's node (for `key_lines`) and its data, from one parse; raises yaml.YAMLError."""
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


class ConfigFileError(CgthubError, ValueError):
    """A configuration file that cannot be used: the message starts with `file:line:`."""


def load(path: Path, model: type[Model], error: type[ConfigFileError] = ConfigFileError) -> Model:
    """`path` validated as `model`; raises `error` naming the file and the line of the first problem."""
    text = path.read_text()
    try:
        node, data = parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise error(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML: {exc}") from exc
    lines = key_lines(node)
    try:
        return model.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), 1)
        where = ".".join(str(p) for p in loc) or "top level"
        raise error(f"{path}:{line}: {where}: {first['msg']}") from exc


def key_lines(node: yaml.Node | None) -> dict[tuple[Any, ...], int]:
    """The line of every key and item of a composed YAML document, by its path (("residency", "drop"))."""
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    return lines


def _lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)  # a mapping's value is named at its key's line
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[(*path, key.value)] = key.start_mark.line + 1
            _lines(value, (*path, key.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out)
