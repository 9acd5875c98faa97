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

from bot import texts
from bot.extensions import db
from bot.models import Disposition, Message
from support import CELL, CONTACT, LINE, TOKEN, gunicorn, parse_twiml

ALICE = {"employee_name": "Alice"}
WORKERS = 4
BURST = 30


@pytest.fixture
def server(database_url, employee):
    """gunicorn (as the Procfile runs it) with four workers on the test database."""
    with gunicorn(database_url, workers=WORKERS) as base:
        yield base


def post_all(base: str, bodies: list[str], tag: str) -> list:
    """POST one signed webhook per body, all released at the same instant."""
    validator = RequestValidator(TOKEN)
    url = base + "/twilio/sms"
    barrier = threading.Barrier(len(bodies))
    answers: list = [None] * len(bodies)

    def send(i: int, body: str) -> None:
        params = {
            "MessageSid": "SM" + uuid.uuid4().hex,
            "From": CONTACT,
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
