"""SPEC §7: concurrent webhooks of one conversation are serialised, with several workers.

A real gunicorn with four worker processes serves the app on loopback; thirty
first messages of one new contact arrive at once from thirty threads.
"""

import threading
import uuid

import pytest
import requests
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from bot import evidence, texts
from bot.extensions import db
from bot.models import Disposition, Message, utcnow
from support import CELL, CONTACT, LINE, OTHER, TOKEN, gunicorn, parse_twiml

ALICE = {"employee_name": "Alice"}
WORKERS = 4
BURST = 30


@pytest.fixture
def server(database_url, employee):
    """gunicorn (as the Procfile runs it) with four workers on the test database."""
    with gunicorn(database_url, workers=WORKERS) as base:
        yield base


def post_all(base: str, bodies: list, tag: str) -> list:
    """POST one signed webhook per body, all released at the same instant.

    A body is the contact's text, or a (sender, body) pair."""
    validator = RequestValidator(TOKEN)
    url = base + "/twilio/sms"
    barrier = threading.Barrier(len(bodies))
    answers: list = [None] * len(bodies)

    def send(i: int, body) -> None:
        sender, body = body if isinstance(body, tuple) else (CONTACT, body)
        params = {
            "MessageSid": "SM" + uuid.uuid4().hex,
            "From": sender,
            "To": LINE,
            "Body": body,
        }
        headers = {"X-Twilio-Signature": validator.compute_signature(url, params)}
        barrier.wait()
        response = requests.post(url, data=params, headers=headers, timeout=60)
        answers[i] = (response.status_code, parse_twiml(response.content))

    threads = [threading.Thread(target=send, args=(i, b)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


@pytest.mark.slow
def test_thirty_first_messages_at_once_prompt_once_and_release_once(app, server):
    burst = [f"first message {i}" for i in range(BURST)]
    answers = post_all(server, burst, "first")
    assert [status for status, _ in answers] == [200] * BURST
    sent = [m for _, messages in answers for m in messages]
    request = texts.DEFAULTS["consent.contact_initiated.to_contact"].replace(
        "{employee_name}", "Alice"
    )
    notice = texts.DEFAULTS["consent.contact_initiated.to_employee"]
    assert [(m.to, m.body) for m in sent] == [(None, request), (CELL, notice)]

    [(status, released)] = post_all(server, ["YES"], "yes1")
    assert status == 200
    relays = sorted(m.body for m in released if m.to == CELL and m.body.startswith(CONTACT))
    assert relays == sorted(f"{CONTACT}: {b}" for b in burst)  # each exactly once
    with app.app_context():
        held = db.session.execute(
            select(Message.disposition, func.count())
            .where(Message.body.like("first message%"))
            .group_by(Message.disposition)
        ).all()
    assert held == [(Disposition.RELEASED, BURST)]
    # A second YES releases nothing more.
    [(_, again)] = post_all(server, ["YES"], "yes2")
    assert [m.body for m in again] == [f"{CONTACT}: YES"]


@pytest.mark.slow
def test_contact_and_employee_texts_at_once_all_go_through_in_one_order(app, server):
    """The first read locks the sender's conversation before the employee is known:
    contact texts, employee texts to that contact and employee commands (which use
    the line's own conversation) arriving together must neither deadlock nor lose
    a text, and every relay goes out once."""
    [(status, _)] = post_all(server, ["Hi"], "start")
    [(status, _)] = post_all(server, ["YES"], "yes")
    assert status == 200
    burst = []
    for i in range(BURST // 3):
        burst += [f"contact {i}", (CELL, f"{CONTACT} employee {i}"), (CELL, "#help")]
    answers = post_all(server, burst, "mixed")
    assert [status for status, _ in answers] == [200] * len(burst)
    sent = [m for _, messages in answers for m in messages]
    to_employee = sorted(m.body for m in sent if m.to == CELL)
    to_contact = sorted(m.body for m in sent if m.to == CONTACT)
    assert to_employee == sorted(f"{CONTACT}: contact {i}" for i in range(BURST // 3))
    assert to_contact == sorted(f"employee {i}" for i in range(BURST // 3))
    helps = [m for m in sent if m.to is None]
    assert len(helps) == BURST // 3 and {m.body for m in helps} == {texts.REPLIES["reply.usage"]}
    with app.app_context():
        assert evidence.verify().ok
        received = db.session.execute(
            select(func.count()).select_from(Message).where(Message.direction == "inbound")
        ).scalar()
    assert received == 2 + len(burst)


def test_a_locked_conversation_holds_its_lock_and_no_other(app, twilio, employee):
    """Postgres: the conversation's row lock is held until the transaction ends; another
    contact's is free. SQLite: the transaction already holds the database's write lock."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from bot import relay

    twilio.sms(CONTACT, "Hi")
    twilio.sms(OTHER, "Hi")
    with app.app_context():
        engine = db.engine
        postgres = engine.dialect.name == "postgresql"
        with engine.begin() as first:
            conv = relay.lock_conversation(first, LINE, CONTACT, utcnow())
            assert conv.contact == CONTACT
            with engine.connect() as second:
                if postgres:
                    second.execute(text("SET lock_timeout = '200ms'"))
                    with pytest.raises(OperationalError, match="lock"):
                        relay.lock_conversation(second, LINE, CONTACT, utcnow())
                    second.rollback()
                    second.execute(text("SET lock_timeout = '200ms'"))
                    other = relay.lock_conversation(second, LINE, OTHER, utcnow())
                    assert other.contact == OTHER
                    second.rollback()
                else:
                    driver = second.connection.driver_connection
                    driver.execute("PRAGMA busy_timeout = 0")
                    with pytest.raises(Exception, match="locked"):
                        driver.execute("BEGIN IMMEDIATE")


def test_a_lock_that_waited_sees_the_other_texts_writes(app, twilio, employee):
    """The conversation a webhook locks after waiting is the one the webhook before it
    left: its chain head, not the one before (Postgres re-reads a row it had to wait
    for; SQLite's writers queue before they read)."""
    from bot import relay

    twilio.sms(CONTACT, "Hi")
    with app.app_context():
        engine = db.engine
        result = {}
        with engine.begin() as first:
            held = relay.lock_conversation(first, LINE, CONTACT, utcnow())

            def wait_for_it():
                with app.app_context(), engine.begin() as second:
                    result["conv"] = relay.lock_conversation(second, LINE, CONTACT, utcnow())

            waiter = threading.Thread(target=wait_for_it)
            waiter.start()
            waiter.join(0.3)
            assert waiter.is_alive()  # waiting for the first transaction's lock
            first.execute(
                relay.conversations.update()
                .where(relay.conversations.c.id == held.id)
                .values(chain_head="f" * 64, chain_length=held.chain_length + 1)
            )
        waiter.join(10)
        assert result["conv"].chain_head == "f" * 64
        assert result["conv"].chain_length == held.chain_length + 1
