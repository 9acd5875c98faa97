"""Property: a replayed webhook (same MessageSid) changes nothing and gets the same TwiML.

Each example plays one random conversation twice on the real app and database:
once with every webhook delivered once, once with random repeats (immediately
or later, as Twilio's retries arrive). Both must end in the same place.
"""

import itertools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.extensions import db
from bot.models import Attestation, Conversation, Message
from support import CELL, LINE

BODIES = ["Hi", "YES", "Yes", "STOP", "START", "HELP", "Y", "please stop texting me", "ok"]
EVENTS = st.lists(
    st.tuples(st.sampled_from(["contact", "employee"]), st.sampled_from(BODIES)),
    min_size=1,
    max_size=8,
)
numbers = itertools.count(200)


def without_refs(xml: bytes, contact: str) -> str:
    return re.sub(r"ref=[0-9a-f]+", "ref=*", xml.decode()).replace(contact, "<contact>")


def play(twilio, contact: str, events, repeats: list[int]) -> tuple[list[str], dict]:
    """Deliver ``events`` from/to ``contact``; ``repeats[i]`` extra copies of event i."""
    firsts, sent = [], []
    for i, (who, body) in enumerate(events):
        sid = f"SM{contact[-4:]}{i:028d}"
        params = {
            "MessageSid": sid,
            "To": LINE,
            "Body": body,
            "From": contact if who == "contact" else CELL,
        }
        if who == "employee":
            params["Body"] = f"{contact} {body}"
        first = twilio.post("/twilio/sms", params)
        assert first.status_code == 200
        firsts.append(without_refs(first.data, contact))
        sent.append((params, first.data))
        for _ in range(repeats[i] if i < len(repeats) else 0):
            # A retry of this one, and of an earlier one, both answered as the first time.
            for again_params, again_data in (sent[-1], sent[len(sent) // 2]):
                again = twilio.post("/twilio/sms", again_params)
                assert (again.status_code, again.data) == (200, again_data)
    return firsts, snapshot(twilio.client.application, contact)


def snapshot(app, contact: str) -> dict:
    with app.app_context():
        conv = db.session.execute(
            select(Conversation).where(Conversation.line == LINE, Conversation.contact == contact)
        ).scalar_one()
        count = lambda model: db.session.execute(  # noqa: E731
            select(func.count()).select_from(model).where(model.conversation_id == conv.id)
        ).scalar()
        return {
            "state": conv.state,
            "initiator": conv.initiator,
            "chain_length": conv.chain_length,
            "messages": count(Message),
            "attestations": count(Attestation),
        }


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=EVENTS, repeats=st.lists(st.integers(0, 2), max_size=8))
def test_replayed_webhooks_change_nothing(twilio, employee, events, repeats):
    once = f"+1415555{next(numbers):04d}"
    replayed = f"+1415555{next(numbers):04d}"
    firsts_once, end_once = play(twilio, once, events, [])
    firsts_replayed, end_replayed = play(twilio, replayed, events, repeats)
    assert firsts_replayed == firsts_once
    assert end_replayed == end_once
