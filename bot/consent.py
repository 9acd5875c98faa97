"""The consent gate's decisions (SPEC §2, §4–§6): plain Python, no framework.

``decide`` takes what is known about a conversation and the text that just
arrived and returns what must happen: the conversation's next state, the texts
to send (in order), whether the text is relayed, held or stopped, whether held
texts are released or discarded, and the consent events to record. Everything
the bot does about consent is decided here and nowhere else.
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
    """What becomes of the text that arrived."""

    RELAYED = "relayed"  # delivered to the other side now
    HELD = "held"  # kept until the contact opts in (or discarded on opt-out)
    ANSWERED = "answered"  # a keyword: handled by the bot, not relayed
    BLOCKED = "blocked"  # an employee's text to an opted-out contact: never sent


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
    events: tuple[Event, ...] = ()

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
        events=(Event.OPTED_OUT,),
    )


def unrouted(conv: Conversation, message: Classification) -> Decision:
    """A text to a line no active employee has: only an opt-out has any effect.

    Nothing is sent (there is nobody to relay to), but a STOP still counts, so
    the next employee given this line cannot text someone who said STOP.
    """
    if message.kind is Kind.OPT_OUT and conv.state is not State.OPTED_OUT:
        return Decision(
            conv,
            replace(conv, state=State.OPTED_OUT, twilio_opt_out=message.by_twilio),
            Disposition.ANSWERED,
            discard_held=True,
            events=(Event.OPTED_OUT,),
        )
    return Decision(conv, conv, Disposition.ANSWERED)


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
        if not (policy.filtered and message.carrier):
            # Twilio confirms (and blocks) only its own opt-out words.
            steps.append(Text(Role.CONTACT, "opt_out.to_contact"))
        steps.append(Text(Role.EMPLOYEE, "opt_out.to_employee"))
        return Decision(
            conv,
            replace(conv, state=State.OPTED_OUT, twilio_opt_out=message.by_twilio),
            Disposition.ANSWERED,
            tuple(steps),
            discard_held=True,
            events=(Event.OPTED_OUT,),
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
    variant = conv.initiator if conv.state is State.PENDING else Role.CONTACT
    prefix = f"consent.{variant or Role.CONTACT}_initiated.opted_in"
    return Decision(
        conv,
        Conversation(State.OPTED_IN, variant or Role.CONTACT, conv.last_request_at, False),
        Disposition.ANSWERED,
        (
            Text(Role.CONTACT, f"{prefix}.to_contact"),
            Text(Role.EMPLOYEE, f"{prefix}.to_employee"),
            RELEASE,
        ),
        events=(Event.OPTED_IN,),
    )


def _request_consent(conv: Conversation, initiator: Role, now: datetime) -> Decision:
    """Move to pending: hold the text and ask the contact for consent."""
    prefix = f"consent.{initiator}_initiated"
    events = (Event.REQUEST_SENT,)
    if conv.state is State.OPTED_OUT:
        events = (Event.RE_ENGAGED, Event.REQUEST_SENT)
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
    initiator = conv.initiator or Role.CONTACT
    return Decision(
        conv,
        replace(conv, last_request_at=now),
        Disposition.HELD,
        (Text(Role.CONTACT, f"consent.{initiator}_initiated.to_contact"),),
        events=(Event.REQUEST_SENT,),
    )


def _start_flowing(conv: Conversation, initiator: Role, mode: Mode) -> Decision:
    """Disclaimer or off mode, first text: disclose (if asked) and let it through.

    A conversation left pending by an earlier consent mode counts as new, and
    whatever it held is released ahead of the text.
    """
    steps: list[Step] = []
    events: tuple[Event, ...] = ()
    if mode is Mode.DISCLAIMER:
        steps.append(Text(Role.CONTACT, f"disclaimer.{initiator}_initiated.to_contact"))
        events = (Event.DISCLAIMER_SENT,)
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
    events: tuple[Event, ...] = (Event.RE_ENGAGED,)
    if mode is Mode.DISCLAIMER:
        steps.append(Text(Role.CONTACT, "disclaimer.contact_initiated.to_contact"))
        events = (Event.RE_ENGAGED, Event.DISCLAIMER_SENT)
    steps += [RELEASE, RELAY, Text(Role.EMPLOYEE, "consent.contact_initiated.opted_in.to_employee")]
    return Decision(
        conv,
        replace(conv, state=State.DISCLOSED, initiator=Role.CONTACT, twilio_opt_out=False),
        Disposition.RELAYED,
        tuple(steps),
        events=events,
    )


# -- employee cell → own line (SPEC §6) --------------------------------------


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
