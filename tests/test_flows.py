"""Every flow of SPEC §5–§6 over HTTP: signed webhooks in, TwiML parsed as XML out."""

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from bot import texts
from bot.extensions import db
from bot.models import Attestation, Conversation, Disposition, Message, RecordKind
from support import CELL, CONTACT, LINE, OTHER, Twilio, bodies, parse_twiml

D = texts.DEFAULTS
ALICE = {"employee_name": "Alice", "company_name": "Acme Plumbing"}


def text(key: str, **values: str) -> str:
    return texts.render(D[key], {**ALICE, **values})


def relayed(body: str, contact: str = CONTACT) -> str:
    return f"{contact}: {body}"


def conversation(app, contact: str = CONTACT) -> Conversation:
    with app.app_context():
        conv = db.session.execute(
            select(Conversation).where(Conversation.line == LINE, Conversation.contact == contact)
        ).scalar_one()
        db.session.expunge(conv)
        return conv


def events(app, contact: str = CONTACT) -> list[str]:
    with app.app_context():
        return [
            e.value
            for e in db.session.execute(
                select(Attestation.event)
                .join(Conversation)
                .where(Conversation.contact == contact, Attestation.kind == RecordKind.CONSENT)
                .order_by(Attestation.seq)
            ).scalars()
        ]


def set_mode(runner, mode: str) -> None:
    result = runner.invoke(args=["employees", "set-mode", LINE, mode])
    assert result.exit_code == 0, result.output


# -- Opt-In with Consent, started by the contact -------------------------------


def test_contact_initiated_consent_holds_then_releases_in_order(app, twilio, employee):
    sent = twilio.sms(CONTACT, "Hi, is this Alice?")
    assert [(s.to, s.body) for s in sent] == [
        (None, text("consent.contact_initiated.to_contact")),
        (CELL, text("consent.contact_initiated.to_employee")),
    ]
    assert all(s.status_callback.startswith("http://localhost/twilio/status?ref=") for s in sent)
    assert conversation(app).state == "pending"

    # Still pending: held, the request is not repeated within 24 hours, no new notice.
    assert twilio.sms(CONTACT, "Need a plumber tomorrow") == []

    sent = twilio.sms(CONTACT, "YES")
    assert [(s.to, s.body) for s in sent] == [
        (None, text("consent.contact_initiated.opted_in.to_contact")),
        (CELL, text("consent.contact_initiated.opted_in.to_employee")),
        (CELL, relayed("Hi, is this Alice?")),
        (CELL, relayed("Need a plumber tomorrow")),
    ]
    assert conversation(app).state == "opted_in"
    assert events(app) == ["request_sent", "opted_in"]

    # Messages flow both ways now; "Yes" is an ordinary answer and is relayed.
    assert bodies(twilio.sms(CONTACT, "Yes"), CELL) == [relayed("Yes")]
    sent = twilio.sms(CELL, "See you at 9")
    assert [(s.to, s.body) for s in sent] == [(CONTACT, "See you at 9")]


def test_pending_request_repeats_after_24_hours_without_notifying_employee(app, twilio, employee):
    twilio.sms(CONTACT, "Hello")
    asked = conversation(app).last_request_at
    with app.app_context():
        db.session.execute(
            update(Conversation).values(last_request_at=asked - timedelta(hours=24, seconds=1))
        )
        db.session.commit()
    sent = twilio.sms(CONTACT, "Anyone there?")
    assert [(s.to, s.body) for s in sent] == [(None, text("consent.contact_initiated.to_contact"))]
    assert events(app) == ["request_sent", "request_sent"]


# -- Opt-In with Consent, started by the employee ------------------------------


