"""How many SQL statements each kind of webhook issues.

    .venv/bin/python -m bench.queries                 # a migrated temp SQLite
    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bench_queries \\
        .venv/bin/python -m bench.queries             # and that Postgres database (WIPED)
    .venv/bin/python -m bench.queries --show yes      # print the statements of one kind

In-process: the app's own engine, Flask's test client, a ``before_cursor_execute``
listener attached only while the one measured webhook runs (its set-up webhooks are
not counted). What is counted: every statement SQLAlchemy sends through a DBAPI
cursor, which includes SQLite's explicit ``BEGIN IMMEDIATE`` (the app issues it
itself) but not Postgres's implicit ``BEGIN`` (psycopg sends it) nor either
database's ``COMMIT`` (``connection.commit()``, not a cursor). An ``executemany``
(several rows inserted at once) counts once.

For a test with ceilings::

    from bench.queries import KINDS, count_queries, make_app
    app = make_app("sqlite:///" + str(tmp_path / "q.sqlite3"))   # migrated, employee added
    assert count_queries(app, "relay_contact") <= 12

``count_queries(app, kind)`` also works with any app built by ``bot.create_app``
(e.g. the tests' ``make_app``) whose schema is migrated: it adds the bench's
employee if the line is free and signs with the app's own ``TWILIO_AUTH_TOKEN``.
Each call uses a new contact, so calls are independent and can be repeated.
"""

import argparse
import itertools
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from flask import Flask
from sqlalchemy import event, select, text
from twilio.request_validator import RequestValidator

from bench.common import LINES, TOKEN, contact_number
from bench.load import twilio_params

KINDS = (
    "contact_first",  # a new contact's first text
    "pending_text",  # the contact's second text while the consent request is pending
    "yes",  # the contact answers YES to the consent request (one held text released)
    "relay_contact",  # the opted-in contact's text, relayed to the employee
    "relay_employee",  # the employee's "+1… body" to an opted-in contact
    "employee_first",  # the employee's "+1… Hi" to a new contact
    "employee_text",  # the employee's text without a number (to the current contact)
    "help",  # HELP from an opted-in contact (OptOutType=HELP)
    "stop",  # STOP from an opted-in contact (OptOutType=STOP)
    "duplicate",  # a webhook Twilio sends again (same MessageSid)
    "status",  # a status callback (delivered) for a text the app sent
)
LINE = LINES[0]
_contacts = itertools.count(7_000_000 + os.getpid() % 1000 * 1000)
_sids = itertools.count(1)


def make_app(database_url: str | None = None) -> Flask:
    """An app on ``database_url`` (default: a new temp SQLite file), migrated, with an employee."""
    from flask_migrate import upgrade

    from bot import create_app
    from bot.extensions import db

    if database_url is None:
        database_url = "sqlite:///" + str(Path(tempfile.mkdtemp(prefix="bench_q_")) / "q.sqlite3")
    env = {
        "DATABASE_URL": database_url,
        "SECRET_KEY": "bench-secret-key",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "COMPANY_NAME": "Acme Plumbing",
    }
    app = create_app({"TESTING": True}, env=env)
    with app.app_context():
        upgrade()
        _ensure_employee(app)
        db.session.remove()
    return app


def wipe_postgres(database_url: str) -> None:
    """Drop and recreate the public schema (the database must be one the bench may wipe)."""
    from sqlalchemy import create_engine

    from bot.config import database_url as to_sqlalchemy

    engine = create_engine(to_sqlalchemy(database_url, ""))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def _ensure_employee(app: Flask) -> None:
    from bot import employees
    from bot.extensions import db
    from bot.models import Employee

    with app.app_context():
        found = db.session.execute(
            select(Employee.id).where(Employee.line == LINE.line, Employee.active.is_(True))
        ).first()
        if found is None:
            employees.add(LINE.name, LINE.cell, LINE.line, None, "US")
            db.session.commit()


class _Client:
    """Signs and posts webhooks like Twilio, against the app's own URL and token."""

    def __init__(self, app: Flask):
        self.app = app
        self.client = app.test_client()
        self.validator = RequestValidator(app.config.get("TWILIO_AUTH_TOKEN") or "")
        self.base = app.config.get("PUBLIC_BASE_URL") or "http://localhost"

    def post(self, path_and_query: str, params: dict):
        signature = self.validator.compute_signature(self.base + path_and_query, params)
        response = self.client.post(
            path_and_query,
            data=params,
            headers={"X-Twilio-Signature": signature},
            base_url="http://localhost",
        )
        if response.status_code != 200:
            raise RuntimeError(f"{path_and_query} answered {response.status_code}")
        return response

    def sms(self, sender: str, body: str, **extra: str) -> tuple[dict, str]:
        sid = f"SM{next(_sids):032x}{os.getpid():x}"[:34]
        params = twilio_params(sid, sender, LINE.line, body, **extra)
        return params, self.post("/twilio/sms", params).get_data(as_text=True)


