"""Soak: hundreds of contacts on several lines, from many threads, against gunicorn.

Run with ``make soak`` (SQLite, and Postgres when TEST_DATABASE_URL is set).
Random interleavings of first messages, YES, STOP, HELP, START, employee texts
and duplicated webhooks go to a real gunicorn with four workers; afterwards
the database must show that:

- no opted-out contact was sent anything but the allowed texts (none on
  filtered SMS; one opt-out confirmation and HELP answers where Twilio does
  not filter),
- every held text was released exactly once or discarded (or is still held
  in a conversation where texts do not flow),
- every conversation's consent state matches its consent events,
- every webhook was answered 200, each MessageSid has one record, and every
  copy of a webhook got the same TwiML,
- ``audit verify`` passes.

Bounded in count (SOAK_CONTACTS) and time (SOAK_SECONDS); loopback only.
"""

import json
import os
import queue
import random
import threading
import time
import uuid
from collections import Counter, defaultdict

import pytest
import requests
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from bot import evidence
from bot.extensions import db
from bot.models import Attestation, Conversation, Direction, Disposition, Message, RecordKind
from support import TOKEN, gunicorn

pytestmark = pytest.mark.soak

CONTACTS = int(os.environ.get("SOAK_CONTACTS", "600"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "240"))
THREADS = 24
SEED = int(os.environ.get("SOAK_SEED", "20261122"))
LINES = [
    ("Ana", "+14155550101", "+14155550201", "consent"),
    ("Ben", "+14155550102", "+14155550202", "consent"),
    ("Cy", "+14155550103", "+14155550203", "disclaimer"),
]
FLOWING = {"consent": {"opted_in"}, "disclaimer": {"opted_in", "disclosed"}}


def script(rng: random.Random, n: int) -> list[dict]:
    """The webhooks of one contact: a plausible conversation, each maybe repeated."""
    _name, cell, line, _mode = LINES[n % len(LINES)]
    whatsapp = rng.random() < 0.2
    contact = f"+1415556{n:04d}"
    contact_address = ("whatsapp:" if whatsapp else "") + contact
    to = ("whatsapp:" if whatsapp else "") + line

    def from_contact(body):
        return {"From": contact_address, "To": to, "Body": body}

    def from_employee(body):
        return {"From": cell, "To": line, "Body": f"{contact_address} {body}"}

    steps = [from_contact("Hi, I need a quote") if rng.random() < 0.6 else from_employee("Hello!")]
    for _ in range(rng.randint(2, 6)):
        kind = rng.random()
        if kind < 0.25:
            steps.append(from_contact(rng.choice(["YES", "yes", "Y", "Yes please"])))
        elif kind < 0.4:
            steps.append(from_contact(rng.choice(["STOP", "stop", "Unsubscribe"])))
        elif kind < 0.5:
            steps.append(from_contact(rng.choice(["START", "UNSTOP"])))
        elif kind < 0.6:
            steps.append(from_contact("HELP"))
        elif kind < 0.8:
            steps.append(from_contact(rng.choice(["When can you come?", "please stop texting me"])))
        else:
            steps.append(from_employee(rng.choice(["Tuesday at 10?", "Here is the price"])))
    events = []
    for params in steps:
        params = {"MessageSid": "SM" + uuid.uuid4().hex, "AccountSid": "AC" + "0" * 32, **params}
        events.append(params)
        if rng.random() < 0.1:
            events.append(dict(params))  # Twilio retries this one
    return events


@pytest.fixture
def soak_server(database_url, runner):
    for name, cell, line, mode in LINES:
        args = ["employees", "add", "--name", name, "--cell", cell, "--line", line, "--mode", mode]
        result = runner.invoke(args=args)
        assert result.exit_code == 0, result.output
    with gunicorn(database_url, workers=4) as base:
        yield base


def drive(base: str, events: list[dict]) -> dict[str, list]:
    """Send every event from THREADS threads; return each SID's (status, body) answers."""
    url = base + "/twilio/sms"
    validator = RequestValidator(TOKEN)
    work: queue.Queue = queue.Queue()
    for params in events:
        work.put(params)
    answers: dict[str, list] = defaultdict(list)
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS

    def worker():
        session = requests.Session()
        while time.monotonic() < deadline:
            try:
                params = work.get_nowait()
            except queue.Empty:
                return
            headers = {"X-Twilio-Signature": validator.compute_signature(url, params)}
            response = session.post(url, data=params, headers=headers, timeout=60)
            with lock:
                answers[params["MessageSid"]].append((response.status_code, response.content))

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert work.empty(), "the soak ran out of time before sending everything"
    return answers


