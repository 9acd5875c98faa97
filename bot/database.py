"""The database connection: SQLite's and Postgres's settings, and read-only transactions.

SQLite follows SQLAlchemy's documented pysqlite recipe: the driver's own
transaction handling is turned off and the ``begin`` event issues ``BEGIN
IMMEDIATE``, so a writer takes the database's write lock up front and
concurrent webhooks (several gunicorn workers) queue on SQLite's busy timeout
instead of failing on a lock upgrade. The log is written ahead (WAL: readers
never block the writer), with ``synchronous=FULL``: every commit is on disk
before the code that made it goes on, so before a webhook answers Twilio.

Long reads (the portal's pages, ``audit export``, ``audit verify``) call
``read_only()`` first: on SQLite they then begin ``DEFERRED`` and read a snapshot
without taking the write lock.
"""

import logging
import os
import sqlite3

from sqlalchemy import event
from sqlalchemy.engine import Engine

from bot.extensions import db

READ_ONLY = "consentline_read_only"  # execution option: this transaction only reads


class PipelineAbortedNoise(logging.Filter):
    """Drop psycopg's warning about the pipeline an error aborted.

    A turn's rows go to Postgres as one executemany, which psycopg sends as a
    pipeline; when a row fails (a repeated MessageSid on its unique index) the
    error is raised and handled (the stored answer is replayed), and psycopg also
    logs that it could not end the aborted pipeline: a second line for one event.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        import psycopg

        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, psycopg.errors.PipelineAborted) for arg in args)


def engine_options(uri: str, config, options: dict) -> dict:
    """The engine's options: on Postgres, timeouts that keep a webhook within Twilio's wait."""
    options = dict(options)
    if uri.startswith("postgresql"):
        psycopg_log = logging.getLogger("psycopg")
        if not any(isinstance(f, PipelineAbortedNoise) for f in psycopg_log.filters):
            psycopg_log.addFilter(PipelineAbortedNoise())
        # No JIT: Postgres compiles a plan it costs high (the portal's CSV download,
        # which runs as a cursor over the whole log) before its first row, 100-200 ms
        # that the page waits for, and a query of this app never runs long enough to
        # gain it back.
        connect_args = {"connect_timeout": 5, "options": "-c jit=off"}
        if not os.environ.get("FLASK_RUN_FROM_CLI"):
            # The web answers within Twilio's 15-second wait rather than hang past
            # it; commands (migrations, exports) may take as long as they need.
            busy = config["DATABASE_BUSY_TIMEOUT"] * 1000
            connect_args["options"] += f" -c lock_timeout={busy} -c statement_timeout={busy + 2000}"
        options.setdefault("connect_args", connect_args)
    return options


def configure_sqlite(engine: Engine, busy_seconds: int) -> None:
    """WAL, a busy timeout, foreign keys, ``synchronous=FULL``, and our own BEGIN."""
    if sqlite3.sqlite_version_info < (3, 35):  # INSERT … RETURNING, which the relay uses
        raise RuntimeError(f"SQLite 3.35 or newer is needed, not {sqlite3.sqlite_version}")

    @event.listens_for(engine, "connect")
    def connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # pysqlite emits no BEGIN of its own
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_seconds * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin(connection):
        reader = connection.get_execution_options().get(READ_ONLY)
        connection.exec_driver_sql("BEGIN" if reader else "BEGIN IMMEDIATE")


def read_only() -> None:
    """Start the session's next transaction as a reader that blocks no writer."""
    db.session.rollback()
    db.session.connection(execution_options={READ_ONLY: True})
