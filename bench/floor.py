"""The floor of a durable gate: the bare endpoint plus one durable write of the text.

What no consent gate can leave out, and nothing more: ``POST /twilio/sms`` checks
``X-Twilio-Signature`` exactly as ``bench.bare`` does, then keeps the inbound text
(its MessageSid, From, To and Body) in one transaction that is on disk before the
answer goes out (SPEC §10 records every text; §7's idempotency needs the SID kept),
and answers the same fixed ``MessagingResponse``. No read, no decision, no evidence
chain, no second table: one ``INSERT … ON CONFLICT DO NOTHING`` on the driver
directly (``sqlite3``, ``psycopg``), with no SQLAlchemy around it.

Its durability is the app's own, at its cheapest: on SQLite the app's
``WriterQueue`` (the cross-process writer lock, COMMIT under ``synchronous=NORMAL``,
the write-ahead log's ``fdatasync`` after the lock is let go, a PASSIVE checkpoint
every 100 commits); on Postgres one autocommitted statement, a single round trip,
as durable as the server's ``synchronous_commit`` (on by default) makes any commit.
So its throughput bounds from above what the app, or any app that keeps its texts
in that database as durably, can serve on this machine: ``floor / bare`` bounds
``app / bare``, and where the floor is under a target no relay can meet it here.

Served like the others: ``gunicorn bench.floor:app --bind 127.0.0.1:PORT`` from the
project root, ``DATABASE_URL`` a ``sqlite:///PATH`` or ``postgresql://`` URL whose
table ``create_table`` made first (``bench.run --floor`` does).
"""

import os
import sqlite3
import threading

from flask import Flask, Response, request

from bench.bare import ANSWER, check_signature
from bot import WriterQueue, prepare_sqlite_connection

TABLE = "floor_inbound"
SQLITE_PREFIX = "sqlite:///"
BUSY_SECONDS = 10  # the app's DATABASE_BUSY_TIMEOUT in the bench

app = Flask(__name__)
_local = threading.local()


def _sqlite_path(database_url: str) -> str | None:
    if database_url.startswith(SQLITE_PREFIX):
        return os.path.realpath(database_url[len(SQLITE_PREFIX) :])
    return None


# The database this server writes to, read once (no file is touched at import),
# and on SQLite the app's writer queue for it.
DATABASE_URL = os.environ.get("DATABASE_URL", "")
SQLITE_PATH = _sqlite_path(DATABASE_URL)
QUEUE = (
    WriterQueue(SQLITE_PATH + ".writer-lock", BUSY_SECONDS, wal=SQLITE_PATH + "-wal")
    if SQLITE_PATH
    else None
)


def _postgres_connect(database_url: str):
    import psycopg

    url = database_url.replace("postgres://", "postgresql://", 1)
    return psycopg.connect(url, autocommit=True)


def create_table(database_url: str) -> None:
    """The floor's one table, made before its servers start (not by each worker)."""
    ddl = (
        f"CREATE TABLE IF NOT EXISTS {TABLE} (sid VARCHAR(64) PRIMARY KEY,"
        " sender VARCHAR(255) NOT NULL, recipient VARCHAR(255) NOT NULL, body TEXT NOT NULL)"
    )
    path = _sqlite_path(database_url)
    if path is not None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(ddl)
        finally:
            conn.close()
        return
    with _postgres_connect(database_url) as conn:
        conn.execute(ddl)


def kept(database_url: str) -> int:
    """How many texts the floor at ``database_url`` has kept (for the bench's check)."""
    sql = f"SELECT count(*) FROM {TABLE}"
    path = _sqlite_path(database_url)
    if path is not None:
        conn = sqlite3.connect(path)
        try:
            return conn.execute(sql).fetchone()[0]
        finally:
            conn.close()
    with _postgres_connect(database_url) as conn:
        return conn.execute(sql).fetchone()[0]


def _keep_sqlite(row: tuple[str, ...]) -> None:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = sqlite3.connect(SQLITE_PATH)
        prepare_sqlite_connection(conn, QUEUE, BUSY_SECONDS)  # the app's own set-up
    QUEUE.check()
    if QUEUE.acquire(conn) is None:
        raise sqlite3.OperationalError("the writer lock was not free in time")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", row)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        QUEUE.release(conn)
    QUEUE.flush(conn)  # on disk before the answer, as the app's commits
    QUEUE.committed(conn)


def _keep_postgres(row: tuple[str, ...]) -> None:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = _postgres_connect(DATABASE_URL)
    conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", row)


@app.post("/twilio/sms")
def sms():
    check_signature()
    form = request.form
    row = tuple(form.get(name, "") for name in ("MessageSid", "From", "To", "Body"))
    if SQLITE_PATH is not None:
        _keep_sqlite(row)
    else:
        _keep_postgres(row)
    return Response(ANSWER, mimetype="text/xml")


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