def check_conversation(conv, entries, messages, mode: str) -> list[str]:
    """The invariants of one conversation, from its evidence and its messages."""
    problems = []
    filtered = not conv.contact.startswith("whatsapp:")
    state, confirmations_left = "new", 0
    for entry in entries:
        if entry.kind is RecordKind.CONSENT:
            state = entry.state.value
            confirmations_left = 0 if filtered else int(entry.event.value == "opted_out")
        elif (
            entry.kind is RecordKind.MESSAGE
            and entry.direction is Direction.OUTBOUND
            and entry.recipient == conv.contact
            and state == "opted_out"
        ):
            if entry.note == "opt_out.to_contact" and confirmations_left:
                confirmations_left -= 1
            elif entry.note == "help.to_contact" and not filtered:
                pass  # SPEC §5: HELP is answered in any state where Twilio does not block
            else:
                problems.append(f"sent {entry.note or entry.body!r} to an opted-out contact")
    events = [e for e in entries if e.kind is RecordKind.CONSENT]
    expected = events[-1].state.value if events else "new"
    if conv.state.value != expected:
        problems.append(f"state {conv.state.value} but the last event says {expected}")
    relays = Counter(m.source_ref for m in messages if m.source_ref)
    dispositions = Counter(e.message_ref for e in entries if e.kind is RecordKind.DISPOSITION)
    flowing = FLOWING["consent" if conv.contact.startswith("whatsapp:") else mode]
    for m in messages:
        if m.direction is not Direction.INBOUND:
            continue
        sent = relays[m.ref]
        if m.disposition in (Disposition.RELAYED, Disposition.RELEASED) and sent != 1:
            problems.append(f"{m.disposition.value} text {m.ref} delivered {sent} times")
        if (
            m.disposition in (Disposition.HELD, Disposition.DISCARDED, Disposition.ANSWERED)
            and sent
        ):
            problems.append(f"{m.disposition.value} text {m.ref} was delivered")
        changed = (Disposition.RELEASED, Disposition.DISCARDED)
        if m.disposition in changed and dispositions[m.ref] != 1:
            problems.append(f"text {m.ref} changed hands {dispositions[m.ref]} times")
        if m.disposition is Disposition.HELD and conv.state.value in flowing:
            problems.append(f"text {m.ref} still held while texts flow")
    return problems


def test_soak(app, soak_server, database_url):
    rng = random.Random(SEED)
    per_contact = [script(rng, n) for n in range(CONTACTS)]
    events = [e for contact in per_contact for e in contact]
    rng.shuffle(events)
    started = time.monotonic()
    answers = drive(soak_server, events)
    elapsed = time.monotonic() - started

    statuses = Counter(status for copies in answers.values() for status, _ in copies)
    assert set(statuses) == {200}, statuses
    assert all(len({body for _, body in copies}) == 1 for copies in answers.values())
    duplicates = sum(len(copies) - 1 for copies in answers.values())

    problems = []
    with app.app_context():
        modes = {line: mode for _n, _c, line, mode in LINES}
        inbound = Counter(
            db.session.execute(
                select(Message.twilio_sid).where(Message.direction == Direction.INBOUND)
            ).scalars()
        )
        assert set(inbound) == set(answers) and set(inbound.values()) == {1}
        conversations = db.session.execute(select(Conversation)).scalars().all()
        for conv in conversations:
            entries = (
                db.session.execute(
                    select(Attestation)
                    .where(Attestation.conversation_id == conv.id)
                    .order_by(Attestation.seq)
                )
                .scalars()
                .all()
            )
            messages = (
                db.session.execute(
                    select(Message).where(Message.conversation_id == conv.id).order_by(Message.id)
                )
                .scalars()
                .all()
            )
            if conv.contact in {cell for _n, cell, _l, _m in LINES}:
                continue  # the employees' own control messages
            problems += [
                f"{conv.line} {conv.contact}: {p}"
                for p in check_conversation(conv, entries, messages, modes[conv.line])
            ]
        report = evidence.verify()
        states = Counter(c.state.value for c in conversations)
    summary = {
        "backend": database_url.split(":")[0],
        "contacts": CONTACTS,
        "lines": len(LINES),
        "webhooks_sent": sum(len(c) for c in answers.values()),
        "duplicates_sent": duplicates,
        "threads": THREADS,
        "gunicorn_workers": 4,
        "seconds": round(elapsed, 1),
        "webhooks_per_second": round(sum(len(c) for c in answers.values()) / elapsed, 1),
        "states": dict(states),
        "chains_verified": report.conversations,
        "entries_verified": report.entries,
        "violations": len(problems),
    }
    print("\nSOAK " + json.dumps(summary))
    assert report.ok, report.broken
    assert problems == []
