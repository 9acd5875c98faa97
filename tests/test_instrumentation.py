"""The webhook's statements go through SQLAlchemy's engine: its events and Flask-SQLAlchemy's
query recording see every one of them, so the app can be instrumented (OpenTelemetry, Sentry)."""

import pytest
from flask_sqlalchemy.record_queries import get_recorded_queries
from sqlalchemy import event

from bot import create_app, relay
from bot.extensions import db
from bot.models import utcnow
from support import CELL, CONTACT, LINE, base_env


@pytest.fixture
def statements(app):
    """Every statement an engine listener is told about, before and after it runs."""
    seen = {"before": [], "after": []}

    def before(conn, cursor, statement, parameters, context, executemany):
        seen["before"].append(statement)

    def after(conn, cursor, statement, parameters, context, executemany):
        seen["after"].append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    yield seen
    event.remove(engine, "before_cursor_execute", before)
    event.remove(engine, "after_cursor_execute", after)


def test_an_engine_listener_sees_every_statement_of_a_webhook(app, twilio, employee, statements):
    traced = []
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            # What SQLite itself runs, from the driver: the listener must see all of it.
            @event.listens_for(db.engine, "connect")
            def trace(dbapi_connection, _record):
                dbapi_connection.set_trace_callback(traced.append)

            db.engine.dispose()  # new connections, traced
    twilio.sms(CONTACT, "Hi")  # a new conversation: consent request, notice, evidence
    twilio.sms(CONTACT, "YES")  # releases the held text
    twilio.sms(CELL, "See you at 10")  # to the current contact
    before, after = statements["before"], statements["after"]
    assert before == after  # each one timed from start to end
    verbs = [s.split(None, 2)[:2] for s in before]
    for written in (["INSERT", "INTO"], ["UPDATE", "conversations"], ["UPDATE", "messages"]):
        assert written in verbs
    tables = " ".join(before)
    for table in ("messages", "attestations", "conversations", "employees", "settings"):
        assert table in tables
    if traced:
        # SQLite traces each row of an executemany; the listener sees the statement once.
        # SQLite's triggers keep the contacts' search index (migration 0007): their
        # statements are SQLite's own, run inside the INSERT that fired them.
        run = [
            s
            for s in traced
            if s.split()[0] not in ("COMMIT", "ROLLBACK", "PRAGMA", "--")
            and "conversation_search" not in s
        ]
        assert _collapsed(run) == _collapsed(before)


def _collapsed(statements: list[str]) -> list[str]:
    """Each statement's start (``INSERT INTO messages``), a run of the same one once."""
    starts = [" ".join(s.split()[:3]) for s in statements]
    return [s for i, s in enumerate(starts) if i == 0 or starts[i - 1] != s]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_record_queries_lists_a_webhooks_statements(database_url):
    app = create_app({"TESTING": True, "SQLALCHEMY_RECORD_QUERIES": True}, base_env(database_url))
    app.test_cli_runner().invoke(
        args=["employees", "add", "--name", "Alice", "--cell", CELL, "--line", LINE]
    )
    inbound = relay.Inbound(sid="SM" + "1" * 32, sender=CONTACT, to=LINE, body="Hi")
    with app.test_request_context():
        relay.handle_inbound(inbound, utcnow(), "https://example.test/twilio/status")
        recorded = get_recorded_queries()
    statements = [q.statement.split(None, 2)[:2] for q in recorded]
    assert ["INSERT", "INTO"] in statements and ["UPDATE", "conversations"] in statements
    assert all(q.end_time >= q.start_time for q in recorded)
