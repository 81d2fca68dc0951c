"""Versioned mapping files compiled into mappers: partner payload -> canonical events.

`get_mapper(system, kind, market=..., version=...)` is what connectors and listeners call.
"""

from cgthub.mapping.compiler import CompiledMapping
from cgthub.mapping.registry import clear_cache, discover, get_mapper
from cgthub.mapping.spec import MappingError

__all__ = ["CompiledMapping", "MappingError", "clear_cache", "discover", "get_mapper"]
