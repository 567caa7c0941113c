"""SQLAlchemy statements run on the driver's own cursor: compiled once, bound and read without
SQLAlchemy's execution machinery.

A one-session read (the rows a load chooses from, a one-session revision choice) costs SQLite
tens of microseconds; SQLAlchemy's execution of the same cached statement (connection events,
parameter expansion, result rows) costs several times that. The hot reads build their statements
with SQLAlchemy as everywhere else and run them here: each statement is compiled once per
back end, its IN lists expanded per call, its parameters converted by the types' own bind
processors and its values by their result processors (SQLite's 0/1 become booleans), so rows are
what SQLAlchemy would return, as named tuples.

>>> import sqlalchemy as sa
>>> from oneprov.store.engine import Database, create_engine
>>> db = Database(create_engine(":memory:"))
>>> stmt = sa.select(sa.literal_column("1").label("one")).where(sa.literal(1).in_(sa.bindparam("ns", expanding=True)))
>>> with db.driver_reading() as reader:
...     reader.rows(stmt, {"ns": [1, 2]})
[Row(one=1)]
"""
from __future__ import annotations

from collections import namedtuple
from functools import cached_property, lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


class Prepared:
    """One statement compiled for one SQLAlchemy dialect, ready for its driver."""

    def __init__(self, stmt: sa.Executable, dialect: sa.Dialect):
        self.compiled = stmt.compile(dialect=dialect)
        # (the statement's expanding parameters: the SQL text depends on the lengths of those given)
        self.lists = sorted(name for name, bind in self.compiled.binds.items() if bind.expanding)
        self._forms: dict[tuple[int, ...], tuple[str, list[tuple]]] = {}
        self._stmt, self._dialect = stmt, dialect

    @cached_property
    def row(self) -> type:
        """The named tuple of a result row (fields: the columns' labels)."""
        return namedtuple("Row", [c.key for c in self._stmt.selected_columns])

    @cached_property
    def converters(self) -> list[tuple[int, Any]]:
        """``(position, processor)`` of each result column whose type converts the driver's value."""
        d = self._dialect
        processors = (c.type.dialect_impl(d).result_processor(d, None) for c in self._stmt.selected_columns)
        return [(k, p) for k, p in enumerate(processors) if p is not None]

    def bind(self, params: dict[str, Any]) -> tuple[str, tuple | dict]:
        """The SQL text for these parameters (IN lists expanded) and the driver's parameters."""
        shape = tuple(len(params[name]) for name in self.lists if name in params)
        form = self._forms.get(shape)
        if form is None:
            form = self._forms[shape] = self._form(params)
        sql, slots = form
        values = [value if given is None else params[given] if item is None else params[given][item]
                  for _, given, item, _, value in slots]
        values = [v if given is None or convert is None else convert(v)
                  for v, (_, given, _, convert, _) in zip(values, slots)]
        if self.compiled.positional:
            return sql, tuple(values)
        return sql, {name: v for v, (name, *_) in zip(values, slots)}

    def _form(self, params: dict[str, Any]) -> tuple[str, list[tuple[str, str | None, int | None, Any, Any]]]:
        """The SQL for the list lengths of ``params``, and each driver parameter's slot: its name, the
        given parameter it comes from (None: the statement's own value) and the item of it for an
        expanded list, the type's bind processor, and the statement's own value (processed)."""
        state = self.compiled.construct_expanded_state(params)
        origin: dict[str, tuple[str, int | None]] = {}
        for given, names in state.parameter_expansion.items():
            origin.update({name: (given, k) for k, name in enumerate(names)})
        slots = []
        for name in (state.positiontup if self.compiled.positional else list(state.parameters)):
            given, item = origin.get(name, (name, None))
            convert = state.processors.get(name)
            if given in params:
                slots.append((name, given, item, convert, None))
            else:
                value = state.parameters[name]
                slots.append((name, None, None, None, value if convert is None else convert(value)))
        return state.statement, slots

    def rows(self, driver_rows: list[tuple]) -> list[Any]:
        """The driver's rows as named tuples of converted values."""
        make = self.row._make
        if not self.converters:
            return [make(r) for r in driver_rows]
        out = []
        for r in driver_rows:
            r = list(r)
            for k, convert in self.converters:
                r[k] = convert(r[k])
            out.append(make(r))
        return out


@lru_cache(maxsize=128)
def prepared(stmt: sa.Executable, dialect: sa.Dialect) -> Prepared:
    """``stmt`` compiled for ``dialect``, once (statements are cached by identity: build them once)."""
    return Prepared(stmt, dialect)


class Reader:
    """A driver cursor inside a read transaction (:meth:`~oneprov.store.engine.Database.driver_reading`)."""

    def __init__(self, cursor: Any, dialect: sa.Dialect):
        self.cursor = cursor
        self.dialect = dialect

    def rows(self, stmt: sa.Executable, params: dict[str, Any]) -> list[Any]:
        """Run ``stmt`` with ``params``; its rows.

        Parameters
        ----------
        stmt : sqlalchemy.sql.expression.Executable
            A SELECT, built once (e.g. by a cached function): compiled statements are kept by identity.
        params : dict of str to object
            Values of its bound parameters (lists for its expanding IN parameters).

        Returns
        -------
        list of tuple
            The rows, named tuples with attribute access by column label.
        """
        statement = prepared(stmt, self.dialect)
        sql, values = statement.bind(params)
        self.cursor.execute(sql, values)
        return statement.rows(self.cursor.fetchall())


def fetch_all(conn: Connection | Reader, stmt: sa.Executable, params: dict[str, Any]) -> list[Any]:
    """The rows of ``stmt`` on a SQLAlchemy connection or a :class:`Reader` (for code that runs on both)."""
    if isinstance(conn, Reader):
        return conn.rows(stmt, params)
    return conn.execute(stmt, params).fetchall()