def test_employee_initiated_consent(app, twilio, employee):
    sent = twilio.sms(CELL, f"{CONTACT} Your quote is ready")
    assert [(s.to, s.body) for s in sent] == [
        (CONTACT, text("consent.employee_initiated.to_contact")),
        (None, text("consent.employee_initiated.to_employee")),
    ]
    # The employee writes again (to the current contact, without a number): held.
    sent = twilio.sms(CELL, "It is $120")
    assert [(s.to, s.body) for s in sent] == [(None, text("pending.to_employee"))]

    sent = twilio.sms(CONTACT, "yes!")
    assert [(s.to, s.body) for s in sent] == [
        (None, text("consent.employee_initiated.opted_in.to_contact")),
        (CELL, text("consent.employee_initiated.opted_in.to_employee")),
        (None, "Your quote is ready"),
        (None, "It is $120"),
    ]
    assert conversation(app).initiator == "employee"


def test_national_format_address_and_current_contact(app, twilio, employee, runner):
    set_mode(runner, "off")
    sent = twilio.sms(CELL, "(415) 555-0124: Running late")
    assert [(s.to, s.body) for s in sent] == [(OTHER, "Running late")]
    # A contact texting the line becomes the current contact.
    twilio.sms(CONTACT, "ok")
    assert [(s.to, s.body) for s in twilio.sms(CELL, "Thanks")] == [(CONTACT, "Thanks")]


def test_employee_commands(app, twilio, employee):
    assert bodies(twilio.sms(CELL, "Hello?")) == [
        texts.REPLIES["reply.usage"]
    ]  # no current contact yet
    assert bodies(twilio.sms(CELL, "#help")) == [texts.REPLIES["reply.usage"]]
    sent = twilio.sms(CELL, "whatsapp:+14155550124")
    assert [(s.to, s.body) for s in sent] == [
        (
            None,
            texts.render(texts.REPLIES["reply.switched"], {"number": "whatsapp:+1 415-555-0124"}),
        )
    ]
    [reply] = twilio.sms(CELL, "+1555 call me")
    assert reply.to is None and "not a valid phone number" in reply.body
    [reply] = twilio.sms(CELL, f"{LINE} hi")
    assert reply.body == texts.REPLIES["reply.not_a_contact"]
    # The switch made the WhatsApp contact current: the next text asks them for consent.
    sent = twilio.sms(CELL, "Hi there")
    assert [(s.to, s.from_) for s in sent] == [
        ("whatsapp:" + OTHER, "whatsapp:" + LINE),
        (None, None),
    ]


# -- Opt-out, STOP filtering and coming back ---------------------------------


def test_stop_on_filtered_sms_tells_only_the_employee_and_discards_held(app, twilio, employee):
    twilio.sms(CONTACT, "first")
    sent = twilio.sms(CONTACT, "Stop")
    assert [(s.to, s.body) for s in sent] == [(CELL, text("opt_out.to_employee"))]
    conv = conversation(app)
    assert conv.state == "opted_out"
    with app.app_context():
        held = db.session.execute(select(Message.disposition).where(Message.body == "first"))
        assert held.scalar_one() == Disposition.DISCARDED
    # A second STOP: nothing at all.
    assert twilio.sms(CONTACT, "STOP") == []
    # The employee cannot reach them.
    sent = twilio.sms(CELL, "Are you sure?")
    assert [(s.to, s.body) for s in sent] == [(None, text("opt_out.to_employee"))]
    # HELP gets no answer from an opted-out SMS contact (Twilio would block it).
    assert twilio.sms(CONTACT, "help") == []
    # An ordinary text is held and the employee told, each time; nothing to the contact.
    for body in ("hello again", "Y"):  # Y is not one of Twilio's opt-in words
        sent = twilio.sms(CONTACT, body)
        assert [(s.to, s.body) for s in sent] == [
            (CELL, text("opted_out.contact_wrote.to_employee"))
        ]
    sent = twilio.sms(CONTACT, "START")
    assert [(s.to, s.body) for s in sent] == [
        (None, text("consent.contact_initiated.opted_in.to_contact")),
        (CELL, text("consent.contact_initiated.opted_in.to_employee")),
        (CELL, relayed("hello again")),
        (CELL, relayed("Y")),
    ]
    assert events(app) == ["request_sent", "opted_out", "opted_in"]


