"""The consent gate's decisions (SPEC §2, §4–§6): plain Python, no framework.

``decide`` takes what is known about a conversation and the text that just
arrived and returns what must happen: the conversation's next state, the texts
to send (in order), whether the text is relayed, held or stopped, whether held
texts are released or discarded, and the consent events to record with the
text each one showed the contact. ``route_employee_text`` decides where an
employee's text goes (SPEC §6), ``delivery_failed`` what a failed send means
(21610: an opt-out), ``opt_out_elsewhere`` and ``unrouted`` the opt-outs that
do not come as a text to an active line. Everything the bot does about consent
is decided here and nowhere else.
"""

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from bot.keywords import Classification, Kind


class Mode(StrEnum):
    CONSENT = "consent"
    DISCLAIMER = "disclaimer"
    OFF = "off"


class State(StrEnum):
    NEW = "new"
    PENDING = "pending"
    OPTED_IN = "opted_in"
    DISCLOSED = "disclosed"
    OPTED_OUT = "opted_out"


class Role(StrEnum):
    CONTACT = "contact"
    EMPLOYEE = "employee"


class Channel(StrEnum):
    SMS = "sms"
    WHATSAPP = "whatsapp"


class Event(StrEnum):
    REQUEST_SENT = "request_sent"
    DISCLAIMER_SENT = "disclaimer_sent"
    OPTED_IN = "opted_in"
    OPTED_OUT = "opted_out"
    RE_ENGAGED = "re_engaged"


class Disposition(StrEnum):
    """What becomes of an inbound text."""

    RELAYED = "relayed"  # delivered to the other side now
    HELD = "held"  # kept until the contact opts in (or discarded on opt-out)
    RELEASED = "released"  # held, then delivered when the contact opted in
    DISCARDED = "discarded"  # held, then dropped when the contact opted out (kept in the log)
    ANSWERED = "answered"  # a keyword or an addressing command: handled by the bot
    BLOCKED = "blocked"  # an employee's text to an opted-out contact: never sent
    UNROUTED = "unrouted"  # sent to a number that is no active line


@dataclass(frozen=True)
class ConsentEvent:
    """A consent event to record, with the key (SPEC §3) of the text it showed the contact."""

    event: Event
    shown: str | None = None


# A consent request is repeated to a pending contact only after this long.
REQUEST_REPEAT_AFTER = timedelta(hours=24)


@dataclass(frozen=True)
class Conversation:
    """The consent facts of one (line, contact) conversation."""

    state: State = State.NEW
    initiator: Role | None = None
    last_request_at: datetime | None = None
    # The opt-out came classified by Twilio (Advanced Opt-Out): then only
    # Twilio's own START classification tells that its block was lifted.
    twilio_opt_out: bool = False


def line_mode(own: Mode | None, organisation: Mode) -> Mode:
    """A line's mode: its employee's own, else the organisation's default (SPEC §1)."""
    return own or organisation


@dataclass(frozen=True)
class Policy:
    """The rules in force for one conversation."""

    mode: Mode
    channel: Channel = Channel.SMS
    stop_filtering: bool = True

    @property
    def effective_mode(self) -> Mode:
        """WhatsApp conversations always ask for consent."""
        return Mode.CONSENT if self.channel is Channel.WHATSAPP else self.mode

    @property
    def filtered(self) -> bool:
        """Twilio blocks sends to this contact after an opt-out keyword (SMS only)."""
        return self.stop_filtering and self.channel is Channel.SMS


@dataclass(frozen=True)
class Text:
    """Send the text with this key (SPEC §3) to one side."""

    to: Role
    key: str


@dataclass(frozen=True)
class Relay:
    """Deliver the text that arrived to the other side."""


@dataclass(frozen=True)
class Release:
    """Deliver every held text of the conversation, in order, to its other side."""


Step = Text | Relay | Release
RELAY = Relay()
RELEASE = Release()


@dataclass(frozen=True)
class Decision:
    before: Conversation
    after: Conversation
    disposition: Disposition
    steps: tuple[Step, ...] = ()
    discard_held: bool = False
    events: tuple[ConsentEvent, ...] = ()

    def texts_to(self, role: Role) -> tuple[str, ...]:
        """The keys of the texts this decision sends to one side."""
        return tuple(s.key for s in self.steps if isinstance(s, Text) and s.to is role)


