"""bot.statements: statements run on the driver's cursor keep SQLAlchemy's semantics."""

import pytest
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.exc import IntegrityError, NoResultFound, StatementError

from bot import evidence, statements
from bot.extensions import db
from bot.models import Attestation, Conversation, Direction, Message
from support import CELL, CONTACT

DIALECTS = [sqlite.dialect(), psycopg.dialect()]


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_a_column_default_left_to_sqlalchemy_is_refused(dialect):
    """Nothing here would fill in ``created_at=utcnow()``: the caller must give every value."""
    statement = statements.Statement(insert(Message.__table__))
    with pytest.raises(ValueError, match="needs values"):
        statement.compiled(dialect, ("ref", "conversation_id", "direction", "body"))


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_a_statement_without_returning_does_not_fetch_the_new_key(dialect):
    """Compiled as for executemany: no implicit RETURNING id on Postgres."""
    keys = tuple(c.key for c in Attestation.__table__.columns if c.key != "id")
    compiled = statements.Statement(insert(Attestation.__table__)).compiled(dialect, keys)
    assert "RETURNING" not in compiled.sql.upper()
    assert compiled.row is None


def test_values_and_rows_go_through_the_column_types(app, twilio, employee):
    """Enums, booleans and UTC datetimes come back as SQLAlchemy would return them."""
    twilio.sms(CONTACT, "Hi")
    lock = statements.Statement(
        select(Conversation.__table__).where(Conversation.__table__.c.contact == CONTACT)
    )
    with app.app_context(), db.engine.connect() as conn:
        [row] = statements.fetch(conn, lock, {})
        orm = db.session.execute(select(Conversation)).scalar_one()
    assert row.state == orm.state and type(row.state) is type(orm.state)
    assert row.twilio_opt_out is False
    assert row.created_at == orm.created_at and row.created_at.tzinfo is not None


def test_a_duplicate_row_raises_sqlalchemys_integrity_error(app, twilio, employee):
    """The repeated MessageSid in the last of 20 rows (past one multi-row INSERT on Postgres)."""
    twilio.sms(CONTACT, "Hi", sid="SM" + "1" * 32)
    table = Message.__table__
    count = select(func.count()).select_from(table)
    with app.app_context():
        with db.engine.connect() as conn:
            before = conn.execute(count).scalar()
            row = dict(conn.execute(select(table).limit(1)).one()._mapping)
        row.pop("id")
        rows = [row | {"ref": f"ref-{n}", "twilio_sid": None} for n in range(19)]
        rows.append(row | {"ref": "ref-last"})  # the same twilio_sid as the stored text
        with pytest.raises(IntegrityError), db.engine.begin() as conn:
            statements.execute(conn, statements.Statement(insert(table)), rows)
        with db.engine.connect() as conn:
            # Nothing of the failed transaction stays; the pool's connection works.
            assert conn.execute(count).scalar() == before


def test_an_error_in_a_value_is_a_statement_error(app, twilio, employee):
    """A naive datetime fails in the column type's processor: wrapped as execute would."""
    from datetime import datetime

    save = statements.Statement(
        update(Conversation.__table__).where(Conversation.__table__.c.id == bindparam("conv_id"))
    )
    twilio.sms(CONTACT, "Hi")
    naive = {"updated_at": datetime(2026, 1, 1), "conv_id": 1}
    with app.app_context(), pytest.raises(StatementError, match="naive"), db.engine.begin() as c:
        statements.execute(c, save, naive)


def test_sql_reaches_the_database_as_written(app):
    """On Postgres the statements are numbered (``$1``) and run on psycopg's RawCursor,
    which sends them as they are: a % in the SQL is one %, as on SQLite."""
    from sqlalchemy import literal, literal_column

    percent = statements.Statement(
        select(literal_column("'100%'").label("sign"), literal("50%").label("value"))
    )
    with app.app_context(), db.engine.connect() as conn:
        row = statements.one(conn, percent, {})
        compiled = percent.compiled(conn.dialect, ())
    assert (row.sign, row.value) == ("100%", "50%")
    if conn.dialect.name == "postgresql":
        assert compiled.raw and "$1" in compiled.sql


