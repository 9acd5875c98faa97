"""The relay's statements: built with SQLAlchemy Core, compiled once, run on the driver's cursor.

A webhook issues a handful of fixed statements inside one transaction (SPEC §7).
Run through ``Connection.execute``, each would also pay for an execution context,
result metadata and parameter bookkeeping, about a fifth of what a whole webhook
costs. Here each statement is compiled once per dialect (and per set of columns
it writes) and handed straight to the DBAPI cursor of the connection SQLAlchemy
holds for the transaction, which SQLAlchemy still begins, commits and rolls back.

What SQLAlchemy would do on the way is kept:

- values go through the column types' own bind processors, and rows come back
  through their result processors (enums, booleans, UTC datetimes on SQLite);
- ``before_cursor_execute`` listeners see every statement with its parameters,
  as they would (fault injection and statement counts in the tests rely on it);
- a DBAPI error is handled by the connection as in its own ``execute``: wrapped
  in ``sqlalchemy.exc`` (so an ``IntegrityError`` is still one), and a lost
  connection is invalidated rather than handed back to the pool.
"""

from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert
from sqlalchemy.sql import ClauseElement


class _Compiled:
    """One statement as one dialect runs it, for one set of parameter names."""

    __slots__ = ("binds", "positional", "results", "row", "sql")

    def __init__(self, statement: ClauseElement, dialect, keys: Sequence[str] | None):
        columns = list(getattr(statement, "exported_columns", ()) or ())
        # Without a RETURNING of its own, compiled as for executemany: Postgres would
        # otherwise add one to fetch the new primary key, which the relay never reads.
        compiled = statement.compile(dialect=dialect, column_keys=keys, for_executemany=not columns)
        self.sql = compiled.string
        if compiled.insert_prefetch or compiled.update_prefetch:
            # A default SQLAlchemy would compute while executing: the caller gives every value.
            raise ValueError(f"{self.sql!r} needs values the caller did not give")
        self.positional = dialect.positional
        names = compiled.positiontup if self.positional else list(compiled.binds)
        escaped = compiled.escaped_bind_names or {}
        # (name the driver sees, key in the caller's values or None, processor, fixed value)
        self.binds: list[tuple[str, str | None, Callable | None, Any]] = []
        for name in names:
            param = compiled.binds[name]
            proc = param.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None and _is_datetime(param.type):
                proc = _remembering(proc)
            if param.callable is not None:
                raise ValueError(f"{self.sql!r}: {name} is computed while executing")
            if param.required:
                self.binds.append((escaped.get(name, name), param.key, proc, None))
            else:  # a literal of the statement itself (``direction == 'inbound'``)
                fixed = param.value if proc is None else proc(param.value)
                self.binds.append((escaped.get(name, name), None, None, fixed))
        if keys is not None:
            missing = {key for _, key, _, _ in self.binds if key is not None} - set(keys)
            if missing:  # e.g. a column default SQLAlchemy would have filled in
                raise ValueError(f"statement needs values for {sorted(missing)}")
        self.row = namedtuple("Row", [column.key for column in columns]) if columns else None
        self.results = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]

    def parameters(self, values: dict[str, Any]) -> tuple | dict:
        params = [
            fixed if key is None else values[key] if proc is None else proc(values[key])
            for _, key, proc, fixed in self.binds
        ]
        if self.positional:
            return tuple(params)
        return dict(zip((name for name, _, _, _ in self.binds), params, strict=True))

    def rows(self, fetched: Iterable[tuple]) -> list:
        results, make = self.results, self.row._make
        if not any(results):
            return [make(row) for row in fetched]
        return [
            make(v if proc is None else proc(v) for v, proc in zip(row, results, strict=True))
            for row in fetched
        ]


def _is_datetime(type_) -> bool:
    try:
        return issubclass(type_.python_type, datetime)
    except NotImplementedError:
        return False


def _remembering(proc: Callable) -> Callable:
    """A datetime's bind processor that keeps its last answer: a turn stamps each row it
    writes with the same ``now``, which SQLite's processor would format again for each."""
    last: tuple[Any, Any] = (object(), None)

    def process(value):
        nonlocal last
        seen, result = last
        if value is not seen:
            result = proc(value)
            last = (value, result)
        return result

    return process