@pytest.mark.parametrize("env_overrides", [{"TWILIO_STOP_FILTERING": "false"}])
def test_stop_unfiltered_confirms_and_a_new_message_restarts(app, twilio, employee):
    twilio.sms(CONTACT, "YES")
    sent = twilio.sms(CONTACT, "unsubscribe")
    assert [(s.to, s.body) for s in sent] == [
        (None, text("opt_out.to_contact")),
        (CELL, text("opt_out.to_employee")),
    ]
    sent = twilio.sms(CONTACT, "I changed my mind")
    assert [(s.to, s.body) for s in sent] == [
        (None, text("consent.contact_initiated.to_contact")),
        (CELL, text("consent.contact_initiated.to_employee")),
    ]
    assert events(app)[-2:] == ["re_engaged", "request_sent"]


@pytest.mark.parametrize("env_overrides", [{"TWILIO_STOP_FILTERING": "false"}])
def test_help_answered_to_unfiltered_opted_out_contact(app, twilio, employee):
    twilio.sms(CONTACT, "STOP")
    assert [(s.to, s.body) for s in twilio.sms(CONTACT, "INFO")] == [
        (None, text("help.to_contact"))
    ]


@pytest.mark.parametrize("env_overrides", [{"TWILIO_STOP_FILTERING": "false"}])
def test_disclaimer_opted_out_contact_writes_again(app, twilio, employee, runner):
    set_mode(runner, "disclaimer")
    twilio.sms(CONTACT, "STOP")
    sent = twilio.sms(CONTACT, "Sorry, I do need you")
    assert [(s.to, s.body) for s in sent] == [
        (None, text("disclaimer.contact_initiated.to_contact")),
        (CELL, relayed("Sorry, I do need you")),
        (CELL, text("consent.contact_initiated.opted_in.to_employee")),
    ]
    assert conversation(app).state == "disclosed"


def test_help_and_opt_out_type(app, twilio, employee):
    assert [(s.to, s.body) for s in twilio.sms(CONTACT, " Help! ")] == [
        (None, text("help.to_contact"))
    ]
    assert twilio.sms(CONTACT, "YES")[0].body == text(
        "consent.contact_initiated.opted_in.to_contact"
    )
    # Twilio classified this as STOP (its own keyword list): that wins over the body.
    sent = twilio.sms(CONTACT, "arret", OptOutType="STOP")
    assert [(s.to, s.body) for s in sent] == [(CELL, text("opt_out.to_employee"))]
    sent = twilio.sms(CONTACT, "commencer", OptOutType="START")
    assert sent[0].body == text("consent.contact_initiated.opted_in.to_contact")
    assert conversation(app).state == "opted_in"


# -- Opt-In Disclaimer Only and off -------------------------------------------


def test_disclaimer_contact_and_employee_initiated(app, twilio, employee, runner):
    set_mode(runner, "disclaimer")
    sent = twilio.sms(CONTACT, "Hi")
    assert [(s.to, s.body) for s in sent] == [
        (None, text("disclaimer.contact_initiated.to_contact")),
        (CELL, relayed("Hi")),
    ]
    assert [(s.to, s.body) for s in twilio.sms(CONTACT, "yes")] == [(CELL, relayed("yes"))]
    sent = twilio.sms(CELL, f"{OTHER} Hello from Acme")
    assert [(s.to, s.body) for s in sent] == [
        (OTHER, text("disclaimer.employee_initiated.to_contact")),
        (OTHER, "Hello from Acme"),
    ]
    assert conversation(app, OTHER).state == "disclosed"
    assert events(app, OTHER) == ["disclaimer_sent"]


def test_off_mode_relays_and_still_honours_stop(app, twilio, employee, runner):
    set_mode(runner, "off")
    assert [(s.to, s.body) for s in twilio.sms(CONTACT, "Hi")] == [(CELL, relayed("Hi"))]
    assert conversation(app).state == "disclosed"
    assert [(s.to, s.body) for s in twilio.sms(CONTACT, "STOP")] == [
        (CELL, text("opt_out.to_employee"))
    ]
    assert [(s.to, s.body) for s in twilio.sms(CELL, "hello?")] == [
        (None, text("opt_out.to_employee"))
    ]