def flows(state: State, mode: Mode) -> bool:
    """Whether messages pass between contact and employee (SPEC §2)."""
    if mode is Mode.CONSENT:
        return state is State.OPTED_IN
    return state in (State.OPTED_IN, State.DISCLOSED)


def decide(
    conv: Conversation,
    policy: Policy,
    sender: Role,
    message: Classification,
    now: datetime,
) -> Decision:
    """What happens when ``sender`` writes into the conversation ``conv``."""
    if sender is Role.EMPLOYEE:
        return _from_employee(conv, policy, now)
    return _from_contact(conv, policy, message, now)


def opt_out_elsewhere(conv: Conversation) -> Decision:
    """An opt-out that did not come as a text to the line.

    Twilio's error 21610 (the contact blocked the line), or an admin recording
    an opt-out received by phone, email or in person.
    """
    if conv.state is State.OPTED_OUT:
        return Decision(conv, conv, Disposition.ANSWERED)
    return Decision(
        conv,
        replace(conv, state=State.OPTED_OUT),
        Disposition.ANSWERED,
        discard_held=True,
        events=(ConsentEvent(Event.OPTED_OUT),),
    )


# Twilio's error for a send to a recipient who opted out of the sender (TWILIO.md).
CARRIER_OPT_OUT = "21610"


def explained_states(last_event: State | None, flowed: bool) -> frozenset[State]:
    """The consent states a conversation's evidence explains (``audit verify``).

    The state its last consent event recorded; with no event yet, NEW, or also
    DISCLOSED once a text went through, since a line in off mode lets texts flow
    without any consent event (SPEC §5).
    """
    if last_event is not None:
        return frozenset((last_event,))
    return frozenset((State.NEW, State.DISCLOSED) if flowed else (State.NEW,))


def delivery_failed(conv: Conversation, error_code: str | None, to_contact: bool) -> Decision:
    """A text of this conversation failed with ``error_code`` (a status callback, a REST send).

    21610 on a text to the contact means they blocked the line at carrier level
    (SPEC §7): an opt-out. Any other failure, or one on a text to the employee,
    changes nothing about consent.
    """
    if error_code == CARRIER_OPT_OUT and to_contact:
        return opt_out_elsewhere(conv)
    return Decision(conv, conv, Disposition.ANSWERED)


def unrouted(conv: Conversation, message: Classification) -> Decision:
    """A text to a line no active employee has: only an opt-out has any effect.

    Nothing is sent (there is nobody to relay to), but a STOP still counts, so
    the next employee given this line cannot text someone who said STOP.
    """
    if message.kind is Kind.OPT_OUT and conv.state is not State.OPTED_OUT:
        return Decision(
            conv,
            replace(conv, state=State.OPTED_OUT, twilio_opt_out=message.by_twilio),
            Disposition.UNROUTED,
            discard_held=True,
            events=(ConsentEvent(Event.OPTED_OUT),),
        )
    return Decision(conv, conv, Disposition.UNROUTED)


# -- contact → line (SPEC §5) -------------------------------------------------


def _from_contact(
    conv: Conversation, policy: Policy, message: Classification, now: datetime
) -> Decision:
    mode = policy.effective_mode
    state = conv.state

    if message.kind is Kind.HELP:
        if state is State.OPTED_OUT and policy.filtered:
            # Twilio would block the reply: an opted-out contact gets no HELP answer.
            return Decision(conv, conv, Disposition.ANSWERED)
        return Decision(conv, conv, Disposition.ANSWERED, (Text(Role.CONTACT, "help.to_contact"),))

    if message.kind is Kind.OPT_OUT:
        if state is State.OPTED_OUT:
            # One confirmation only. What they wrote since stays held for a START.
            return Decision(conv, conv, Disposition.ANSWERED)
        steps: list[Step] = []
        shown = None
        if not (policy.filtered and message.carrier):
            # Twilio confirms (and blocks) only its own opt-out words.
            shown = "opt_out.to_contact"
            steps.append(Text(Role.CONTACT, shown))
        steps.append(Text(Role.EMPLOYEE, "opt_out.to_employee"))
        return Decision(
            conv,
            replace(conv, state=State.OPTED_OUT, twilio_opt_out=message.by_twilio),
            Disposition.ANSWERED,
            tuple(steps),
            discard_held=True,
            events=(ConsentEvent(Event.OPTED_OUT, shown),),
        )

    if message.kind is Kind.OPT_IN and _is_consent_answer(conv, policy, message):
        return _opt_in(conv)

    # Any other text, or an opt-in word where it is an ordinary answer.
    if state is State.OPTED_OUT:
        return _opted_out_contact_wrote(conv, policy, now)
    if flows(state, mode):
        return Decision(conv, conv, Disposition.RELAYED, (RELAY,))
    if mode is Mode.CONSENT:
        if state is State.PENDING:
            return _still_pending(conv, now)
        return _request_consent(conv, Role.CONTACT, now)
    return _start_flowing(conv, Role.CONTACT, mode)


