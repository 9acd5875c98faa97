"""The two reference servers the app is measured against, served like the app.

``bare``: the limit of the stack. Flask checks Twilio's signature with
``RequestValidator`` over the URL the app validates (``PUBLIC_BASE_URL`` + path)
and answers a fixed ``MessagingResponse``. No database.

``floor``: ``bare`` plus one durable write, the least an app that keeps its
texts must do: an ``INSERT … ON CONFLICT DO NOTHING`` of the MessageSid and body
in a transaction of its own, through SQLAlchemy on the app's own database
settings (SQLite: ``bot.database``'s WAL, ``BEGIN IMMEDIATE`` and
``synchronous=FULL``; Postgres: one commit). ``app / floor`` is then what the
relay's own work costs.

    gunicorn bench.servers:bare      gunicorn bench.servers:floor
"""

import os

from flask import Flask, Response, abort, request
from sqlalchemy import Column, MetaData, String, Table, Text, create_engine
from sqlalchemy.dialects import postgresql, sqlite
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from bot.config import database_url

TOKEN = os.environ.get("TWILIO_AUTH_TOKEN", "")
BASE = os.environ.get("PUBLIC_BASE_URL", "")
_answer = MessagingResponse()
_answer.message("Thanks, we got your message.")
ANSWER = str(_answer)


def _checked() -> None:
    """403 unless Twilio signed this request, as the app checks it."""
    url = BASE + request.path
    if not RequestValidator(TOKEN).validate(
        url, request.form, request.headers.get("X-Twilio-Signature", "")
    ):
        abort(403)


def _server(write=None) -> Flask:
    app = Flask(__name__)

    @app.post("/twilio/sms")
    def sms():
        _checked()
        if write is not None:
            write(request.form.get("MessageSid", ""), request.form.get("Body", ""))
        return Response(ANSWER, mimetype="text/xml")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


TEXTS = Table(
    "floor_texts", MetaData(), Column("sid", String(64), primary_key=True), Column("body", Text)
)


def create_table(url: str) -> None:
    """The floor's table, made before its workers start."""
    engine = create_engine(database_url(url, ""))
    TEXTS.create(engine, checkfirst=True)
    engine.dispose()


def _durable_insert():
    """One durable INSERT per text, on the app's database settings."""
    from bot import database

    engine = create_engine(database_url(os.environ["DATABASE_URL"], ""))
    if engine.dialect.name == "sqlite":
        database.configure_sqlite(engine, busy_seconds=10)
    texts = TEXTS
    dialect = {"sqlite": sqlite, "postgresql": postgresql}[engine.dialect.name]
    statement = dialect.insert(texts).on_conflict_do_nothing()

    def write(sid: str, body: str) -> None:
        with engine.begin() as conn:
            conn.execute(statement, {"sid": sid, "body": body})

    return write


bare = _server()
floor = _server(_durable_insert()) if os.environ.get("DATABASE_URL") else None