def test_organisation_default_mode_is_followed_live(app, twilio, employee, runner):
    result = runner.invoke(args=["settings", "set", "default_mode", "off"])
    assert result.exit_code == 0, result.output
    assert [(s.to, s.body) for s in twilio.sms(CONTACT, "Hi")] == [(CELL, relayed("Hi"))]


# -- WhatsApp and MMS ----------------------------------------------------------


def test_whatsapp_always_asks_for_consent_and_crosses_channels(app, twilio, employee, runner):
    set_mode(runner, "off")
    wa_contact, wa_line = "whatsapp:" + CONTACT, "whatsapp:" + LINE
    sent = twilio.sms(wa_contact, "Hola", to=wa_line, ProfileName="Maria", WaId=CONTACT[1:])
    assert [(s.to, s.from_, s.body) for s in sent] == [
        (None, None, text("consent.contact_initiated.to_contact")),
        (CELL, LINE, text("consent.contact_initiated.to_employee")),
    ]
    sent = twilio.sms(wa_contact, "YES", to=wa_line)
    assert [(s.to, s.from_) for s in sent] == [(None, None), (CELL, LINE), (CELL, LINE)]
    assert sent[2].body == relayed("Hola", wa_contact)
    # The WhatsApp contact is a conversation of its own: the SMS contact is still new.
    assert conversation(app, wa_contact).state == "opted_in"
    sent = twilio.sms(CELL, "Gracias")
    assert [(s.to, s.from_, s.body) for s in sent] == [(wa_contact, wa_line, "Gracias")]


def test_mms_media_is_relayed_and_held_with_the_text(app, twilio, employee):
    photo = {"MediaUrl0": "https://api.twilio.com/m/ME1", "MediaContentType0": "image/jpeg"}
    twilio.sms(CONTACT, "the leak", **photo)
    sent = twilio.sms(CONTACT, "YES")
    assert sent[-1].body == relayed("the leak")
    assert sent[-1].media == ["https://api.twilio.com/m/ME1"]
    sent = twilio.sms(CELL, "", MediaUrl0="https://api.twilio.com/m/ME2")
    assert [(s.to, s.media) for s in sent] == [(CONTACT, ["https://api.twilio.com/m/ME2"])]


# -- Texts, hints, parts ----------------------------------------------------------


def test_revocation_hint_is_marked_for_the_employee(app, twilio, employee):
    twilio.sms(CONTACT, "YES")
    sent = twilio.sms(CONTACT, "Please stop texting me")
    assert bodies(sent, CELL) == [relayed("Please stop texting me") + texts.HINT_MARK]
    assert conversation(app).state == "opted_in"  # a hint is not an opt-out
    with app.app_context():
        hint = db.session.execute(select(Message.hint).where(Message.body.like("Please%")))
        assert hint.scalar_one() is True
    assert bodies(twilio.sms(CONTACT, "I'll stop by at 3"), CELL) == [relayed("I'll stop by at 3")]


def test_long_relay_goes_out_in_parts_with_the_prefix(app, twilio, employee):
    twilio.sms(CONTACT, "YES")
    body = "".join(chr(ord("a") + i % 26) for i in range(1600))
    sent = twilio.sms(CONTACT, body)
    parts = bodies(sent, CELL)
    assert len(parts) == 2
    assert all(len(p) <= 1600 and p.startswith(f"{CONTACT}: ") for p in parts)
    assert "".join(p[len(f"{CONTACT}: ") :] for p in parts) == body
    assert len({s.ref for s in sent}) == 2  # each part has its own status callback


