"""The pure decision core (SPEC §2, §4–§6): one case per row of the spec's tables."""

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.consent import (
    RELAY,
    RELEASE,
    Channel,
    ConsentEvent,
    Conversation,
    Decision,
    Disposition,
    EmployeeText,
    Event,
    Mode,
    Policy,
    Reply,
    Role,
    Route,
    State,
    Text,
    answer_employee,
    decide,
    delivery_failed,
    flows,
    opt_out_elsewhere,
    route_employee_text,
)
from bot.keywords import Classification, Kind, classify

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(hours=1)
LONG_AGO = NOW - timedelta(days=3)

C, E = Role.CONTACT, Role.EMPLOYEE
RELAYED, HELD = Disposition.RELAYED, Disposition.HELD
ANSWERED, BLOCKED = Disposition.ANSWERED, Disposition.BLOCKED

# SMS with Twilio's STOP filtering (the default), SMS without it, and WhatsApp.
CONSENT = Policy(Mode.CONSENT)
DISCLAIMER = Policy(Mode.DISCLAIMER)
OFF = Policy(Mode.OFF)
CONSENT_UNFILTERED = Policy(Mode.CONSENT, stop_filtering=False)
DISCLAIMER_UNFILTERED = Policy(Mode.DISCLAIMER, stop_filtering=False)
OFF_UNFILTERED = Policy(Mode.OFF, stop_filtering=False)
WHATSAPP = Policy(Mode.CONSENT, Channel.WHATSAPP)

NEW = Conversation()
DISCLOSED = Conversation(State.DISCLOSED, C)
DISCLOSED_BY_EMPLOYEE = Conversation(State.DISCLOSED, E)
OPTED_IN = Conversation(State.OPTED_IN, C, EARLIER)
# Was employee-initiated before the opt-out: confirmations must still use the contact variant.
OPTED_OUT = Conversation(State.OPTED_OUT, E, EARLIER)


def pending(initiator: Role, at: datetime = EARLIER) -> Conversation:
    return Conversation(State.PENDING, initiator, at)


def to_contact(key: str) -> Text:
    return Text(C, key)


def to_employee(key: str) -> Text:
    return Text(E, key)


def request(variant: Role) -> tuple[Text, Text]:
    """The consent request and its notice to the employee (SPEC §3)."""
    prefix = f"consent.{variant}_initiated"
    return to_contact(f"{prefix}.to_contact"), to_employee(f"{prefix}.to_employee")


def confirmed(variant: Role) -> tuple[Text, Text]:
    """Both opt-in confirmations (SPEC §3)."""
    prefix = f"consent.{variant}_initiated.opted_in"
    return to_contact(f"{prefix}.to_contact"), to_employee(f"{prefix}.to_employee")


OPTED_OUT_WROTE = to_employee("opted_out.contact_wrote.to_employee")


# The consent events, each with the text (SPEC §3) it showed the contact.
def requested(variant: Role) -> ConsentEvent:
    return ConsentEvent(Event.REQUEST_SENT, f"consent.{variant}_initiated.to_contact")


def opted_in(variant: Role) -> ConsentEvent:
    return ConsentEvent(Event.OPTED_IN, f"consent.{variant}_initiated.opted_in.to_contact")


def disclaimed(variant: Role) -> ConsentEvent:
    return ConsentEvent(Event.DISCLAIMER_SENT, f"disclaimer.{variant}_initiated.to_contact")


OPTED_OUT_CONFIRMED = ConsentEvent(Event.OPTED_OUT, "opt_out.to_contact")
OPTED_OUT_QUIETLY = ConsentEvent(Event.OPTED_OUT)  # Twilio confirms, or nobody texted
RE_ENGAGED = ConsentEvent(Event.RE_ENGAGED)


def row(
    case_id: str,
    before: Conversation,
    policy: Policy,
    body: str,
    after: Conversation,
    disposition: Disposition,
    steps=(),
    *,
    discard: bool = False,
    events=(),
    opt_out_type: str | None = None,
):
    """One row of a spec table: the full decision it asks for."""
    expected = Decision(before, after, disposition, tuple(steps), discard, tuple(events))
    return pytest.param(before, policy, classify(body, opt_out_type), expected, id=case_id)


def opted_in_again(case_id: str, policy: Policy, body: str, **kwargs):
    """An opted-out contact's opt-in: contact-initiated confirmations, held texts released."""
    return row(
        case_id,
        OPTED_OUT,
        policy,
        body,
        Conversation(State.OPTED_IN, C, EARLIER),
        ANSWERED,
        (*confirmed(C), RELEASE),
        events=(opted_in(C),),
        **kwargs,
    )


def still_opted_out(case_id: str, policy: Policy, body: str):
    """Filtered SMS: the text is held, the employee is told, nothing goes to the contact."""
    return row(case_id, OPTED_OUT, policy, body, OPTED_OUT, HELD, (OPTED_OUT_WROTE,))