def test_one_row_or_an_error(app):
    missing = statements.Statement(
        select(Conversation.__table__.c.id).where(Conversation.__table__.c.id == -1)
    )
    with app.app_context(), db.engine.connect() as conn, pytest.raises(NoResultFound):
        statements.one(conn, missing, {})


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_statements_completed_while_executing_are_refused(dialect):
    table = Message.__table__
    expanding = select(table.c.id).where(table.c.id.in_(bindparam("ids", expanding=True)))
    with pytest.raises(ValueError, match="while executing"):
        statements.Statement(expanding).compiled(dialect, ("ids",))
    twice = select(table.c.id, Conversation.__table__.c.id).join(Conversation.__table__)
    with pytest.raises(ValueError, match="two columns"):
        statements.Statement(twice).compiled(dialect, ())


def test_record_queries_is_refused():
    from bot import create_app
    from support import base_env

    with pytest.raises(RuntimeError, match="SQLALCHEMY_RECORD_QUERIES"):
        create_app({"SQLALCHEMY_RECORD_QUERIES": True}, env=base_env("sqlite://"))


def test_more_texts_than_one_insert_takes_are_all_kept_in_order(app, twilio, employee):
    """YES releasing 20 held texts: on Postgres that is more rows than one INSERT carries."""
    many = statements.ROWS_PER_INSERT + 4
    assert twilio.sms(CONTACT, "Hello 0")  # the consent request
    for n in range(1, many):
        assert twilio.sms(CONTACT, f"Hello {n}") == []
    sent = twilio.sms(CONTACT, "YES")
    relays = [s.body for s in sent if s.to == CELL][1:]  # after the opted-in notice
    assert relays == [f"{CONTACT}: Hello {n}" for n in range(many)]
    with app.app_context():
        table = Message.__table__
        outbound = db.session.execute(
            select(table.c.body)
            .where(table.c.direction == Direction.OUTBOUND, table.c.body.like("%Hello%"))
            .order_by(table.c.id)
        ).scalars()
        assert list(outbound) == relays
        report = evidence.verify()
    # Each held text: received, released, relayed; plus the consent request and events.
    assert report.ok and report.entries > 3 * many


