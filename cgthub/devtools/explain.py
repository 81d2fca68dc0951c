"""The database's plan for a SQLAlchemy select, on one line: `EXPLAIN QUERY PLAN` on SQLite,
`EXPLAIN` on PostgreSQL, with the statement's parameters bound as the hub binds them.

For benches and tests that hold a query to an index (bench.lockout_bench, tests/test_signature_lockout.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ClauseElement, Executable


class _Explain(Executable, ClauseElement):
    inherit_cache = False

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement


@compiles(_Explain)
def _explain_sql(element: _Explain, compiler: Any, **kw: Any) -> str:
    prefix = "EXPLAIN QUERY PLAN " if compiler.dialect.name == "sqlite" else "EXPLAIN "
    sql = prefix + str(compiler.process(element.statement, **kw))
    compiler._result_columns.clear()  # the plan's rows are text, not the select's typed columns
    return sql


def plan(session: Session, statement: Select[Any]) -> str:
    """The plan's lines joined with ' | ' (SQLite: its detail column; PostgreSQL: QUERY PLAN)."""
    return " | ".join(str(row[-1]) for row in session.execute(_Explain(statement)))