CONTACT_ROWS = [
    # -- §5, while messages do not flow ------------------------------------------------
    row(
        "§5 any/any help keyword -> help.to_contact, state unchanged",
        pending(C),
        CONSENT,
        "HELP",
        pending(C),
        ANSWERED,
        (to_contact("help.to_contact"),),
    ),
    row(
        "§5 any/any help keyword INFO -> help.to_contact, state unchanged",
        DISCLOSED,
        DISCLAIMER,
        "info",
        DISCLOSED,
        ANSWERED,
        (to_contact("help.to_contact"),),
    ),
    row(
        "§5 any/not opted_out opt-out, filtered SMS -> opted_out, employee told, held discarded",
        pending(E),
        CONSENT,
        "STOP",
        Conversation(State.OPTED_OUT, E, EARLIER),
        ANSWERED,
        (to_employee("opt_out.to_employee"),),
        discard=True,
        events=(OPTED_OUT_QUIETLY,),
    ),
    row(
        "§5 any/not opted_out opt-out, filtering off -> both sides told, held discarded",
        OPTED_IN,
        DISCLAIMER_UNFILTERED,
        "unsubscribe",
        Conversation(State.OPTED_OUT, C, EARLIER),
        ANSWERED,
        (to_contact("opt_out.to_contact"), to_employee("opt_out.to_employee")),
        discard=True,
        events=(OPTED_OUT_CONFIRMED,),
    ),
    row(
        "§5 any/not opted_out opt-out on WhatsApp -> both sides told, held discarded",
        NEW,
        Policy(Mode.OFF, Channel.WHATSAPP),
        "Stop.",
        Conversation(State.OPTED_OUT),
        ANSWERED,
        (to_contact("opt_out.to_contact"), to_employee("opt_out.to_employee")),
        discard=True,
        events=(OPTED_OUT_CONFIRMED,),
    ),
    # SPEC: "nothing sent (one confirmation only); logged" — no discard is listed for this
    # row (the row above lists it), and the held texts were promised to the employee
    # ("It will be delivered if they opt in again by replying START").
    row(
        "§5 any/opted_out opt-out, filtered SMS -> nothing sent",
        OPTED_OUT,
        CONSENT,
        "STOP",
        OPTED_OUT,
        ANSWERED,
    ),
    row(
        "§5 any/opted_out opt-out, filtering off -> nothing sent (one confirmation only)",
        OPTED_OUT,
        OFF_UNFILTERED,
        "quit",
        OPTED_OUT,
        ANSWERED,
    ),
    row(
        "§5 consent new other text -> pending",
        NEW,
        CONSENT,
        "Hi, is this Alice?",
        pending(C, NOW),
        HELD,
        request(C),
        events=(requested(C),),
    ),
    row(
        "§5 consent disclosed other text -> pending",
        DISCLOSED_BY_EMPLOYEE,
        CONSENT,
        "Hi again",
        pending(C, NOW),
        HELD,
        request(C),
        events=(requested(C),),
    ),
    row(
        "§5 consent new opt-in keyword -> opted_in, contact-initiated confirmations",
        NEW,
        CONSENT,
        "YES",
        Conversation(State.OPTED_IN, C),
        ANSWERED,
        (*confirmed(C), RELEASE),
        events=(opted_in(C),),
    ),
    row(
        "§5 consent disclosed opt-in keyword -> opted_in, contact-initiated confirmations",
        DISCLOSED_BY_EMPLOYEE,
        CONSENT,
        "y",
        Conversation(State.OPTED_IN, C),
        ANSWERED,
        (*confirmed(C), RELEASE),
        events=(opted_in(C),),
    ),
    row(
        "§5 consent pending (contact-initiated) opt-in keyword -> opted_in, released",
        pending(C),
        CONSENT,
        "Yes!",
        Conversation(State.OPTED_IN, C, EARLIER),
        ANSWERED,
        (*confirmed(C), RELEASE),
        events=(opted_in(C),),
    ),
    row(
        "§5 consent pending (employee-initiated) opt-in keyword -> employee variant, released",
        pending(E),
        CONSENT,
        "start",
        Conversation(State.OPTED_IN, E, EARLIER),
        ANSWERED,
        (*confirmed(E), RELEASE),
        events=(opted_in(E),),
    ),
    row(
        "§5 consent pending other text within 24h -> held, nothing sent",
        pending(C),
        CONSENT,
        "Are you there?",
        pending(C),
        HELD,
    ),
    row(
        "§5 consent pending (contact-initiated) other text after 24h -> request again",
        pending(C, LONG_AGO),
        CONSENT,
        "Are you there?",
        pending(C, NOW),
        HELD,
        (to_contact("consent.contact_initiated.to_contact"),),
        events=(requested(C),),
    ),
    row(
        "§5 consent pending (employee-initiated) other text after 24h -> employee variant again",
        pending(E, LONG_AGO),
        CONSENT,
        "Who is this?",
        pending(E, NOW),
        HELD,
        (to_contact("consent.employee_initiated.to_contact"),),
        events=(requested(E),),
    ),
    # -- §5, while messages flow ----------------------------------------------------------
    row(
        "§5 consent opted_in other text -> relayed",
        OPTED_IN,
        CONSENT,
        "Hello",
        OPTED_IN,
        RELAYED,
        (RELAY,),
    ),
    row(
        "§5 consent opted_in opt-in keyword -> relayed",
        OPTED_IN,
        CONSENT,
        "Yes",
        OPTED_IN,
        RELAYED,
        (RELAY,),
    ),
    row(
        "§5 disclaimer new other text -> disclosed, disclaimer, relayed",
        NEW,
        DISCLAIMER,
        "Hello",
        DISCLOSED,
        RELAYED,
        (to_contact("disclaimer.contact_initiated.to_contact"), RELAY),
        events=(disclaimed(C),),
    ),
    row(
        "§5 disclaimer new opt-in keyword -> disclosed, disclaimer, relayed",
        NEW,
        DISCLAIMER,
        "Yes",
        DISCLOSED,
        RELAYED,
        (to_contact("disclaimer.contact_initiated.to_contact"), RELAY),
        events=(disclaimed(C),),
    ),
    row(
        "§5 disclaimer disclosed other text -> relayed",
        DISCLOSED,
        DISCLAIMER,
        "Hello",
        DISCLOSED,
        RELAYED,
        (RELAY,),
    ),
    row(
        "§5 disclaimer disclosed opt-in keyword -> relayed",
        DISCLOSED,
        DISCLAIMER,
        "YES",
        DISCLOSED,
        RELAYED,
        (RELAY,),
    ),
    row(
        "§5 disclaimer opted_in other text -> relayed",
        OPTED_IN,
        DISCLAIMER,
        "Hello",
        OPTED_IN,
        RELAYED,
        (RELAY,),
    ),
    row(
        "§5 disclaimer opted_in opt-in keyword -> relayed",
        OPTED_IN,
        DISCLAIMER,
        "start",
        OPTED_IN,
        RELAYED,
        (RELAY,),
    ),
    row(
        "§5 off new other text -> relayed, disclosed",
        NEW,
        OFF,
        "Hello",
        DISCLOSED,
        RELAYED,
        (RELAY,),
    ),
    row(
        "§5 off new opt-in keyword -> relayed, disclosed",
        NEW,
        OFF,
        "Y",
        DISCLOSED,
        RELAYED,
        (RELAY,),
    ),
    row(
        "§5 off disclosed other text -> relayed",
        DISCLOSED,
        OFF,
        "Hello",
        DISCLOSED,
        RELAYED,
        (RELAY,),
    ),
    row(
        "§5 off disclosed opt-in keyword -> relayed",
        DISCLOSED,
        OFF,
        "yes",
        DISCLOSED,
        RELAYED,
        (RELAY,),
    ),
    row(
        "§5 off opted_in other text -> relayed", OPTED_IN, OFF, "Hello", OPTED_IN, RELAYED, (RELAY,)
    ),
    row(
        "§5 off opted_in opt-in keyword -> relayed",
        OPTED_IN,
        OFF,
        "OPT IN",
        OPTED_IN,
        RELAYED,
        (RELAY,),
    ),
    # -- §5, an opted-out contact writes again -------------------------------------------
    row(
        "§5 opted_out consent other text, filtering off (SMS) -> pending as from new",
        OPTED_OUT,
        CONSENT_UNFILTERED,
        "Sorry, wrong button",
        pending(C, NOW),
        HELD,
        request(C),
        events=(RE_ENGAGED, requested(C)),
    ),
    row(
        "§5 opted_out consent other text, WhatsApp -> pending as from new",
        OPTED_OUT,
        WHATSAPP,
        "Sorry, wrong button",
        pending(C, NOW),
        HELD,
        request(C),
        events=(RE_ENGAGED, requested(C)),
    ),
    still_opted_out(
        "§5 opted_out consent other text, filtered -> held, employee told", CONSENT, "Hi"
    ),
    row(
        "§5 opted_out disclaimer other text, filtering off -> disclosed, relayed, employee told",
        OPTED_OUT,
        DISCLAIMER_UNFILTERED,
        "Hi again",
        Conversation(State.DISCLOSED, C, EARLIER),
        RELAYED,
        (
            to_contact("disclaimer.contact_initiated.to_contact"),
            RELEASE,
            RELAY,
            to_employee("consent.contact_initiated.opted_in.to_employee"),
        ),
        events=(RE_ENGAGED, disclaimed(C)),
    ),
    still_opted_out("§5 opted_out disclaimer other text, filtered -> as consent", DISCLAIMER, "Hi"),
    row(
        "§5 opted_out off other text, filtering off -> disclosed, relayed, employee told",
        OPTED_OUT,
        OFF_UNFILTERED,
        "Hi again",
        Conversation(State.DISCLOSED, C, EARLIER),
        RELAYED,
        (RELEASE, RELAY, to_employee("consent.contact_initiated.opted_in.to_employee")),
        events=(RE_ENGAGED,),
    ),
    still_opted_out("§5 opted_out off other text, filtered -> as consent", OFF, "Hi"),
    opted_in_again(
        "§5 opted_out consent opt-in YES, filtering off -> opted_in", CONSENT_UNFILTERED, "YES"
    ),
    opted_in_again(
        "§5 opted_out disclaimer opt-in Y, filtering off -> opted_in", DISCLAIMER_UNFILTERED, "Y"
    ),
    opted_in_again(
        "§5 opted_out off opt-in OPTIN, filtering off -> opted_in", OFF_UNFILTERED, "optin"
    ),
    opted_in_again("§5 opted_out opt-in Y on WhatsApp -> opted_in", WHATSAPP, "y"),
    opted_in_again("§5 opted_out consent START, filtered -> opted_in", CONSENT, "START"),
    opted_in_again("§5 opted_out disclaimer UNSTOP, filtered -> opted_in", DISCLAIMER, "unstop"),
    opted_in_again("§5 opted_out off YES, filtered -> opted_in", OFF, "Yes."),
    opted_in_again(
        "§5 opted_out OptOutType=START, filtered -> opted_in whatever the body",
        CONSENT,
        "sure thing",
        opt_out_type="START",
    ),
    still_opted_out("§5 opted_out Y, filtered -> counts as other text", CONSENT, "Y"),
    still_opted_out("§5 opted_out OPTIN, filtered -> counts as other text", DISCLAIMER, "OPTIN"),
    still_opted_out("§5 opted_out OPT IN, filtered -> counts as other text", OFF, "opt in"),
    still_opted_out("§5 opted_out OPT-IN, filtered -> counts as other text", CONSENT, "Opt-In!"),
]