def _is_consent_answer(conv: Conversation, policy: Policy, message: Classification) -> bool:
    """An opt-in word answers a consent question only where messages do not flow yet."""
    if conv.state is State.OPTED_OUT:
        if not policy.filtered:
            return True
        # After a filtered opt-out only START, UNSTOP and YES lift Twilio's block;
        # under Advanced Opt-Out, Twilio's own START classification says so.
        return message.by_twilio if conv.twilio_opt_out else message.lifts_block
    return policy.effective_mode is Mode.CONSENT and conv.state in (
        State.NEW,
        State.DISCLOSED,
        State.PENDING,
    )


def _opt_in(conv: Conversation) -> Decision:
    """The contact said YES: confirm to both sides and release what was held."""
    variant = (conv.initiator if conv.state is State.PENDING else None) or Role.CONTACT
    prefix = f"consent.{variant}_initiated.opted_in"
    return Decision(
        conv,
        Conversation(State.OPTED_IN, variant, conv.last_request_at, False),
        Disposition.ANSWERED,
        (
            Text(Role.CONTACT, f"{prefix}.to_contact"),
            Text(Role.EMPLOYEE, f"{prefix}.to_employee"),
            RELEASE,
        ),
        events=(ConsentEvent(Event.OPTED_IN, f"{prefix}.to_contact"),),
    )


def _request_consent(conv: Conversation, initiator: Role, now: datetime) -> Decision:
    """Move to pending: hold the text and ask the contact for consent."""
    prefix = f"consent.{initiator}_initiated"
    events = (ConsentEvent(Event.REQUEST_SENT, f"{prefix}.to_contact"),)
    if conv.state is State.OPTED_OUT:
        events = (ConsentEvent(Event.RE_ENGAGED), *events)
    return Decision(
        conv,
        Conversation(State.PENDING, initiator, now, False),
        Disposition.HELD,
        (Text(Role.CONTACT, f"{prefix}.to_contact"), Text(Role.EMPLOYEE, f"{prefix}.to_employee")),
        events=events,
    )


def _still_pending(conv: Conversation, now: datetime) -> Decision:
    """Hold the contact's text; ask again only once a day, and never re-notify."""
    last = conv.last_request_at
    if last is not None and now - last <= REQUEST_REPEAT_AFTER:
        return Decision(conv, conv, Disposition.HELD)
    key = f"consent.{conv.initiator or Role.CONTACT}_initiated.to_contact"
    return Decision(
        conv,
        replace(conv, last_request_at=now),
        Disposition.HELD,
        (Text(Role.CONTACT, key),),
        events=(ConsentEvent(Event.REQUEST_SENT, key),),
    )


def _start_flowing(conv: Conversation, initiator: Role, mode: Mode) -> Decision:
    """Disclaimer or off mode, first text: disclose (if asked) and let it through.

    A conversation left pending by an earlier consent mode counts as new, and
    whatever it held is released ahead of the text.
    """
    steps: list[Step] = []
    events: tuple[ConsentEvent, ...] = ()
    if mode is Mode.DISCLAIMER:
        key = f"disclaimer.{initiator}_initiated.to_contact"
        steps.append(Text(Role.CONTACT, key))
        events = (ConsentEvent(Event.DISCLAIMER_SENT, key),)
    if conv.state is State.PENDING:
        steps.append(RELEASE)
    steps.append(RELAY)
    return Decision(
        conv,
        replace(conv, state=State.DISCLOSED, initiator=initiator),
        Disposition.RELAYED,
        tuple(steps),
        events=events,
    )


