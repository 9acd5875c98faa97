"""SPEC §7: when the database fails mid-webhook the answer is 5xx and nothing is half-written."""

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from bot.extensions import db
from bot.models import Attestation, Conversation, Message
from support import CONTACT, LINE


@pytest.fixture
def fail_on(app):
    """Make the database refuse the next statement that starts with a given SQL prefix."""
    armed: dict[str, str | None] = {"prefix": None}

    def before(conn, cursor, statement, parameters, context, executemany):
        prefix = armed["prefix"]
        if prefix and statement.lstrip().upper().startswith(prefix):
            armed["prefix"] = None
            raise OperationalError(statement, parameters, Exception("injected failure"))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", before)
    yield armed
    event.remove(engine, "before_cursor_execute", before)


def counts(app) -> tuple[int, int, int]:
    with app.app_context():
        return tuple(
            db.session.execute(select(func.count()).select_from(model)).scalar()
            for model in (Conversation, Message, Attestation)
        )


@pytest.mark.parametrize(
    "prefix",
    [
        "INSERT INTO ATTESTATIONS",
        "INSERT INTO MESSAGES",
        "UPDATE CONVERSATIONS",
        "INSERT INTO CONV",
    ],
)
def test_failure_inside_the_transaction_answers_503_and_writes_nothing(
    app, twilio, employee, fail_on, prefix
):
    before = counts(app)
    fail_on["prefix"] = prefix
    params = {"MessageSid": "SM" + "9" * 32, "From": CONTACT, "To": LINE, "Body": "Hi"}
    response = twilio.post("/twilio/sms", params)
    assert response.status_code == 503
    assert fail_on["prefix"] is None  # the failure really happened
    assert counts(app) == before
    # Twilio's retry of the same webhook then succeeds, once.
    retry = twilio.post("/twilio/sms", params)
    assert retry.status_code == 200
    assert b"You are trying to reach Alice" in retry.data
    assert counts(app)[1] == 3


def test_healthz_tells_the_truth_when_the_database_is_down(app, client, fail_on):
    fail_on["prefix"] = "SELECT 1"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["database"] == "unreachable"
    assert client.get("/healthz").status_code == 200