@pytest.mark.parametrize(("before", "policy", "message", "expected"), CONTACT_ROWS)
def test_contact_writes_to_the_line(before, policy, message, expected):
    assert decide(before, policy, C, message, NOW) == expected


def employee_row(case_id, before, policy, after, disposition, steps=(), *, events=(), body="Hi"):
    expected = Decision(before, after, disposition, tuple(steps), False, tuple(events))
    return pytest.param(before, policy, classify(body), expected, id=case_id)


BLOCKED_STEPS = (to_employee("opt_out.to_employee"),)

EMPLOYEE_ROWS = [
    employee_row(
        "§6 consent new -> pending, employee-initiated request",
        NEW,
        CONSENT,
        pending(E, NOW),
        HELD,
        request(E),
        events=(requested(E),),
    ),
    employee_row(
        "§6 consent disclosed -> pending, employee-initiated request",
        DISCLOSED,
        CONSENT,
        pending(E, NOW),
        HELD,
        request(E),
        events=(requested(E),),
    ),
    employee_row(
        "§6 consent pending (contact-initiated) -> held, pending.to_employee",
        pending(C),
        CONSENT,
        pending(C),
        HELD,
        (to_employee("pending.to_employee"),),
    ),
    employee_row(
        "§6 consent pending (employee-initiated) -> held, pending.to_employee",
        pending(E, LONG_AGO),
        CONSENT,
        pending(E, LONG_AGO),
        HELD,
        (to_employee("pending.to_employee"),),
    ),
    employee_row(
        "§6 consent pending, employee writes YES -> still held (not a consent answer)",
        pending(E),
        CONSENT,
        pending(E),
        HELD,
        (to_employee("pending.to_employee"),),
        body="YES",
    ),
    employee_row(
        "§6 consent opted_in -> delivered", OPTED_IN, CONSENT, OPTED_IN, RELAYED, (RELAY,)
    ),
    employee_row(
        "§6 consent opted_in, employee writes STOP -> delivered (a body, not a keyword)",
        OPTED_IN,
        CONSENT,
        OPTED_IN,
        RELAYED,
        (RELAY,),
        body="STOP",
    ),
    employee_row(
        "§6 disclaimer new -> disclosed, disclaimer then the message",
        NEW,
        DISCLAIMER,
        Conversation(State.DISCLOSED, E),
        RELAYED,
        (to_contact("disclaimer.employee_initiated.to_contact"), RELAY),
        events=(disclaimed(E),),
    ),
    employee_row(
        "§6 disclaimer disclosed -> delivered", DISCLOSED, DISCLAIMER, DISCLOSED, RELAYED, (RELAY,)
    ),
    employee_row(
        "§6 disclaimer opted_in -> delivered", OPTED_IN, DISCLAIMER, OPTED_IN, RELAYED, (RELAY,)
    ),
    employee_row(
        "§6 off new -> delivered", NEW, OFF, Conversation(State.DISCLOSED, E), RELAYED, (RELAY,)
    ),
    employee_row("§6 off disclosed -> delivered", DISCLOSED, OFF, DISCLOSED, RELAYED, (RELAY,)),
    employee_row("§6 off opted_in -> delivered", OPTED_IN, OFF, OPTED_IN, RELAYED, (RELAY,)),
    employee_row(
        "§6 consent opted_out -> blocked", OPTED_OUT, CONSENT, OPTED_OUT, BLOCKED, BLOCKED_STEPS
    ),
    employee_row(
        "§6 disclaimer opted_out -> blocked",
        OPTED_OUT,
        DISCLAIMER_UNFILTERED,
        OPTED_OUT,
        BLOCKED,
        BLOCKED_STEPS,
    ),
    employee_row("§6 off opted_out -> blocked", OPTED_OUT, OFF, OPTED_OUT, BLOCKED, BLOCKED_STEPS),
    employee_row(
        "§6 WhatsApp opted_out -> blocked", OPTED_OUT, WHATSAPP, OPTED_OUT, BLOCKED, BLOCKED_STEPS
    ),
]