def _opted_out_contact_wrote(conv: Conversation, policy: Policy, now: datetime) -> Decision:
    """An opted-out contact sent an ordinary text (SPEC §5, last table)."""
    mode = policy.effective_mode
    if policy.filtered:
        # Twilio blocks every send to them: hold it and tell the employee, each time.
        return Decision(
            conv,
            conv,
            Disposition.HELD,
            (Text(Role.EMPLOYEE, "opted_out.contact_wrote.to_employee"),),
        )
    if mode is Mode.CONSENT:
        return _request_consent(conv, Role.CONTACT, now)
    steps: list[Step] = []
    events: tuple[ConsentEvent, ...] = (ConsentEvent(Event.RE_ENGAGED),)
    if mode is Mode.DISCLAIMER:
        key = "disclaimer.contact_initiated.to_contact"
        steps.append(Text(Role.CONTACT, key))
        events = (*events, ConsentEvent(Event.DISCLAIMER_SENT, key))
    steps += [RELEASE, RELAY, Text(Role.EMPLOYEE, "consent.contact_initiated.opted_in.to_employee")]
    return Decision(
        conv,
        replace(conv, state=State.DISCLOSED, initiator=Role.CONTACT, twilio_opt_out=False),
        Disposition.RELAYED,
        tuple(steps),
        events=events,
    )


# -- employee cell → own line (SPEC §6) --------------------------------------


class Reply(StrEnum):
    """The bot's own answers to an employee about addressing (their words: ``bot.texts``)."""

    USAGE = "usage"  # #help, or no contact to send to
    EMPTY = "empty"  # nothing to send
    BAD_NUMBER = "bad_number"  # a leading number meant as an address is not valid
    NOT_A_CONTACT = "not_a_contact"  # the number is the line's or the employee's own
    SWITCHED = "switched"  # a bare number: the current contact changed


@dataclass(frozen=True)
class EmployeeText:
    """An employee's text as read for addressing (``bot.phones.leading_address``)."""

    body: str
    has_media: bool = False
    named: str | None = None  # the contact address a leading number names
    number: str | None = None  # that address's number, without a channel prefix
    rest: str = ""  # the text after the leading number
    invalid: str | None = None  # why a leading number meant as an address is not valid


@dataclass(frozen=True)
class Route:
    """Where an employee's text goes: a contact, the words to deliver, and a reply."""

    contact: str | None = None  # the conversation it goes to (None: none, only a reply)
    body: str | None = None  # what to deliver when the text named its contact
    reply: Reply | None = None  # the bot's answer to the employee instead of a delivery
    detail: str = ""  # what was wrong, for the reply


def route_employee_text(
    text: EmployeeText, own_numbers: tuple[str, ...], current: str | None
) -> Route:
    """SPEC §6: a leading number addresses (and becomes the current contact); without
    one the text goes to the current contact; a bare number only switches to it;
    ``#help``, an empty text, an invalid number, the line's own numbers and no
    current contact get a reply and nothing is delivered."""
    if text.body.strip().lower() == "#help":
        return Route(reply=Reply.USAGE)
    if not text.body.strip() and not text.has_media:
        return Route(reply=Reply.EMPTY)
    if text.invalid is not None:
        return Route(reply=Reply.BAD_NUMBER, detail=text.invalid)
    if text.named is None:
        return Route(current) if current is not None else Route(reply=Reply.USAGE)
    if text.number in own_numbers:
        return Route(reply=Reply.NOT_A_CONTACT)
    if not text.rest and not text.has_media:
        return Route(text.named, reply=Reply.SWITCHED)
    return Route(text.named, body=text.rest)


def answer_employee(conv: Conversation, reply: Reply) -> Decision:
    """A reply about addressing: the employee gets it; nothing else happens."""
    return Decision(conv, conv, Disposition.ANSWERED, (Text(Role.EMPLOYEE, f"reply.{reply}"),))


def _from_employee(conv: Conversation, policy: Policy, now: datetime) -> Decision:
    mode = policy.effective_mode
    state = conv.state
    if state is State.OPTED_OUT:
        return Decision(
            conv, conv, Disposition.BLOCKED, (Text(Role.EMPLOYEE, "opt_out.to_employee"),)
        )
    if flows(state, mode):
        return Decision(conv, conv, Disposition.RELAYED, (RELAY,))
    if mode is Mode.CONSENT:
        if state is State.PENDING:
            return Decision(
                conv, conv, Disposition.HELD, (Text(Role.EMPLOYEE, "pending.to_employee"),)
            )
        return _request_consent(conv, Role.EMPLOYEE, now)
    return _start_flowing(conv, Role.EMPLOYEE, mode)
