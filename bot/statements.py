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
- on Postgres they are compiled with numbered parameters (``$1``) and run on
  psycopg's ``RawCursor``, which sends them as they are: psycopg's own cursor
  rewrites ``%(name)s`` into ``$1`` on every execution, and does not keep the
  rewritten form of a statement of more than 50 parameters, such as the turn's
  multi-row INSERTs, whose rewriting then cost more than the rest of the
  statement's client side (a ``cursor_factory`` given in the engine's
  ``connect_args`` is therefore not used for them);
- ``before_cursor_execute`` listeners see every statement with its parameters
  (fault injection and statement counts in the tests rely on it); they get no
  execution context, and ``after_cursor_execute`` is not sent, so the app
  refuses ``SQLALCHEMY_RECORD_QUERIES``, which needs both;
- any error while running a statement, its parameters' processing included,
  is handled by the connection as ``Connection.execute`` handles it: wrapped in
  ``sqlalchemy.exc`` (an ``IntegrityError`` is still one, anything else a
  ``StatementError``), and a lost connection invalidated rather than handed
  back to the pool.
"""

import copy
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from psycopg import RawCursor
from sqlalchemy import Boolean, Connection, DateTime, Enum, bindparam
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.sql import ClauseElement


class _Compiled:
    """One statement as one dialect runs it, for one set of parameter names."""

    __slots__ = (
        "binds",
        "make_row",
        "names",
        "parameters",
        "positional",
        "raw",
        "results",
        "row",
        "sql",
    )

    def __init__(self, statement: ClauseElement, dialect, keys: Sequence[str] | None):
        columns = list(getattr(statement, "exported_columns", ()) or ())
        self.raw = dialect.driver == "psycopg"
        # Without a RETURNING of its own, compiled as for executemany: Postgres would
        # otherwise add one to fetch the new primary key, which the relay never reads.
        compiled = statement.compile(
            dialect=_numbered(dialect) if self.raw else dialect,
            column_keys=keys,
            for_executemany=not columns,
        )
        self.sql = compiled.string
        if compiled.post_compile_params or compiled.literal_execute_params:
            # An expanding IN (…) or a literal rendered while executing.
            raise ValueError(f"{self.sql!r} is completed while executing; not supported here")
        if compiled.insert_prefetch or compiled.update_prefetch:
            # A default SQLAlchemy would compute while executing: the caller gives every value.
            raise ValueError(f"{self.sql!r} needs values the caller did not give")
        self.positional = compiled.positional
        names = compiled.positiontup if self.positional else list(compiled.binds)
        escaped = compiled.escaped_bind_names or {}
        # (name the driver sees, key in the caller's values or None, processor, fixed value)
        self.binds: list[tuple[str, str | None, Callable | None, Any]] = []
        for name in names:
            param = compiled.binds[name]
            proc = param.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None and getattr(param.type, "binds_by_instant", False):
                proc = _by_instant(dialect, param.type, proc)
            elif proc is not None and _is_datetime(param.type):
                proc = _remembering(proc)
            elif proc is not None and isinstance(param.type, Enum | Boolean):
                proc = _Memo(proc)
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
        self.names = [name for name, _, _, _ in self.binds]
        self.parameters = _parameter_maker(self.binds, self.names, self.positional)
        keys_out = [column.key for column in columns]
        if len(set(keys_out)) != len(keys_out):
            raise ValueError(f"{self.sql!r} returns two columns of one name")
        self.row = namedtuple("Row", keys_out) if columns else None
        self.results = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]
        self.make_row = _row_maker(self.row, self.results) if columns else None

    def rows(self, fetched: Iterable[tuple]) -> list:
        make = self.make_row
        return [make(row) for row in fetched]


def _row_maker(row_type, results: list[Callable | None]) -> Callable[[Sequence], Any]:
    """A function from a driver's row to a ``row_type``, each value through its column's
    result processor; written out once per compiled statement, as ``_parameter_maker``."""
    if not any(results):
        return row_type._make
    scope: dict[str, Any] = {"Row": row_type, "count": len(results)}
    items = []
    for i, proc in enumerate(results):
        if proc is None:
            items.append(f"row[{i}]")
        else:
            scope[f"p{i}"] = proc
            items.append(f"p{i}(row[{i}])")
    exec(  # the text is built above
        "def make(row):\n"
        "    if len(row) != count:\n"
        "        raise ValueError(f'a row of {len(row)} values for {count} columns')\n"
        f"    return Row({', '.join(items)})\n",
        scope,
    )
    return scope["make"]


def _parameter_maker(binds, names: list[str], positional: bool) -> Callable[[dict], tuple | dict]:
    """A function from the caller's values to the driver's parameters, in bind order.

    Written out once per compiled statement (as ``dataclasses`` writes ``__init__``):
    one expression per bind, no loop and no test per value, and a memoised
    processor's known answers read inline. A webhook builds its rows' parameters
    about ten times, and the loop it replaces took about 100 µs of a webhook under
    load.
    """
    scope: dict[str, Any] = {}
    items = []
    for i, (_, key, proc, fixed) in enumerate(binds):
        if key is None:
            scope[f"f{i}"] = fixed
            items.append(f"f{i}")
        elif proc is None:
            items.append(f"values[{key!r}]")
        elif isinstance(proc, _Memo):
            scope[f"m{i}"], scope[f"c{i}"] = proc.known, proc
            items.append(f"(m{i}[v{i}] if (v{i} := values[{key!r}]) in m{i} else c{i}(v{i}))")
        else:
            scope[f"p{i}"] = proc
            items.append(f"p{i}(values[{key!r}])")
    row = "(" + "".join(item + ", " for item in items) + ")"
    if not positional:
        scope["names"] = tuple(names)
        row = f"dict(zip(names, {row}))"
    exec(f"def parameters(values):\n    return {row}\n", scope)  # the text is built above
    return scope["parameters"]


class _Memo:
    """An Enum's or Boolean's bind processor with its answers kept: both are pure
    functions of a handful of values (an enum's members, True/False/None), which a
    turn passes dozens of times. Kept for at most ``LIMIT`` distinct values."""

    __slots__ = ("known", "proc")
    LIMIT = 64

    def __init__(self, proc: Callable):
        self.proc = proc
        self.known: dict[Any, Any] = {}

    def __call__(self, value):
        result = self.proc(value)
        if len(self.known) < self.LIMIT:
            self.known[value] = result
        return result


class _Recent(_Memo):
    """A memo of the last few values: full, it starts again (times change every webhook)."""

    __slots__ = ()

    def __call__(self, value):
        if len(self.known) >= self.LIMIT:
            self.known.clear()
        return super().__call__(value)


_INSTANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _by_instant(dialect, type_, proc: Callable) -> _Recent:
    """One memo for every bind of a type whose processor binds equal times alike.

    A type says so with ``binds_by_instant`` (``UTCDateTime``: every value is turned
    into UTC first, so two equal instants give equal values, whatever their zones).
    A turn binds the same ``now`` to a dozen parameters of several statements; the
    memo formats it once. Kept per dialect and type class, which fix the processor.
    """
    memos = _INSTANTS.get(dialect)
    if memos is None:
        memos = _INSTANTS.setdefault(dialect, {})
    memo = memos.get(type(type_))
    if memo is None:
        memo = memos[type(type_)] = _Recent(proc)
    return memo


_NUMBERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _numbered(dialect):
    """The dialect as it is, but writing parameters as ``$1, $2, …`` (psycopg's RawCursor)."""
    numbered = _NUMBERED.get(dialect)
    if numbered is None:
        numbered = copy.copy(dialect)
        numbered.paramstyle, numbered.positional = "numeric_dollar", True
        # Its own quoting and type compiler, and no shared memos of type processors
        # (a string literal's doubles its % for pyformat only): nothing it builds
        # is reused by the engine's dialect, or the other way round.
        numbered.identifier_preparer = numbered.preparer(numbered)
        numbered.__dict__.pop("_type_memos", None)
        compiler = type(dialect.type_compiler_instance)(numbered)
        numbered.type_compiler_instance = numbered.type_compiler = compiler
        _NUMBERED[dialect] = numbered
    return numbered


def _is_datetime(type_) -> bool:
    """A DateTime column, or a TypeDecorator over one (``UTCDateTime``)."""
    return isinstance(getattr(type_, "impl_instance", type_), DateTime)


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
    """A Core statement the relay runs often; compiled the first time a dialect needs it.

    Compiled forms are kept per dialect object (an engine's own), so engines
    whose dialects differ in an option that changes the SQL or the processors
    never share one.
    """

    def __init__(self, statement: ClauseElement):
        self.statement = statement
        self._compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _cached(self, dialect, key: tuple, build: Callable[[], _Compiled]) -> _Compiled:
        forms = self._compiled.get(dialect)
        if forms is None:
            forms = self._compiled.setdefault(dialect, {})
        found = forms.get(key)
        if found is None:
            found = forms[key] = build()
        return found

    def compiled(self, dialect, keys: Sequence[str] | None = None) -> _Compiled:
        return self._cached(
            dialect,
            ("one", dialect.insert_returning, keys),
            lambda: _Compiled(self.statement, dialect, keys),
        )

    def rows_insert(self, dialect, keys: tuple[str, ...], count: int) -> _Compiled:
        """This INSERT as one statement of ``count`` rows: VALUES (…), (…), …"""

        def build() -> _Compiled:
            rows = _row_binds(self.statement.table, keys, count)
            # .values() on the statement itself keeps its other clauses (ON CONFLICT …).
            return _Compiled(self.statement.values(rows), dialect, None)

        return self._cached(dialect, ("rows", keys, count), build)

    def with_inserts(self, dialect, keys: tuple, inserts: tuple) -> _Compiled:
        """This UPDATE, with INSERTs of rows as data-modifying ``WITH`` queries of it
        (Postgres); ``inserts`` names each one's Statement, columns and row count.

        Every part names its binds itself (the UPDATE's its columns, the INSERTs'
        ``w0_ref_1``…), so what one part is given never shapes another's columns.
        """

        def build() -> _Compiled:
            ctes = [
                insert.statement.values(_row_binds(insert.statement.table, columns, count, i)).cte(
                    f"w{i}"
                )
                for i, (insert, columns, count) in enumerate(inserts)
            ]
            table = self.statement.table
            own = {key: bindparam(key, type_=table.c[key].type) for key in keys if key in table.c}
            return _Compiled(self.statement.values(own).add_cte(*ctes), dialect, None)

        return self._cached(dialect, ("with", keys, inserts), build)


def _row_binds(table, keys: Sequence[str], count: int, part: int | None = None) -> list[dict]:
    """``count`` rows of binds for ``keys``, named ``key_n`` (``wP_key_n`` in part P)."""
    prefix = "" if part is None else f"w{part}_"
    return [
        {key: bindparam(f"{prefix}{key}_{n}", type_=table.c[key].type) for key in keys}
        for n in range(count)
    ]


def _row_values(rows: list[dict], part: int | None = None) -> dict[str, Any]:
    """The values of ``rows`` under the names ``_row_binds`` gives their binds."""
    prefix = "" if part is None else f"w{part}_"
    return {f"{prefix}{key}_{n}": value for n, row in enumerate(rows) for key, value in row.items()}


# Rows per multi-row INSERT on Postgres: bounds how many forms get compiled.
ROWS_PER_INSERT = 16


def fetch(conn: Connection, statement: Statement, values: dict[str, Any]) -> list:
    """Run a statement that returns rows (a SELECT, an INSERT … RETURNING); its rows."""
    compiled = statement.compiled(conn.dialect, tuple(values))
    fetched = _run(conn, compiled, lambda: compiled.parameters(values), rows=bool(compiled.row))
    return compiled.rows(fetched)


def first(conn: Connection, statement: Statement, values: dict[str, Any]):
    """The first row a statement returns, or None."""
    rows = fetch(conn, statement, values)
    return rows[0] if rows else None


def one(conn: Connection, statement: Statement, values: dict[str, Any]):
    """The one row a statement returns; as SQLAlchemy's ``Result.one()``, else an error."""
    rows = fetch(conn, statement, values)
    if not rows:
        raise NoResultFound("No row was found when one was required")
    if len(rows) > 1:
        raise MultipleResultsFound("Multiple rows were found when exactly one was required")
    return rows[0]


def execute(conn: Connection, statement: Statement, values: dict | list[dict]) -> None:
    """Run a statement that returns nothing, once, or once per row of a list.

    The rows of a list all name the same columns; they go to the driver in one
    ``executemany``, or on Postgres, for an INSERT, as one multi-row INSERT.
    """
    if isinstance(values, dict):
        compiled = statement.compiled(conn.dialect, tuple(values))
        _run(conn, compiled, lambda: compiled.parameters(values))
        return
    if not values:
        return
    keys = tuple(values[0])
    if conn.dialect.name == "postgresql" and statement.statement.is_insert:
        # psycopg runs an executemany as one query per row; one multi-row INSERT
        # is one query (each of at most ROWS_PER_INSERT rows).
        for start in range(0, len(values), ROWS_PER_INSERT):
            chunk = values[start : start + ROWS_PER_INSERT]
            compiled = statement.rows_insert(conn.dialect, keys, len(chunk))

            def flat(compiled=compiled, chunk=chunk):
                return compiled.parameters(_row_values(chunk))

            _run(conn, compiled, flat)
        return
    compiled = statement.compiled(conn.dialect, keys)
    if len(values) == 1:
        _run(conn, compiled, lambda: compiled.parameters(values[0]))
    else:
        _run(conn, compiled, lambda: [compiled.parameters(row) for row in values], many=True)


def write(conn: Connection, inserts: list[tuple[Statement, list[dict]]], last, values: dict):
    """INSERTs of rows and an UPDATE (``last``, with ``values``), as one write.

    On Postgres that is one statement, each INSERT a data-modifying ``WITH`` query
    of the UPDATE: one round trip for all. The statement is atomic: Postgres runs
    every part (in an order of its own: the UPDATE first), a unique index fails it
    as it fails a single INSERT, and foreign keys are checked when it ends.
    SQLite has no INSERT in ``WITH``: there the INSERTs run one after another
    and then the UPDATE, as ``execute`` runs them; so they do when a table has
    more than ROWS_PER_INSERT rows (a YES releasing many held texts), which
    bounds the parameters of one statement and the forms compiled.
    """
    inserts = [(statement, rows) for statement, rows in inserts if rows]
    postgres = conn.dialect.name == "postgresql"
    if not postgres or not inserts or any(len(rows) > ROWS_PER_INSERT for _, rows in inserts):
        for statement, rows in inserts:
            execute(conn, statement, rows)
        execute(conn, last, values)
        return
    # Columns sorted: one compiled form whatever order a caller built its rows in.
    shapes = tuple((statement, tuple(sorted(rows[0])), len(rows)) for statement, rows in inserts)
    compiled = last.with_inserts(conn.dialect, tuple(sorted(values)), shapes)

    def parameters():
        named = dict(values)
        for i, (_statement, rows) in enumerate(inserts):
            named.update(_row_values(rows, i))
        return compiled.parameters(named)

    _run(conn, compiled, parameters)


# A statement as ``_run`` needs it: its SQL, and whether it goes to psycopg's RawCursor.
_Command = namedtuple("_Command", "sql raw", defaults=(False,))


def command(conn: Connection, sql: str) -> None:
    """A fixed command without parameters (SQLite's BEGIN IMMEDIATE), run the same way."""
    _run(conn, _Command(sql), tuple)


def _run(
    conn: Connection, compiled: "_Compiled | _Command", parameters: Callable, many=False, rows=False
) -> list:
    sql, params, cursor = compiled.sql, None, None
    try:
        params = parameters()
        driver = conn.connection.driver_connection
        cursor = RawCursor(driver) if compiled.raw else driver.cursor()
        if conn.dispatch.before_cursor_execute:
            for listener in conn.dispatch.before_cursor_execute:
                listener(conn, cursor, sql, params, None, many)
        if many:
            cursor.executemany(sql, params)
            return []
        cursor.execute(sql, params)
        return cursor.fetchall() if rows else []
    except BaseException as exc:
        # As Connection.execute does: a DBAPI error wrapped in sqlalchemy.exc (any
        # other error in a StatementError; a listener's own SQLAlchemy error as it
        # is), a lost connection or an interrupt invalidating the connection. The
        # caller's transaction then rolls back.
        conn._handle_dbapi_exception(exc, sql, params, cursor, None)
        raise  # not reached: the line above always raises
    finally:
        if cursor is not None:
            # Not contextlib.suppress, which costs an object per statement.
            try:  # noqa: SIM105
                cursor.close()
            except Exception:  # already closed with its connection
                pass