@pytest.mark.parametrize(("before", "policy", "message", "expected"), EMPLOYEE_ROWS)
def test_employee_writes_to_the_line(before, policy, message, expected):
    assert decide(before, policy, E, message, NOW) == expected


# -- single rules across all states ----------------------------------------------------

STATES = list(State)
MODES = list(Mode)
CHANNELS = [
    pytest.param(Channel.SMS, True, id="filtered-sms"),
    pytest.param(Channel.SMS, False, id="unfiltered-sms"),
    pytest.param(Channel.WHATSAPP, True, id="whatsapp"),
]


def conversation_in(state: State) -> Conversation:
    if state is State.NEW:
        return NEW
    return Conversation(state, E, EARLIER)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("channel", "stop_filtering"), CHANNELS)
def test_help_is_answered_everywhere_but_a_filtered_opt_out(state, mode, channel, stop_filtering):
    policy = Policy(mode, channel, stop_filtering)
    conv = conversation_in(state)
    silenced = state is State.OPTED_OUT and channel is Channel.SMS and stop_filtering
    expected = () if silenced else (to_contact("help.to_contact"),)
    for body in ("HELP", "info"):
        assert decide(conv, policy, C, classify(body), NOW) == Decision(
            conv, conv, ANSWERED, expected
        )


@pytest.mark.parametrize("state", [s for s in STATES if s is not State.OPTED_OUT])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("channel", "stop_filtering"), CHANNELS)
def test_opt_out_keyword_from_any_other_state(state, mode, channel, stop_filtering):
    policy = Policy(mode, channel, stop_filtering)
    conv = conversation_in(state)
    steps = (to_employee("opt_out.to_employee"),)
    opted_out = OPTED_OUT_QUIETLY
    if not (channel is Channel.SMS and stop_filtering):
        steps = (to_contact("opt_out.to_contact"), *steps)
        opted_out = OPTED_OUT_CONFIRMED
    assert decide(conv, policy, C, classify("stop"), NOW) == Decision(
        conv,
        Conversation(State.OPTED_OUT, conv.initiator, conv.last_request_at),
        ANSWERED,
        steps,
        discard_held=True,
        events=(opted_out,),
    )