def _setup(c: _Client, kind: str, contact: str):
    """Bring ``contact`` to where ``kind`` happens; return what the measured step needs."""
    if kind in ("contact_first", "employee_first"):
        return None
    params, answer = c.sms(contact, "Hi, I need a quote for a leaking tap")
    if kind in ("duplicate", "status"):
        return params, answer
    if kind in ("yes", "pending_text"):
        return None
    c.sms(contact, "YES")
    return None


def _measured(c: _Client, kind: str, contact: str, prepared) -> None:
    if kind == "contact_first":
        c.sms(contact, "Hi, I need a quote for a leaking tap")
    elif kind == "pending_text":
        c.sms(contact, "Anyone there?")
    elif kind == "yes":
        c.sms(contact, "YES")
    elif kind == "relay_contact":
        c.sms(contact, "Great, Tuesday morning works for me")
    elif kind == "relay_employee":
        c.sms(LINE.cell, f"{contact} Tuesday at 10 works, see you then")
    elif kind == "employee_first":
        c.sms(LINE.cell, f"{contact} Hi, this is Ana")
    elif kind == "employee_text":
        c.sms(LINE.cell, "On my way, about 15 minutes out")
    elif kind == "help":
        c.sms(contact, "HELP", OptOutType="HELP")
    elif kind == "stop":
        c.sms(contact, "STOP", OptOutType="STOP")
    elif kind == "duplicate":
        params, _ = prepared
        c.post("/twilio/sms", params)
    elif kind == "status":
        _, answer = prepared
        callback = urlsplit(_first_callback(answer))
        ref = parse_qs(callback.query)["ref"][0]
        params = {"MessageSid": "SM" + "d" * 32, "MessageStatus": "delivered"}
        params |= {"AccountSid": "AC" + "5" * 32, "ApiVersion": "2010-04-01"}
        c.post(f"{callback.path}?{urlencode({'ref': ref})}", params)
    else:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")


def _first_callback(twiml: str) -> str:
    import xml.etree.ElementTree as ET

    message = ET.fromstring(twiml).find("Message")
    return message.get("statusCallback")


@contextmanager
def _listening(app: Flask):
    from bot.extensions import db

    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def capture_queries(app: Flask, kind: str) -> list[str]:
    """The SQL statements of one webhook of ``kind`` (set-up webhooks not included)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    _ensure_employee(app)
    c = _Client(app)
    contact = contact_number(next(_contacts))
    prepared = _setup(c, kind, contact)
    with _listening(app) as statements:
        _measured(c, kind, contact, prepared)
    return statements


def count_queries(app: Flask, kind: str, implicit_begin: bool = False) -> int:
    """How many SQL statements one webhook of ``kind`` issues (see the module's notes).

    ``implicit_begin=True`` adds the ``BEGIN`` psycopg sends on Postgres, as
    ``tests/test_query_budget.py`` counts, so both databases count their BEGIN (the
    command line prints it that way)."""
    from bot.extensions import db

    count = len(capture_queries(app, kind))
    if implicit_begin:
        with app.app_context():
            count += db.engine.dialect.name == "postgresql"
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", metavar="KIND", help="print the statements of one kind")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="bench_q_")
    apps = {"sqlite": make_app("sqlite:///" + str(Path(scratch.name) / "q.sqlite3"))}
    pg = os.environ.get("BENCH_DATABASE_URL")
    if pg:
        wipe_postgres(pg)
        apps["postgres"] = make_app(pg)
    try:
        _print(apps, args.show)
    finally:
        from bot.extensions import db

        for app in apps.values():
            with app.app_context():
                db.session.remove()
                db.engine.dispose()
        scratch.cleanup()


def _print(apps: dict, show: str | None) -> None:
    for app in apps.values():  # first connection's dialect set-up is not a webhook's cost
        count_queries(app, "contact_first")
    if show:
        for name, app in apps.items():
            print(f"-- {show} on {name}")
            for statement in capture_queries(app, show):
                print(" ".join(statement.split()))
        return
    # Postgres's column adds psycopg's implicit BEGIN, as tests/test_query_budget.py counts.
    names = [name + (" +BEGIN" if name == "postgres" else "") for name in apps]
    print(f"{'webhook':<16}" + "".join(f"{name:>16}" for name in names))
    for kind in KINDS:
        counts = [count_queries(app, kind, implicit_begin=True) for app in apps.values()]
        print(f"{kind:<16}" + "".join(f"{n:>16}" for n in counts))


if __name__ == "__main__":
    main()
