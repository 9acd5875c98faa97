"""Twilio retries: the same webhook twice, or thirty times at once, is one text.

Status callbacks repeated or out of order never move a status backwards.
"""

import itertools
import threading
import uuid

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from bot.extensions import db
from bot.models import Attestation, Message, RecordKind
from bot.relay import STATUS_RANK
from support import CONTACT, LINE, TOKEN, gunicorn

COPIES = 30
CONTACTS = itertools.count(1000)


@pytest.fixture
def server(database_url, employee):
    with gunicorn(database_url, workers=4) as base:
        yield base


def post_copies(url: str, params: dict, headers: dict, copies: int) -> list:
    barrier = threading.Barrier(copies)
    answers: list = [None] * copies

    def send(i: int) -> None:
        barrier.wait()
        response = requests.post(url, data=params, headers=headers, timeout=60)
        answers[i] = (response.status_code, response.content)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(copies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


@pytest.mark.slow
def test_thirty_copies_at_once_answer_the_same_and_record_once(app, server):
    url = server + "/twilio/sms"
    params = {"MessageSid": "SM" + "d" * 32, "From": CONTACT, "To": LINE, "Body": "Hello"}
    headers = {
        "X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(url, params),
        "I-Twilio-Idempotency-Token": "retry-token-1",
    }
    answers = post_copies(url, params, headers, COPIES)
    assert {status for status, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1  # byte for byte the same TwiML
    with app.app_context():
        inbound = db.session.execute(
            select(Message).where(Message.twilio_sid == params["MessageSid"])
        ).scalar_one()
        assert inbound.idempotency_token == "retry-token-1"
        assert db.session.execute(select(func.count(Message.id))).scalar() == 3
    # Twice more, one after the other: still the same answer, still one record.
    again = [requests.post(url, data=params, headers=headers, timeout=30) for _ in range(2)]
    assert [a.content for a in again] == [answers[0][1]] * 2


STATUSES = [*sorted(STATUS_RANK), "receiving", "bogus"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sequence=st.lists(st.sampled_from(STATUSES), min_size=1, max_size=12))
def test_status_never_moves_backwards(app, twilio, employee, sequence):
    contact = f"+1415555{next(CONTACTS):04d}"
    [request, _] = twilio.sms(contact, "Hi")
    sid = "SM" + uuid.uuid4().hex
    for status in sequence:
        assert twilio.status(request, status, sid=sid).status_code == 200
    best = max(sequence, key=lambda s: STATUS_RANK.get(s, 0))
    seen, advances = "queued", []
    for status in sequence:
        if STATUS_RANK.get(status, 0) > STATUS_RANK.get(seen, 0):
            seen = status
            advances.append(status)
    with app.app_context():
        message = db.session.execute(select(Message).where(Message.ref == request.ref)).scalar_one()
        recorded = db.session.execute(
            select(Attestation.status)
            .where(Attestation.kind == RecordKind.STATUS, Attestation.message_ref == request.ref)
            .order_by(Attestation.seq)
        ).scalars()
        assert message.status == (best if STATUS_RANK.get(best, 0) > 2 else "queued")
        assert list(recorded) == advances


@pytest.mark.parametrize("env_overrides", [{"TRUSTED_HOSTS": "bot.example.com"}])
def test_trusted_hosts_refuse_other_hosts(client, employee):
    assert client.get("/healthz", base_url="http://bot.example.com").status_code == 200
    assert client.get("/healthz", base_url="http://evil.example").status_code == 400