def test_text_override_takes_effect_on_the_next_message(app, twilio, employee, runner):
    result = runner.invoke(
        args=[
            "settings",
            "set",
            "text.help.to_contact",
            "{company_name} help desk for {employee_name}",
        ]
    )
    assert result.exit_code == 0, result.output
    assert bodies(twilio.sms(CONTACT, "HELP")) == ["Acme Plumbing help desk for Alice"]
    runner.invoke(args=["settings", "set", "company_name", "Acme & Sons"])
    assert bodies(twilio.sms(CONTACT, "HELP")) == ["Acme & Sons help desk for Alice"]
    runner.invoke(args=["settings", "reset", "text.help.to_contact"])
    assert bodies(twilio.sms(CONTACT, "HELP")) == [
        text("help.to_contact", company_name="Acme & Sons")
    ]


# -- Lines that are not (or no longer) configured ---------------------------------


def test_unknown_line_answers_empty_and_keeps_the_text(app, twilio, employee, runner):
    assert twilio.sms(CONTACT, "hello?", to="+14155550199") == []
    runner.invoke(args=["employees", "remove", LINE])
    assert twilio.sms(CONTACT, "anyone?") == []
    with app.app_context():
        kept = db.session.execute(
            select(Message.body, Message.disposition).order_by(Message.id)
        ).all()
    assert kept == [("hello?", Disposition.UNROUTED), ("anyone?", Disposition.UNROUTED)]


# -- Idempotency and status callbacks --------------------------------------------


def test_repeated_message_sid_changes_nothing_and_gets_the_same_twiml(app, client, employee):
    twilio = Twilio(client)
    params = {"MessageSid": "SM" + "7" * 32, "From": CONTACT, "To": LINE, "Body": "Hi"}
    first = twilio.post("/twilio/sms", params)
    again = twilio.post("/twilio/sms", params)
    assert first.status_code == again.status_code == 200
    assert first.data == again.data
    with app.app_context():
        assert db.session.execute(select(db.func.count(Message.id))).scalar() == 3
    assert conversation(app).chain_length == 4


def test_a_repeat_that_would_write_many_rows_is_refused_quietly(app, client, employee, caplog):
    """The repeat of a YES that released texts fails on the unique index with its rows
    (one executemany, a pipeline on Postgres): handled, and no warning about it."""
    twilio = Twilio(client)
    twilio.sms(CONTACT, "Hi")
    params = {"MessageSid": "SM" + "9" * 32, "From": CONTACT, "To": LINE, "Body": "YES"}
    first = twilio.post("/twilio/sms", params)
    with caplog.at_level("WARNING"):
        again = twilio.post("/twilio/sms", params)
    assert again.status_code == 200 and again.data == first.data
    assert len(parse_twiml(first.data)) == 3  # both confirmations and the held text
    assert [r.getMessage() for r in caplog.records] == []


def test_status_callbacks_move_forward_only(app, twilio, employee):
    [request, _notice] = twilio.sms(CONTACT, "Hi")
    assert twilio.status(request, "sent", sid="SMa").status_code == 200
    assert twilio.status(request, "delivered", sid="SMa").status_code == 200
    assert twilio.status(request, "sent", sid="SMa").status_code == 200  # late, out of order
    with app.app_context():
        message = db.session.execute(select(Message).where(Message.ref == request.ref)).scalar_one()
        assert (message.status, message.twilio_sid) == ("delivered", "SMa")
        statuses = db.session.execute(
            select(Attestation.status).where(Attestation.kind == RecordKind.STATUS)
        ).scalars()
        assert list(statuses) == ["sent", "delivered"]


def test_error_21610_is_recorded_as_an_opt_out(app, twilio, employee):
    [request, _notice] = twilio.sms(CONTACT, "Hi")
    twilio.status(request, "failed", sid="SMb", error="21610")
    assert conversation(app).state == "opted_out"
    assert events(app) == ["request_sent", "opted_out"]
    with app.app_context():
        entry = db.session.execute(
            select(Attestation).where(Attestation.event == "opted_out")
        ).scalar_one()
        assert (entry.method, entry.cause_sid) == ("twilio_error_21610", "SMb")
        held = db.session.execute(select(Message.disposition).where(Message.body == "Hi"))
        assert held.scalar_one() == Disposition.DISCARDED


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json["database"] == "ok"