@pytest.mark.parametrize("initiator", [C, E])
@pytest.mark.parametrize(
    ("elapsed", "resend"),
    [
        pytest.param(timedelta(seconds=1), False, id="1s"),
        pytest.param(timedelta(hours=24), False, id="exactly-24h"),
        pytest.param(timedelta(hours=24, seconds=1), True, id="24h+1s"),
        pytest.param(timedelta(days=30), True, id="30d"),
    ],
)
def test_pending_request_is_repeated_only_after_24_hours(initiator, elapsed, resend):
    before = pending(initiator, NOW - elapsed)
    decision = decide(before, CONSENT, C, classify("hello?"), NOW)
    assert decision.disposition is HELD
    assert decision.discard_held is False
    assert decision.texts_to(E) == ()  # the employee is never notified again
    if resend:
        assert decision.steps == (to_contact(f"consent.{initiator}_initiated.to_contact"),)
        assert decision.after == pending(initiator, NOW)
        assert decision.events == (requested(initiator),)
    else:
        assert decision.steps == ()
        assert decision.after == before
        assert decision.events == ()


def test_a_repeated_request_restarts_the_24_hours():
    first = decide(pending(C, LONG_AGO), CONSENT, C, classify("hello?"), NOW)
    later = NOW + timedelta(hours=23)
    assert decide(first.after, CONSENT, C, classify("still there?"), later).steps == ()


# -- WhatsApp ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_whatsapp_always_asks_for_consent(mode):
    policy = Policy(mode, Channel.WHATSAPP)
    assert policy.effective_mode is Mode.CONSENT
    assert policy.filtered is False
    assert decide(NEW, policy, C, classify("Hello"), NOW) == Decision(
        NEW, pending(C, NOW), HELD, request(C), events=(requested(C),)
    )
    assert decide(NEW, policy, E, classify("Hello"), NOW) == Decision(
        NEW, pending(E, NOW), HELD, request(E), events=(requested(E),)
    )
    # A disclosed WhatsApp conversation is treated as new, and "Yes" is a consent answer.
    assert decide(DISCLOSED, policy, C, classify("Yes"), NOW).after.state is State.OPTED_IN


def test_whatsapp_has_no_stop_filtering():
    policy = Policy(Mode.DISCLAIMER, Channel.WHATSAPP, stop_filtering=True)
    out = decide(OPTED_IN, policy, C, classify("STOP"), NOW)
    assert out.steps == (to_contact("opt_out.to_contact"), to_employee("opt_out.to_employee"))
    assert out.after.state is State.OPTED_OUT
    # The contact is reachable: HELP is answered and any opt-in word opts back in.
    assert decide(out.after, policy, C, classify("help"), NOW).steps == (
        to_contact("help.to_contact"),
    )
    assert decide(out.after, policy, C, classify("opt-in"), NOW).after.state is State.OPTED_IN


@pytest.mark.parametrize(
    ("mode", "channel", "stop_filtering", "effective", "filtered"),
    [
        (Mode.CONSENT, Channel.SMS, True, Mode.CONSENT, True),
        (Mode.DISCLAIMER, Channel.SMS, True, Mode.DISCLAIMER, True),
        (Mode.OFF, Channel.SMS, False, Mode.OFF, False),
        (Mode.DISCLAIMER, Channel.WHATSAPP, True, Mode.CONSENT, False),
        (Mode.OFF, Channel.WHATSAPP, False, Mode.CONSENT, False),
    ],
)
def test_policy(mode, channel, stop_filtering, effective, filtered):
    policy = Policy(mode, channel, stop_filtering)
    assert policy.effective_mode is effective
    assert policy.filtered is filtered


def test_policy_defaults_to_filtered_sms():
    assert Policy(Mode.OFF).filtered is True


# -- §2 and §4 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "mode", "expected"),
    [
        (State.NEW, Mode.CONSENT, False),
        (State.PENDING, Mode.CONSENT, False),
        (State.OPTED_IN, Mode.CONSENT, True),
        (State.DISCLOSED, Mode.CONSENT, False),
        (State.OPTED_OUT, Mode.CONSENT, False),
        (State.NEW, Mode.DISCLAIMER, False),
        (State.PENDING, Mode.DISCLAIMER, False),
        (State.OPTED_IN, Mode.DISCLAIMER, True),
        (State.DISCLOSED, Mode.DISCLAIMER, True),
        (State.OPTED_OUT, Mode.DISCLAIMER, False),
        (State.NEW, Mode.OFF, False),
        (State.PENDING, Mode.OFF, False),
        (State.OPTED_IN, Mode.OFF, True),
        (State.DISCLOSED, Mode.OFF, True),
        (State.OPTED_OUT, Mode.OFF, False),
    ],
)
def test_flows(state, mode, expected):
    assert flows(state, mode) is expected


@pytest.mark.parametrize(
    ("body", "opt_out_type", "before", "state", "texts_to_contact"),
    [
        pytest.param(
            "please stop by at 3",
            "STOP",
            OPTED_IN,
            State.OPTED_OUT,
            (),
            id="STOP wins over an ordinary body",
        ),
        pytest.param(
            "STOP",
            "START",
            OPTED_OUT,
            State.OPTED_IN,
            (confirmed(C)[0],),
            id="START wins over STOP",
        ),
        pytest.param(
            "stop", "HELP", OPTED_IN, State.OPTED_IN, (to_contact("help.to_contact"),), id="HELP"
        ),
        pytest.param(
            "Y", "START", OPTED_OUT, State.OPTED_IN, (confirmed(C)[0],), id="START lifts the block"
        ),
    ],
)
def test_opt_out_type_wins(body, opt_out_type, before, state, texts_to_contact):
    decision = decide(before, CONSENT, C, classify(body, opt_out_type), NOW)
    assert decision.after.state is state
    assert tuple(s for s in decision.steps if isinstance(s, Text) and s.to is C) == (
        texts_to_contact
    )


