"""Query budget: how many SQL statements each kind of webhook may issue.

A ceiling per kind, so that a change that adds round trips to the hot path
fails here. ``make bench`` prints the same counts.
"""

import pytest
from sqlalchemy import event

from bot.extensions import db
from support import CELL, CONTACT, OTHER

# Statements per webhook, BEGIN included (COMMIT is not a statement here). Each
# table a webhook writes gets one statement: an INSERT of all its rows, one
# UPDATE of the conversation; on Postgres the INSERTs and that UPDATE are one
# statement (data-modifying WITH queries).
# The first read of an inbound text brings the line's employee, the settings and
# the sender's conversation (locked) at once.
CEILINGS = {
    "first message, new contact": {"sqlite": 7, "postgresql": 5},
    "text while pending": {"sqlite": 5, "postgresql": 3},
    "YES releasing two held texts": {"sqlite": 7, "postgresql": 5},
    "relay contact to employee": {"sqlite": 5, "postgresql": 3},
    "employee text to opted-in contact": {"sqlite": 6, "postgresql": 5},
    "employee text to the current contact": {"sqlite": 6, "postgresql": 5},
    "HELP": {"sqlite": 5, "postgresql": 3},
    # A repeated MessageSid is found by the first read (its answer is one more
    # part of it): nothing is written and nothing rolled back.
    "duplicate webhook": {"sqlite": 2, "postgresql": 2},
    "status callback": {"sqlite": 8, "postgresql": 7},
    "STOP": {"sqlite": 6, "postgresql": 4},
}


@pytest.fixture
def statements(app):
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    with app.app_context():
        engine = db.engine
        dialect = engine.dialect.name
    event.listen(engine, "before_cursor_execute", count)
    yield seen, dialect
    event.remove(engine, "before_cursor_execute", count)


def test_each_kind_of_webhook_stays_within_its_budget(twilio, employee, statements):
    seen, dialect = statements
    counts = {}

    def measure(kind, action):
        seen.clear()
        result = action()
        statements_run = len(seen) + (1 if dialect == "postgresql" else 0)  # implicit BEGIN
        counts[kind] = statements_run
        return result

    measure("first message, new contact", lambda: twilio.sms(CONTACT, "Hi"))
    measure("text while pending", lambda: twilio.sms(CONTACT, "Anyone?"))
    measure("YES releasing two held texts", lambda: twilio.sms(CONTACT, "YES"))
    measure("relay contact to employee", lambda: twilio.sms(CONTACT, "Thanks"))
    measure("employee text to opted-in contact", lambda: twilio.sms(CELL, f"{CONTACT} Hello"))
    measure("employee text to the current contact", lambda: twilio.sms(CELL, "And more"))
    measure("HELP", lambda: twilio.sms(CONTACT, "HELP"))
    params = {"MessageSid": "SM" + "c" * 32, "From": OTHER, "To": "+14155550100", "Body": "Hi"}
    twilio.post("/twilio/sms", params)
    measure("duplicate webhook", lambda: twilio.post("/twilio/sms", params))
    [request, _] = twilio.sms("+14155550177", "Hi")
    measure("status callback", lambda: twilio.status(request, "delivered", sid="SM" + "f" * 32))
    measure("STOP", lambda: twilio.sms(CONTACT, "STOP"))
    print("\nstatements per webhook:", counts)
    over = {
        kind: (count, CEILINGS[kind][dialect])
        for kind, count in counts.items()
        if count > CEILINGS[kind][dialect]
    }
    assert over == {}, f"over budget (count, ceiling): {over}"
