"""The database settings every promise rests on (SQLite), and the SQLite writer lock."""

import threading
import time

import pytest
from sqlalchemy import text

from bot import writer_lock
from bot.extensions import db
from support import CONTACT, make_app


@pytest.fixture
def sqlite_app(request, tmp_path):
    template = request.getfixturevalue("sqlite_template")  # migrated once per session
    path = tmp_path / "db.sqlite3"
    path.write_bytes(template.read_bytes())
    app = make_app(f"sqlite:///{path}", DATABASE_BUSY_TIMEOUT="1")
    yield app
    with app.app_context():
        db.engine.dispose()


def test_sqlite_connections_are_durable_wal_with_foreign_keys(sqlite_app):
    with sqlite_app.app_context(), db.engine.connect() as conn:
        pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2  # FULL: every COMMIT is on disk when it returns
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") == 1000


def test_a_writer_begins_immediate_and_a_reader_deferred(sqlite_app):
    from bot.database import read_only

    with sqlite_app.app_context():
        with db.engine.begin() as writer:
            writer.execute(text("SELECT 1"))
            assert writer.connection.driver_connection.in_transaction
            other = db.engine.raw_connection()
            try:
                other.execute("PRAGMA busy_timeout = 0")
                with pytest.raises(Exception, match="locked"):  # the write lock is taken
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
        read_only()
        db.session.execute(text("SELECT 1"))
        with db.engine.begin() as writer:  # a reader blocks no writer
            writer.execute(text("UPDATE settings SET value = value"))
        db.session.rollback()


def test_a_waiting_writer_gets_the_lock_as_soon_as_it_is_let_go(sqlite_app):
    with sqlite_app.app_context():
        engine = db.engine
    released, got = [], []

    def second():
        with writer_lock.held(engine, timeout=5):
            got.append(time.monotonic())

    with writer_lock.held(engine, timeout=5):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.2)
        assert not got  # it waits
        released.append(time.monotonic())
    waiter.join(5)
    assert got and got[0] - released[0] < 0.02


def test_a_webhook_that_cannot_get_its_turn_answers_503_and_writes_nothing(sqlite_app):
    from support import Twilio, add_alice

    add_alice(sqlite_app.test_cli_runner())
    twilio = Twilio(sqlite_app.test_client())
    with sqlite_app.app_context():
        engine = db.engine
    params = {"MessageSid": "SM" + "5" * 32, "From": CONTACT, "To": "+14155550100", "Body": "Hi"}
    with writer_lock.held(engine, timeout=5):  # another writer, for longer than the timeout
        started = time.monotonic()
        response = twilio.post("/twilio/sms", params)
        waited = time.monotonic() - started
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert 1.0 <= waited < 3.0
    with sqlite_app.app_context():
        assert db.session.execute(text("SELECT count(*) FROM messages")).scalar() == 0
    assert twilio.post("/twilio/sms", params).status_code == 200  # Twilio's retry