FLOWING = [
    pytest.param(CONSENT, OPTED_IN, id="consent-opted_in"),
    pytest.param(DISCLAIMER, NEW, id="disclaimer-new"),
    pytest.param(DISCLAIMER, DISCLOSED, id="disclaimer-disclosed"),
    pytest.param(DISCLAIMER, OPTED_IN, id="disclaimer-opted_in"),
    pytest.param(OFF, NEW, id="off-new"),
    pytest.param(OFF, DISCLOSED, id="off-disclosed"),
    pytest.param(OFF, OPTED_IN, id="off-opted_in"),
]


@pytest.mark.parametrize(("policy", "before"), FLOWING)
@pytest.mark.parametrize("body", ["Yes", "yes!", "Y", "START", "OPT-IN"])
def test_yes_is_relayed_where_messages_flow(policy, before, body):
    decision = decide(before, policy, C, classify(body), NOW)
    assert decision.disposition is RELAYED
    assert RELAY in decision.steps
    assert Event.OPTED_IN not in [e.event for e in decision.events]
    assert decision.texts_to(E) == ()
    assert decision.after.state in (State.DISCLOSED, State.OPTED_IN)
    assert flows(decision.after.state, policy.effective_mode)


def test_texts_to_lists_the_keys_for_one_side_in_order():
    decision = decide(NEW, CONSENT, C, classify("hi"), NOW)
    assert decision.texts_to(C) == ("consent.contact_initiated.to_contact",)
    assert decision.texts_to(E) == ("consent.contact_initiated.to_employee",)


# -- carrier opt-out (error 21610) ---------------------------------------------------------


@pytest.mark.parametrize("state", [s for s in STATES if s is not State.OPTED_OUT])
def test_opt_out_elsewhere_records_an_opt_out(state):
    before = conversation_in(state)
    assert opt_out_elsewhere(before) == Decision(
        before,
        Conversation(State.OPTED_OUT, before.initiator, before.last_request_at),
        ANSWERED,
        (),
        discard_held=True,
        events=(OPTED_OUT_QUIETLY,),
    )


def test_opt_out_elsewhere_of_an_opted_out_contact_changes_nothing():
    assert opt_out_elsewhere(OPTED_OUT) == Decision(OPTED_OUT, OPTED_OUT, ANSWERED)


# -- properties (SPEC §2, §4–§6; STYLE "the domain's state machine") ----------------------

BODIES = (
    "Yes",
    "YES",
    "y",
    "Y",
    "START",
    "unstop",
    "optin",
    "Opt-in",
    "stop",
    "STOP ALL",
    "Cancel",
    "HELP",
    "info",
    "hello",
    "Is 9am ok?",
    "please stop texting me",
    "I'll stop by at 3",
)
GAPS = (timedelta(0), timedelta(minutes=5), timedelta(hours=24), timedelta(hours=25))
CARRIER = "carrier 21610"

# The only texts an opted-out contact may get when Twilio does not filter (SPEC §5).
ALLOWED_AFTER_UNFILTERED_OPT_OUT = {
    "help.to_contact",
    "consent.contact_initiated.to_contact",
    "consent.contact_initiated.opted_in.to_contact",
    "disclaimer.contact_initiated.to_contact",
}


@dataclass(frozen=True)
class Inbound:
    """A text that reaches the line, and the settings in force when it does."""

    sender: Role
    body: str
    opt_out_type: str | None = None
    mode: Mode = Mode.CONSENT
    stop_filtering: bool = True
    gap: timedelta = timedelta(0)


inbound = st.builds(
    Inbound,
    st.sampled_from(Role),
    st.sampled_from(BODIES),
    st.one_of(st.none(), st.none(), st.sampled_from(["STOP", "START", "HELP"])),
    st.sampled_from(Mode),
    st.booleans(),
    st.sampled_from(GAPS),
)


@st.composite
def scenarios(draw):
    """A channel per sequence; mode and filtering fixed, or changed by an admin between texts."""
    channel = draw(st.sampled_from(Channel))
    events = draw(st.lists(st.one_of(inbound, st.just(CARRIER)), max_size=30))
    fixed_mode = draw(st.one_of(st.none(), st.sampled_from(Mode)))
    fixed_filtering = draw(st.one_of(st.none(), st.booleans()))
    fixed = []
    for e in events:
        if e != CARRIER:
            e = replace(
                e,
                mode=e.mode if fixed_mode is None else fixed_mode,
                stop_filtering=e.stop_filtering if fixed_filtering is None else fixed_filtering,
            )
        fixed.append(e)
    return channel, fixed


@dataclass
class Model:
    """A conversation's facts and the fate of each text it held."""

    conv: Conversation = field(default_factory=Conversation)
    held: list[int] = field(default_factory=list)
    fates: dict[int, list[str]] = field(default_factory=dict)

    def apply(self, decision: Decision) -> None:
        assert decision.before == self.conv
        released = RELEASE in decision.steps
        assert not (released and decision.discard_held), "released and discarded at once"
        if decision.disposition is HELD:
            assert not released and not decision.discard_held, "held and let go at once"
        if released:
            self._settle("released")
        if decision.discard_held:
            self._settle("discarded")
        if decision.disposition is HELD:
            new_id = len(self.fates)
            self.fates[new_id] = []
            self.held.append(new_id)
        self.conv = decision.after
        if self.held:
            # Held texts wait only where nothing flows, whatever the mode becomes.
            assert self.conv.state in (State.PENDING, State.OPTED_OUT)

    def _settle(self, fate: str) -> None:
        for held_id in self.held:
            self.fates[held_id].append(fate)
        self.held.clear()