# -- found in review: addressing, hostile characters, inactive lines ---------------------


def test_a_body_starting_with_digits_still_goes_to_the_named_contact(app, twilio, employee, runner):
    set_mode(runner, "off")
    twilio.sms(CONTACT, "hi")  # CONTACT is now the current contact
    sent = twilio.sms(CELL, f"{OTHER} 10am works?")
    assert [(s.to, s.body) for s in sent] == [(OTHER, "10am works?")]
    sent = twilio.sms(CELL, "(415) 555-0123 5pm?")
    assert [(s.to, s.body) for s in sent] == [(CONTACT, "5pm?")]


def test_control_characters_never_break_the_twiml(app, twilio, employee):
    twilio.sms(CONTACT, "YES")
    sent = twilio.sms(CONTACT, "bell\x07 escape\x1b[0m tab\tok")  # parsed as XML by the helper
    assert bodies(sent, CELL) == [relayed("bell escape[0m tab\tok")]


def test_an_empty_text_from_the_employee_is_not_sent(app, twilio, employee):
    twilio.sms(CONTACT, "YES")
    assert [(s.to, s.body) for s in twilio.sms(CELL, "   ")] == [
        (None, texts.REPLIES["reply.empty"])
    ]


@pytest.mark.parametrize("env_overrides", [{"TWILIO_STOP_FILTERING": "false"}])
def test_stop_to_an_inactive_line_still_counts(app, twilio, employee, runner):
    twilio.sms(CONTACT, "YES")
    runner.invoke(args=["employees", "remove", LINE])
    assert twilio.sms(CONTACT, "STOP") == []
    assert conversation(app).state == "opted_out"
    added = runner.invoke(
        args=["employees", "add", "--name", "Bob", "--cell", OTHER, "--line", LINE]
    )
    assert added.exit_code == 0
    sent = twilio.sms(OTHER, f"{CONTACT} special offer!")
    assert [(s.to, s.body) for s in sent] == [(None, text("opt_out.to_employee"))]


@pytest.mark.parametrize("env_overrides", [{"TWILIO_VALIDATE_SIGNATURE": "false"}])
def test_evidence_does_not_claim_a_signature_nobody_checked(app, client, employee):
    params = {"MessageSid": "SM" + "5" * 32, "From": CONTACT, "To": LINE, "Body": "Hi"}
    assert client.post("/twilio/sms", data=params).status_code == 200
    with app.app_context():
        flags = db.session.execute(
            select(Attestation.signature_valid).where(Attestation.cause_sid == params["MessageSid"])
        ).scalars()
        assert list(flags) == [None]


def test_recording_an_opt_out_again_changes_nothing(app, twilio, employee):
    from bot import relay
    from bot.models import utcnow

    twilio.sms(CONTACT, "STOP")
    before = conversation(app)
    with app.app_context():
        assert relay.record_opt_out(before.id, "admin@example.com", "phone", "", utcnow()) is False
    after = conversation(app)
    assert (after.updated_at, after.chain_length) == (before.updated_at, before.chain_length)


@pytest.mark.parametrize("env_overrides", [{"DATABASE_BUSY_TIMEOUT": "1"}])
def test_a_text_handed_over_inside_an_open_transaction_joins_it(app, employee):
    """twilio reconcile reads through the session, then hands texts to the relay:
    the relay must use that transaction (on SQLite a second one would wait on it)."""
    from sqlalchemy import text

    from bot import relay
    from bot.models import utcnow

    inbound = relay.Inbound(sid="SM" + "7" * 32, sender=CONTACT, to=LINE, body="Hi")
    with app.test_request_context():
        db.session.execute(text("SELECT 1"))  # the caller's transaction is open
        answer = relay.handle_inbound(inbound, utcnow(), "https://example.test/twilio/status")
        assert not db.session().in_transaction()  # committed with it
    assert "<Message" in answer
    assert conversation(app).state == "pending"