def test_each_time_is_formatted_once_and_as_itself():
    """A datetime's processor keeps its last answer, for the same object only."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import Column, DateTime, Integer, MetaData, Table, TypeDecorator

    calls = []

    class Counted(TypeDecorator):
        impl = DateTime
        cache_ok = True

        def process_bind_param(self, value, dialect):
            calls.append(value)
            return value

    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("at", Counted))
    save = statements.Statement(update(table).where(table.c.id == bindparam("row_id")))
    compiled = save.compiled(sqlite.dialect(), ("at", "row_id"))
    first = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    assert compiled.parameters({"at": first, "row_id": 1}) == ("2026-12-01 09:30:00.000000", 1)
    assert compiled.parameters({"at": first, "row_id": 2})[0] == "2026-12-01 09:30:00.000000"
    assert calls == [first]  # formatted once for the same object
    equal = first + timedelta(0)
    assert equal is not first
    compiled.parameters({"at": equal, "row_id": 3})
    later = first + timedelta(microseconds=1)
    assert compiled.parameters({"at": later, "row_id": 4})[0].endswith(".000001")
    assert compiled.parameters({"at": None, "row_id": 5})[0] is None
    assert calls == [first, equal, later, None]
    # The app's UTC datetime columns get the same treatment.
    assert statements._is_datetime(Conversation.__table__.c.updated_at.type)


def _reference_parameters(compiled, dialect, table, values):
    """Each bind's value through its column type's own processor, as SQLAlchemy sends it."""
    out = []
    for _name, key, _proc, fixed in compiled.binds:
        if key is None:
            out.append(fixed)
            continue
        proc = table.c[key].type.dialect_impl(dialect).bind_processor(dialect)
        out.append(values[key] if proc is None else proc(values[key]))
    return tuple(out)


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_parameters_are_what_the_column_types_make_of_the_values(dialect):
    """The written-out parameter function, its memoised enums and booleans included."""
    from datetime import UTC, datetime

    from bot.consent import Role
    from bot.models import Disposition, RecordKind

    table = Message.__table__
    keys = tuple(c.key for c in table.columns if c.key != "id")
    compiled = statements.Statement(insert(table)).compiled(dialect, keys)
    now = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    base = dict.fromkeys(keys) | {"ref": "r", "conversation_id": 1, "body": "b", "media_json": "[]"}
    base |= {"status": "received", "created_at": now, "updated_at": now}
    rows = [
        base | {"direction": Direction.INBOUND, "author": Role.CONTACT, "hint": True},
        base | {"direction": "outbound", "author": None, "hint": 1, "recovered": False},
        base | {"direction": Direction.OUTBOUND, "disposition": Disposition.HELD, "hint": 0},
        base | {"direction": "inbound", "disposition": "released", "signature_valid": None},
        base | {"direction": Direction.INBOUND, "author": Role.EMPLOYEE, "hint": True},  # again
    ]
    for row in rows:
        expected = _reference_parameters(compiled, dialect, table, row)
        assert compiled.parameters(row) == expected
        assert [type(v) for v in compiled.parameters(row)] == [type(v) for v in expected]
    # An enum value the column does not know is refused, as SQLAlchemy refuses it,
    # and never remembered.
    entries = statements.Statement(insert(Attestation.__table__))
    akeys = tuple(c.key for c in Attestation.__table__.columns if c.key != "id")
    acompiled = entries.compiled(dialect, akeys)
    bad = dict.fromkeys(akeys) | {"kind": RecordKind.MESSAGE, "direction": Direction.INBOUND}
    acompiled.parameters(bad)
    with pytest.raises(LookupError):
        acompiled.parameters(bad | {"direction": 7})
    with pytest.raises(LookupError):
        acompiled.parameters(bad | {"direction": 7})


def test_a_memoised_processor_keeps_a_bounded_number_of_answers():
    seen = []
    memo = statements._Memo(lambda v: seen.append(v) or f"<{v}>")
    assert [memo(n) for n in range(100)] == [f"<{n}>" for n in range(100)]
    assert len(memo.known) == statements._Memo.LIMIT
    assert memo.known[3] == "<3>" and 99 not in memo.known


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_utc_times_are_bound_once_for_every_statement_as_their_type_binds_them(dialect):
    """UTCDateTime binds by instant: one memo across statements and zones, never stale."""
    from datetime import UTC, datetime, timedelta, timezone

    from bot.models import UTCDateTime

    messages, entries = Message.__table__, Attestation.__table__
    reference = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    mkeys = tuple(c.key for c in messages.columns if c.key != "id")
    akeys = tuple(c.key for c in entries.columns if c.key != "id")
    insert_message = statements.Statement(insert(messages)).compiled(dialect, mkeys)
    insert_entry = statements.Statement(insert(entries)).compiled(dialect, akeys)
    at = {name for name, key, _, _ in insert_message.binds if key in ("created_at", "updated_at")}
    procs = {proc for name, key, proc, _ in insert_message.binds + insert_entry.binds if name in at}
    assert len(procs) == 1  # one memo for every UTC time these statements bind
    (memo,) = procs
    now = datetime(2026, 12, 1, 9, 30, 0, 5, tzinfo=UTC)
    moments = [
        now,
        now.astimezone(timezone(timedelta(hours=-5))),  # the same instant elsewhere
        now + timedelta(microseconds=1),
        *(now + timedelta(seconds=n) for n in range(3 * statements._Memo.LIMIT)),
        now,
        None,
    ]
    mrow = dict.fromkeys(mkeys) | {"direction": Direction.INBOUND}
    arow = dict.fromkeys(akeys)
    for moment in moments:
        expected = reference(moment)
        got = insert_message.parameters(mrow | {"created_at": moment, "updated_at": moment})
        index = [name for name, _, _, _ in insert_message.binds].index(
            next(name for name, key, _, _ in insert_message.binds if key == "created_at")
        )
        assert got[index] == expected
        assert memo(moment) == expected
        insert_entry.parameters(arow | {"created_at": moment})
        assert len(memo.known) <= statements._Memo.LIMIT
    with pytest.raises(ValueError, match="naive"):
        memo(datetime(2026, 12, 1))
    with pytest.raises(ValueError, match="naive"):  # a refusal is never remembered
        memo(datetime(2026, 12, 1))