def check_opted_out_contact(before, policy, inbound_, message, decision) -> None:
    """Nothing but the allowed texts ever reaches an opted-out contact."""
    if before.state is not State.OPTED_OUT:
        return
    to_contact_keys = decision.texts_to(C)
    assert "opt_out.to_contact" not in to_contact_keys  # one confirmation only
    if inbound_.sender is E:
        assert to_contact_keys == ()
        assert RELAY not in decision.steps
        assert RELEASE not in decision.steps
        assert decision.disposition is BLOCKED
        assert decision.after == before
    elif policy.filtered:
        # Twilio lifts its block on START/UNSTOP/YES; after an Advanced Opt-Out
        # STOP, only on its own START classification.
        lifted = message.by_twilio if before.twilio_opt_out else message.lifts_block
        if message.kind is Kind.OPT_IN and lifted:
            assert to_contact_keys == ("consent.contact_initiated.opted_in.to_contact",)
            assert decision.after.state is State.OPTED_IN
        else:
            assert to_contact_keys == ()
            assert RELEASE not in decision.steps
            assert decision.after.state is State.OPTED_OUT
    else:
        assert set(to_contact_keys) <= ALLOWED_AFTER_UNFILTERED_OPT_OUT
        assert len(to_contact_keys) <= 1
        if message.kind is Kind.OPT_OUT:
            assert decision.steps == ()


def check_decision(before, policy, decision) -> None:
    assert isinstance(decision.after.state, State)
    assert decision.before == before
    mode = policy.effective_mode
    if decision.disposition is HELD:
        assert not flows(decision.after.state, mode)
    if RELAY in decision.steps or RELEASE in decision.steps:
        assert flows(decision.after.state, mode)
    if decision.discard_held:
        assert decision.after.state is State.OPTED_OUT
    if before.state is not State.OPTED_OUT and decision.after.state is State.OPTED_OUT:
        # An opt-out discards whatever was held (SPEC §5).
        assert decision.discard_held
        assert [e.event for e in decision.events] == [Event.OPTED_OUT]


def hi(sender: Role = C, mode: Mode = Mode.CONSENT, *, stop_filtering: bool = True) -> Inbound:
    return Inbound(sender, "hello", mode=mode, stop_filtering=stop_filtering)


@settings(max_examples=300, deadline=None)
@given(scenarios())
# Paths a random run may miss: a pending conversation whose mode is changed, texts held
# after a filtered opt-out when filtering is then turned off, an opt-out while pending.
@example((Channel.SMS, [hi(), hi(E), hi(mode=Mode.DISCLAIMER)]))
@example((Channel.SMS, [hi(E), hi(C), hi(E, Mode.OFF)]))
@example((Channel.SMS, [Inbound(C, "STOP"), hi(), hi(mode=Mode.OFF, stop_filtering=False)]))
@example((Channel.SMS, [Inbound(C, "STOP"), hi(), hi(stop_filtering=False), Inbound(C, "YES")]))
@example((Channel.SMS, [Inbound(C, "STOP"), hi(), Inbound(C, "STOP"), Inbound(C, "START")]))
@example((Channel.WHATSAPP, [hi(), hi(E), Inbound(C, "stop"), Inbound(C, "Y")]))
@example((Channel.SMS, [hi(E), hi(), CARRIER, hi(), Inbound(C, "unstop")]))
def test_state_machine_properties(scenario):
    channel, events = scenario
    model = Model()
    now = NOW
    for event in events:
        before = model.conv
        if event == CARRIER:
            decision = opt_out_elsewhere(before)
            assert decision == opt_out_elsewhere(before)
            assert decision.after.state is State.OPTED_OUT
            assert decision.steps == ()
        else:
            now += event.gap
            policy = Policy(event.mode, channel, event.stop_filtering)
            opt_out_type = event.opt_out_type if event.sender is C else None
            message: Classification = classify(event.body, opt_out_type)
            decision = decide(before, policy, event.sender, message, now)
            assert decision == decide(before, policy, event.sender, message, now)
            check_decision(before, policy, decision)
            check_opted_out_contact(before, policy, event, message, decision)
            if event.sender is E and decision.after.state is not before.state:
                # Only a contact opts in or out: keywords are only keywords from contacts.
                assert {before.state, decision.after.state}.isdisjoint(
                    {State.OPTED_IN, State.OPTED_OUT}
                )
        model.apply(decision)

    for held_id, fate in model.fates.items():
        assert len(fate) <= 1, f"text {held_id} was {fate}"
        assert (fate == []) == (held_id in model.held)
    if model.held:
        assert all(not flows(model.conv.state, mode) for mode in Mode)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(State),
    st.sampled_from(Role),
    st.one_of(st.none(), st.sampled_from(Role)),
    st.sampled_from(Mode),
    st.sampled_from(Channel),
    st.booleans(),
    st.sampled_from(BODIES),
    st.one_of(st.none(), st.sampled_from(["STOP", "START", "HELP"])),
    st.sampled_from(GAPS),
)
def test_decide_is_deterministic_and_total(
    state, sender, initiator, mode, channel, stop_filtering, body, opt_out_type, gap
):
    conv = Conversation(state, initiator, NOW - gap)
    policy = Policy(mode, channel, stop_filtering)
    message = classify(body, opt_out_type)
    decision = decide(conv, policy, sender, message, NOW)
    assert decision == decide(conv, policy, sender, message, NOW)
    check_decision(conv, policy, decision)