class Statement:
    """A Core statement the relay runs often; compiled the first time a dialect needs it."""

    def __init__(self, statement: ClauseElement):
        self.statement = statement
        self._compiled: dict[tuple, _Compiled] = {}

    def compiled(self, dialect, keys: Sequence[str] | None = None) -> _Compiled:
        cache_key = (
            type(dialect),
            dialect.paramstyle,
            dialect.server_version_info,
            dialect.insert_returning,
            keys,
        )
        found = self._compiled.get(cache_key)
        if found is None:
            found = self._compiled[cache_key] = _Compiled(self.statement, dialect, keys)
        return found

    def rows_insert(self, dialect, keys: tuple[str, ...], count: int) -> _Compiled:
        """This INSERT as one statement of ``count`` rows: VALUES (…), (…), …"""
        cache_key = (type(dialect), dialect.paramstyle, dialect.server_version_info, keys, count)
        found = self._compiled.get(cache_key)
        if found is None:
            table = self.statement.table
            rows = [
                {key: bindparam(f"{key}_{n}", type_=table.c[key].type) for key in keys}
                for n in range(count)
            ]
            found = self._compiled[cache_key] = _Compiled(insert(table).values(rows), dialect, None)
        return found


# Rows per multi-row INSERT on Postgres: bounds how many forms get compiled.
ROWS_PER_INSERT = 16


def fetch(conn: Connection, statement: Statement, values: dict[str, Any]) -> list:
    """Run a statement that returns rows (a SELECT, an INSERT … RETURNING); its rows."""
    compiled = statement.compiled(conn.dialect, tuple(values))
    rows = _run(conn, compiled.sql, compiled.parameters(values), rows=compiled.row is not None)
    return compiled.rows(rows)


def execute(conn: Connection, statement: Statement, values: dict | list[dict]) -> None:
    """Run a statement that returns nothing, once, or once per row of a list.

    The rows of a list all name the same columns; they go to the driver in one
    ``executemany``, or on Postgres, for an INSERT, as one multi-row INSERT.
    """
    if isinstance(values, dict):
        compiled = statement.compiled(conn.dialect, tuple(values))
        _run(conn, compiled.sql, compiled.parameters(values))
        return
    keys = tuple(values[0])
    if conn.dialect.name == "postgresql" and statement.statement.is_insert:
        # psycopg runs an executemany as one query per row; one multi-row INSERT
        # is one query (each of at most ROWS_PER_INSERT rows).
        for start in range(0, len(values), ROWS_PER_INSERT):
            chunk = values[start : start + ROWS_PER_INSERT]
            compiled = statement.rows_insert(conn.dialect, keys, len(chunk))
            flat = {f"{key}_{n}": row[key] for n, row in enumerate(chunk) for key in keys}
            _run(conn, compiled.sql, compiled.parameters(flat))
        return
    compiled = statement.compiled(conn.dialect, keys)
    params = [compiled.parameters(row) for row in values]
    if len(params) == 1:
        _run(conn, compiled.sql, params[0])
    else:
        _run(conn, compiled.sql, params, many=True)


def command(conn: Connection, sql: str) -> None:
    """A fixed command without parameters (SQLite's BEGIN IMMEDIATE), run the same way."""
    _run(conn, sql, ())


def _run(conn: Connection, sql: str, params, many: bool = False, rows: bool = False) -> list:
    cursor = conn.connection.driver_connection.cursor()
    try:
        if conn.dispatch.before_cursor_execute:
            for listener in conn.dispatch.before_cursor_execute:
                listener(conn, cursor, sql, params, None, many)
        if many:
            cursor.executemany(sql, params)
            return []
        cursor.execute(sql, params)
        return cursor.fetchall() if rows else []
    except conn.dialect.loaded_dbapi.Error as exc:
        # Wraps the error in sqlalchemy.exc and invalidates a lost connection, as
        # Connection.execute does; the caller's transaction then rolls back.
        conn._handle_dbapi_exception(exc, sql, params, cursor, None)
        raise  # not reached: the line above always raises
    finally:
        cursor.close()
