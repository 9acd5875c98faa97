"""The floor of a durable gate: the bare endpoint plus one durable write of the text.

What no consent gate can leave out, and nothing more: ``POST /twilio/sms`` checks
``X-Twilio-Signature`` exactly as ``bench.bare`` does, then keeps the inbound text
(its MessageSid, From, To and Body) in one transaction that is on disk before the
answer goes out (SPEC §10 records every text; §7's idempotency needs the SID kept),
and answers the same fixed ``MessagingResponse``. No read, no decision, no evidence
chain, no second table: one ``INSERT … ON CONFLICT DO NOTHING`` and a durable COMMIT,
on the driver directly (``sqlite3``, ``psycopg``), with no SQLAlchemy around it.

So its throughput bounds from above what any app that keeps its texts durably in
that database can serve on this machine, and ``floor / bare`` bounds ``app / bare``:
where the floor is already under a target, no relay can meet it here.

Served like the others: ``gunicorn bench.floor:app --bind 127.0.0.1:PORT`` from the
project root, ``DATABASE_URL`` a ``sqlite:///PATH`` or ``postgresql://`` URL (its one
table is made at start). SQLite: WAL, ``synchronous=FULL``, BEGIN IMMEDIATE under a
busy timeout. Postgres: one connection per worker, the server's own durability
(``synchronous_commit`` as configured, on by default).
"""

import os
import sqlite3
import threading

from flask import Flask, Response, abort, request
from twilio.request_validator import RequestValidator, get_signature_algorithm

from bench.bare import ANSWER, BASE, TOKEN

DATABASE_URL = os.environ.get("DATABASE_URL", "")
TABLE = "floor_inbound"
SQLITE_PREFIX = "sqlite:///"

app = Flask(__name__)
_local = threading.local()


def _sqlite_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _postgres_connect(url: str):
    import psycopg

    return psycopg.connect(url.replace("postgres://", "postgresql://", 1))


def _create_table() -> None:
    ddl = (
        f"CREATE TABLE IF NOT EXISTS {TABLE} (sid VARCHAR(64) PRIMARY KEY,"
        " sender VARCHAR(255) NOT NULL, recipient VARCHAR(255) NOT NULL, body TEXT NOT NULL)"
    )
    if DATABASE_URL.startswith(SQLITE_PREFIX):
        conn = _sqlite_connect(DATABASE_URL[len(SQLITE_PREFIX) :])
        conn.execute(ddl)
        conn.close()
    elif DATABASE_URL:
        with _postgres_connect(DATABASE_URL) as conn:
            conn.execute(ddl)


def _keep(sid: str, sender: str, recipient: str, body: str) -> None:
    """One durable transaction: the text is on disk when this returns."""
    conn = getattr(_local, "conn", None)
    if DATABASE_URL.startswith(SQLITE_PREFIX):
        if conn is None:
            conn = _local.conn = _sqlite_connect(DATABASE_URL[len(SQLITE_PREFIX) :])
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (sid, sender, recipient, body),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return
    if conn is None:
        conn = _local.conn = _postgres_connect(DATABASE_URL)
    with conn.transaction():
        conn.execute(
            f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (sid, sender, recipient, body),
        )


def kept(database_url: str) -> int:
    """How many texts the floor at ``database_url`` has kept (for the bench's check)."""
    sql = f"SELECT count(*) FROM {TABLE}"
    if database_url.startswith(SQLITE_PREFIX):
        conn = sqlite3.connect(database_url[len(SQLITE_PREFIX) :])
        try:
            return conn.execute(sql).fetchone()[0]
        finally:
            conn.close()
    with _postgres_connect(database_url) as conn:
        return conn.execute(sql).fetchone()[0]


if DATABASE_URL:
    _create_table()


@app.post("/twilio/sms")
def sms():
    base = BASE or request.root_url.rstrip("/")
    query = request.query_string.decode("latin-1")
    url = base + request.path + ("?" + query if query else "")
    algorithm = get_signature_algorithm(request.headers.get("X-Twilio-Webhooks-Signature-Settings"))
    signature = request.headers.get("X-Twilio-Signature", "")
    if not TOKEN or not RequestValidator(TOKEN).validate(url, request.form, signature, algorithm):
        abort(403)
    form = request.form
    texts = (form.get(name, "") for name in ("MessageSid", "From", "To", "Body"))
    _keep(*texts)
    return Response(ANSWER, mimetype="text/xml")


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