# -- Twilio's own keyword lists, Advanced Opt-Out, and lines without an employee ------


def test_filtered_opt_out_with_a_word_twilio_does_not_block_on_is_confirmed_by_us():
    decision = decide(OPTED_IN, CONSENT, C, classify("OPT OUT"), NOW)
    assert decision.after.state is State.OPTED_OUT
    assert decision.texts_to(C) == ("opt_out.to_contact",)
    assert decide(OPTED_IN, CONSENT, C, classify("STOP"), NOW).texts_to(C) == ()


def test_after_an_advanced_opt_out_only_twilios_start_lifts_the_block():
    out = decide(OPTED_IN, CONSENT, C, classify("stop", "STOP"), NOW).after
    assert out.twilio_opt_out is True
    # YES was removed from the service's opt-in words: Twilio still blocks the contact.
    still = decide(out, CONSENT, C, classify("YES"), NOW)
    assert still.after.state is State.OPTED_OUT and still.disposition is HELD
    back = decide(out, CONSENT, C, classify("yes", "START"), NOW)
    assert back.after == Conversation(State.OPTED_IN, C, OPTED_IN.last_request_at)
    # Without Advanced Opt-Out, Twilio's default words decide.
    plain = decide(OPTED_IN, CONSENT, C, classify("STOP"), NOW).after
    assert decide(plain, CONSENT, C, classify("YES"), NOW).after.state is State.OPTED_IN


@pytest.mark.parametrize("state", [State.NEW, State.PENDING, State.OPTED_IN, State.DISCLOSED])
def test_unrouted_stop_still_opts_out(state):
    from bot.consent import unrouted

    before = Conversation(state, C, EARLIER)
    decision = unrouted(before, classify("STOP"))
    assert decision.after.state is State.OPTED_OUT
    assert decision.steps == () and decision.discard_held
    assert decision.events == (OPTED_OUT_QUIETLY,) and decision.disposition is Disposition.UNROUTED
    assert unrouted(before, classify("hello")) == Decision(before, before, Disposition.UNROUTED)
    assert unrouted(before, classify("START")).after == before


# -- a failed send (SPEC §7: error 21610 is an opt-out) -------------------------------------


@pytest.mark.parametrize("state", [s for s in STATES if s is not State.OPTED_OUT])
def test_21610_on_a_text_to_the_contact_is_an_opt_out(state):
    before = conversation_in(state)
    assert delivery_failed(before, "21610", to_contact=True) == opt_out_elsewhere(before)
    assert delivery_failed(before, "21610", to_contact=True).after.state is State.OPTED_OUT


@pytest.mark.parametrize(
    ("code", "to_contact"), [("21610", False), ("30003", True), ("30007", True), (None, True)]
)
def test_other_failures_change_nothing_about_consent(code, to_contact):
    assert delivery_failed(OPTED_IN, code, to_contact) == Decision(OPTED_IN, OPTED_IN, ANSWERED)


# -- where an employee's text goes (SPEC §6) --------------------------------------------------

OWN = ("+14155550100", "+14155550111")  # the line and the employee's cell
NAMED = "+14155550123"


def employee_text(body, named=None, rest="", invalid=None, media=False) -> EmployeeText:
    number = named.removeprefix("whatsapp:") if named else None
    return EmployeeText(body, media, named, number, rest, invalid)


@pytest.mark.parametrize(
    ("text", "current", "route"),
    [
        pytest.param(
            employee_text(f"{NAMED} Hi", NAMED, "Hi"), None, Route(NAMED, body="Hi"), id="named"
        ),
        pytest.param(
            employee_text(f"whatsapp:{NAMED} Hola", f"whatsapp:{NAMED}", "Hola"),
            NAMED,
            Route(f"whatsapp:{NAMED}", body="Hola"),
            id="named on whatsapp, over the current contact",
        ),
        pytest.param(employee_text("See you"), NAMED, Route(NAMED), id="to the current contact"),
        pytest.param(
            employee_text("See you"), None, Route(reply=Reply.USAGE), id="no current contact"
        ),
        pytest.param(
            employee_text(NAMED, NAMED), OWN[1], Route(NAMED, reply=Reply.SWITCHED), id="bare"
        ),
        pytest.param(
            employee_text(NAMED, NAMED, media=True),
            None,
            Route(NAMED, body=""),
            id="a number and a picture is a text",
        ),
        pytest.param(employee_text(" #HELP "), NAMED, Route(reply=Reply.USAGE), id="#help"),
        pytest.param(employee_text("  "), NAMED, Route(reply=Reply.EMPTY), id="empty"),
        pytest.param(
            employee_text("+1555 hi", invalid="'+1555' is not a valid phone number."),
            NAMED,
            Route(reply=Reply.BAD_NUMBER, detail="'+1555' is not a valid phone number."),
            id="invalid number",
        ),
        pytest.param(
            employee_text(f"{OWN[0]} hi", OWN[0], "hi"),
            NAMED,
            Route(reply=Reply.NOT_A_CONTACT),
            id="the line itself",
        ),
        pytest.param(
            employee_text(f"whatsapp:{OWN[1]} hi", f"whatsapp:{OWN[1]}", "hi"),
            NAMED,
            Route(reply=Reply.NOT_A_CONTACT),
            id="the employee's own cell",
        ),
    ],
)
def test_route_employee_text(text, current, route):
    assert route_employee_text(text, OWN, current) == route


@pytest.mark.parametrize("reply", list(Reply))
def test_a_reply_goes_to_the_employee_and_changes_nothing(reply):
    assert answer_employee(PENDING_C, reply) == Decision(
        PENDING_C, PENDING_C, ANSWERED, (to_employee(f"reply.{reply}"),)
    )


PENDING_C = pending(C)
